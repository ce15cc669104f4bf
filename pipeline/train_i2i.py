"""Stage `train-i2i <family>`: the generic training loop on one image-to-image family."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import (DeviceOption, DryRunOption, I2IArgument, ParamsOption,
                             print_settings, setup, user_errors)
from trilemma import i2i
from trilemma.training_run import settings_of, train_and_report, translator_run


@user_errors
def train_i2i(family: I2IArgument, params: ParamsOption = Path("params.yaml"),
              device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Train one image-to-image family on its task derived from the training digits; write
    models/<family>.pt and reports/train/<family>/ (loss.csv per epoch, loss_steps.csv, curve.csv
    with PSNR and judge accuracy at train.probes steps, metrics.json
    with the final losses, timing.json, examples.png: input | baseline | output | target on test
    digits). Under torchrun the processes train data-parallel, as `train` does."""
    p, dev = setup(params, device)
    cfg = i2i.config(p, family)
    if dry_run:
        return print_settings({**settings_of(family, cfg, p), "device": str(dev)})
    train_and_report(translator_run, family, cfg, p, dev)
