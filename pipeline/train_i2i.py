"""Stage `train-i2i <family>`: the generic training loop on one image-to-image family."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from pipeline.common import (DeviceOption, DryRunOption, ParamsOption, log, print_settings, setup,
                             user_errors)
from pipeline.train import log_probe, probe_note, write_training_reports
from trilemma import data, distributed, figures, i2i, mlflow_model, paths, probes, tracking
from trilemma.config import fingerprint
from trilemma.i2i.scores import examples_figure
from trilemma.io import atomic_dir
from trilemma.runtime import BusySampler
from trilemma.train import fit, planned_steps

I2IArgument = Annotated[str, typer.Argument(
    help="Image-to-image family, as listed in params.yaml `i2i_families`.")]
EXAMPLES = 8  # test digits in the input | output | target figure


def judge_for(family: str, device: torch.device):
    """The frozen judge for a translator whose loss uses it (its entry `needs_judge`)."""
    if not i2i.needs_judge(family):
        return None
    from trilemma.classifier import load_judge

    return load_judge(paths.CLASSIFIER, device)


@user_errors
def train_i2i(family: I2IArgument, params: ParamsOption = Path("params.yaml"),
              device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Train one image-to-image family on its task derived from the training digits; write
    models/<family>.pt and reports/train/<family>/ (loss.csv per epoch, loss_steps.csv, curve.csv
    with PSNR and judge accuracy at train.probes steps, metrics.json
    with the final losses, timing.json, examples.png: input | baseline | output | target on test
    digits)."""
    p, dev = setup(params, device)
    cfg = i2i.config(p, family)
    settings = {family: cfg.model_dump(), "seed": p.seed, "profile": p.profile,
                "data": p.data.model_dump()}
    if dry_run:
        return print_settings({**settings, "device": str(dev)})
    images = data.load_npz(paths.DATA, p.data)
    model = i2i.build(family, cfg, dev, images.spec, judge_for(family, dev))
    x_train, y_train = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    distributed.check_batch(min(cfg.batch_size, len(x_train)), family)
    trace: list[dict] = []

    def train_loop(on_epoch=None, probe=None) -> list[dict]:
        return fit(model, x_train, y_train, cfg, name=family, device=dev, seed=p.seed,
                   checkpoint=paths.checkpoint(family), fingerprint=fingerprint(settings),
                   on_epoch=on_epoch, trace=trace, probe=probe,
                   checkpoint_seconds=p.train.checkpoint_seconds)

    if not distributed.is_main():
        train_loop()
        return
    out = paths.train_reports(family)
    probe = probes.translator_probe(model, p, images, dev, planned_steps(cfg, len(x_train)),
                                    min(cfg.batch_size, len(x_train)))
    with tracking.stage_run("train-i2i", family, p.profile) as run:
        run.log_params(tracking.flatten(settings))
        probe.on_row = log_probe(run)

        def after_epoch(row: dict) -> None:
            run.log_training(row, trace)  # each loss by optimisation step

        run.wait_started()
        with BusySampler(dev) as busy:
            history = train_loop(after_epoch, probe)
        # the model first, then its reports (swapped in as one set, see train)
        i2i.save(model, family, cfg, paths.model(family))
        with atomic_dir(out) as staged:
            timing = write_training_reports(staged, history, trace, p.profile, dev, busy, probe)
            x_test = torch.from_numpy(images.x_test[:EXAMPLES]).float() / 255
            figure = examples_figure(model.task, model.translate, x_test,
                                     f"{family}: {model.task.description}")
            figures.save_figure(figure, staged / "examples.png")
        paths.checkpoint(family).unlink(missing_ok=True)  # kept until the reports are in
        run.log_artifact(out / "examples.png")
        run.log_reports("train", family)
        run.log_artifact(out / "loss.csv")
        # registered as trilemma-<family> on the tracking thread, last (as `train` does)
        log_model, cleanup = mlflow_model.queued(family, paths.model(family),
                                                 mlflow_model.translator_settings(family, p))
        run.call(log_model, cleanup=cleanup)
        log(f"wrote {paths.model(family)} after {timing['train_seconds']:.1f} s of training"
            f"{probe_note(timing)}")
