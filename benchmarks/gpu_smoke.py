"""Params for a first run of the stages on a GPU within minutes: the full profile's networks and
settings, cut to one family (ddpm) and short runs. `benchmarks/device_check.sh smoke` runs
download, train-classifier and ddpm's train, sample and evaluate with them.

    python -m benchmarks.gpu_smoke --out /tmp/gpu.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from trilemma.params_file import with_overrides

# key path -> value; a plain value replaces a {quick: …, full: …} mapping for every profile
SHORTENED: dict[str, Any] = {
    "profile": "full",
    "families": ["ddpm"],
    "i2i_families": [],
    "control.families": [],
    "data.offline": True,           # such a machine reaches no mirror
    "classifier.epochs": 3,         # full: 12
    "ddpm.max_steps": 1500,         # full: every step of 20 epochs
    "sample.n": 2000,               # full: 10000
    "sample.sweep_n": 500,
    "sample.steps_sweep": [10, 100],  # full adds 25 and the 1000-step ancestral sampler
    "evaluate.bootstrap": 50,
}


def shortened(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (params.yaml as read) with SHORTENED set."""
    return with_overrides(raw, SHORTENED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    raw = yaml.safe_load(args.params.read_text())
    args.out.write_text(yaml.safe_dump(shortened(raw), sort_keys=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
