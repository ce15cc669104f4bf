#!/usr/bin/env bash
# The checks to run on a GPU machine without network access, one command each, from the
# repository root (README "Speed"); results go to $OUT (default benchmarks/results):
#   bench  python -m benchmarks.diffusion for the quick and the full U-Net, tf32 and bf16:
#          8 files, diffusion-<gpu>-<profile>-<precision>.{json,md}
#   smoke  the stages' CUDA path at the full profile's sizes, cut to minutes
#          (benchmarks/gpu_smoke.py): download, train-classifier, then ddpm's train, sample and
#          evaluate; their metrics, timings and stage log
# Run benchmarks/device_wheels.sh here first: that machine's python3 lacks some packages.
set -euo pipefail
what=${1:-}
case $what in
  bench|smoke) ;;
  *) echo "error: device_check.sh: unknown check '$what' (bench or smoke)" >&2; exit 2 ;;
esac
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
  export PYTHONPATH=$PWD/src:$PWD
fi
export PYTHONUNBUFFERED=1 TRILEMMA_DEVICE=cuda
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
trilemma() { python3 -c 'import sys; sys.argv[0] = "trilemma"; from pipeline.cli import main; main()' "$@"; }

case $what in
  bench)
    for profile in quick full; do
      for precision in tf32 bf16; do
        python3 -m benchmarks.diffusion --profile "$profile" --device cuda \
          --precision "$precision" --repeats 5 --out "$out"
      done
    done ;;
  smoke)
    params=/tmp/gpu.yaml
    python3 -m benchmarks.gpu_smoke --out "$params"
    trilemma download --params "$params"
    trilemma train-classifier --params "$params"
    for stage in train sample evaluate; do
      trilemma "$stage" ddpm --params "$params"
    done
    cp logs/stages.jsonl "$out/stages.jsonl"
    cp reports/classifier/metrics.json "$out/classifier-metrics.json"
    cp reports/classifier/timing.json "$out/classifier-timing.json"
    cp reports/train/ddpm/timing.json "$out/ddpm-train-timing.json"
    cp reports/train/ddpm/curve.csv "$out/ddpm-curve.csv"
    cp reports/eval/ddpm/metrics.json "$out/ddpm-eval-metrics.json"
    cp reports/eval/ddpm/timing.json "$out/ddpm-eval-timing.json"
    cp reports/eval/ddpm/steps_sweep.csv "$out/ddpm-steps-sweep.csv" ;;
esac
