"""Stage `train <family>`: the generic training loop on one family."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import data, distributed, families, figures, mlflow_model, paths, probes, tracking
from trilemma.config import fingerprint
from trilemma.io import atomic_dir, write_csv, write_json
from trilemma.runtime import BusySampler, device_name, generator, peak_memory
from trilemma.train import fit, planned_steps


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
    settings = {family: cfg.model_dump(), "seed": p.seed, "profile": p.profile,
                "data": p.data.model_dump()}
    if dry_run:
        return print_settings({**settings, "device": str(dev)})
    images = data.load_npz(paths.DATA, p.data)
    model = families.build(family, cfg, dev, images.spec)
    x_train, y_train = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    # before any rank starts MLflow: an uneven batch stops every rank at once (fit checks it too)
    distributed.check_batch(min(cfg.batch_size, len(x_train)), family)

    trace: list[dict] = []  # TRACE_POINTS rows of mean losses per epoch (every rank: collective)

    def train_loop(on_epoch=None, probe=None) -> list[dict]:
        return fit(model, x_train, y_train, cfg, name=family, device=dev, seed=p.seed,
                   checkpoint=paths.checkpoint(family), fingerprint=fingerprint(settings),
                   on_epoch=on_epoch, trace=trace, probe=probe,
                   checkpoint_seconds=p.train.checkpoint_seconds)

    if not distributed.is_main():  # the other torchrun ranks train their share; rank 0 writes
        train_loop()
        return
    out = paths.train_reports(family)
    grid_labels = torch.arange(p.sample.grid) % images.spec.num_classes if model.conditional \
        else None

    # the judge's files are checked before the run starts: a missing one stops the stage here
    probe = probes.generator_probe(model, p, images, dev, planned_steps(cfg, len(x_train)),
                                   min(cfg.batch_size, len(x_train)))
    with tracking.stage_run("train", family, p.profile) as run:
        run.log_params(tracking.flatten(settings))
        probe.on_row = log_probe(run)
        # every report file, the epochs' grids included, goes to `staged`, which takes the old
        # folder's place as a whole at the end: a failure or a kill leaves the old set untouched
        with atomic_dir(out) as staged:
            def draw_grid() -> None:
                # the same noise every epoch: the grids show one set of digits being learned
                images = model.sample(p.sample.grid, grid_labels, generator(p.seed))
                figures.save_grid(images, staged / "grid.png")

            def after_epoch(row: dict) -> None:
                run.log_training(row, trace)  # each loss by optimisation step
                draw_grid()
                run.log_artifact(staged / "grid.png", f"grids/epoch_{row['epoch']:03d}")  # a copy

            run.wait_started()  # MLflow's start-up must not share the CPU with timed training
            with BusySampler(dev) as busy:
                history = train_loop(after_epoch, probe)
            if not (staged / "grid.png").exists():  # resumed after the last epoch: none ran here
                draw_grid()
            # the model first, then its reports: new reports never describe a model not written
            families.save(model, family, cfg, paths.model(family))
            timing = write_training_reports(staged, history, trace, p.profile, dev, busy, probe)
            x_test = torch.from_numpy(images.x_test[:5000]).float() / 255  # (n,C,S,S)
            figure_names = []
            for name, fig in model.figures(x_test, torch.from_numpy(images.y_test[:5000])).items():
                figures.save_figure(fig, staged / f"{name}.png")
                figure_names.append(f"{name}.png")
        # kept until the reports are in: a kill before this resumes after the last epoch and
        # writes the same model and reports again
        paths.checkpoint(family).unlink(missing_ok=True)
        for name in figure_names:  # logged from the swapped-in folder, where the files now live
            run.log_artifact(out / name)
        run.log_reports("train", family)
        run.log_artifact(out / "loss.csv")
        # registered as trilemma-<family>, on the thread like every MLflow call; last, since a
        # failure turns tracking off for what would follow
        log_model, cleanup = mlflow_model.queued(family, paths.model(family),
                                                 mlflow_model.settings(family, p))
        run.call(log_model, cleanup=cleanup)
        log(f"wrote {paths.model(family)} after {timing['train_seconds']:.1f} s of training"
            f"{probe_note(timing)}")


def log_probe(run: tracking.Run):
    """A probe's rows as MLflow metrics by optimisation step: the chart view overlays runs."""
    def on_row(row: dict) -> None:
        run.log_metrics({f"probe_{k}": v for k, v in row.items() if k != "step"},
                        step=int(row["step"]))
        log(f"  probe at step {row['step']}: " + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            if k != "step"))
    return on_row


def probe_note(timing: dict) -> str:
    return (f" and {timing['probe_seconds']:.1f} s of {timing['probes']} probes"
            if timing.get("probes") else "")


def write_training_reports(out: Path, history: list[dict], trace: list[dict], profile: str,
                           dev: torch.device, busy: BusySampler, probe: probes.Probe) -> dict:
    """loss.csv (per epoch), loss_steps.csv (the finer trace), curve.csv (the probes' rows; their
    train_seconds vary between reruns, the scores do not), metrics.json (the final losses:
    results only, identical on every rerun) and timing.json (time, device, memory, GPU use, probe
    time) of a finished training run in `out`; returns the timing."""
    write_csv(out / "loss.csv", history)
    write_csv(out / "loss_steps.csv", trace)
    write_csv(out / "curve.csv", probe.rows, columns=probe.columns)
    summary = {"epochs": len(history), "profile": profile,
               **{f"final_{k}": round(v, 6) for k, v in history[-1].items()
                  if k not in ("epoch", "seconds")}}
    timing = {"train_seconds": round(sum(r["seconds"] for r in history), 2),
              "probes": len(probe.rows), "probe_seconds": round(probe.seconds, 2),
              "device": device_name(dev), "processes": distributed.world_size(),
              **peak_memory(dev), **busy.summary()}
    write_json(out / "metrics.json", summary)
    write_json(out / "timing.json", timing)
    return timing

