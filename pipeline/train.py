"""Stage `train <family>`: the generic training loop on one family."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption,
                             print_settings, setup, user_errors)
from trilemma import families
from trilemma.training_run import generator_run, settings_of, train_and_report


@user_errors
def train(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
          device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Train one family; write models/<family>.pt and reports/train/<family>/ (loss.csv per
    epoch, loss_steps.csv ten points per epoch, curve.csv the judge's probes at train.probes
    steps, metrics.json with the final losses, timing.json with the training time (probes left
    out, their own time beside it) and device, grid.png of fixed noise after the last epoch, family
    figures). Under `torchrun --nproc-per-node N --no-python trilemma train <family>` the N
    processes train data-parallel (the batch size is the global batch); rank 0 writes."""
    p, dev = setup(params, device)
    cfg = families.config(p, family)
    if dry_run:
        return print_settings({**settings_of(family, cfg, p), "device": str(dev)})
    train_and_report(generator_run, family, cfg, p, dev)
