"""One training run as the `train` and `train-i2i` stages make it, for a generator or an
image-to-image family alike: `fit` (data-parallel under torchrun, rank 0 writes), the judge's
probes, MLflow logging per epoch, then the model, its reports swapped in as one set, and the
model registered in MLflow. What differs between the two kinds is a `Run`'s few hooks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from trilemma import data, distributed, figures, mlflow_model, paths, probes, tracking
from trilemma.config import fingerprint
from trilemma.io import atomic_dir, remove, write_csv, write_json
from trilemma.runtime import BusySampler, device_name, generator, peak_memory
from trilemma.torchrun import log
from trilemma.train import fit, planned_steps

@dataclass
class Run:
    """A family's training run: the built model and the hooks that differ by kind."""
    stage: str  # "train" | "train-i2i": the MLflow run's stage
    model: Any
    save: Callable[[Path], None]  # writes the model file
    probe: Callable[[int, int], probes.Probe]  # (planned steps, batch size) -> the judge's probe
    mlflow_settings: Callable[[], dict]
    # after each epoch on rank 0, given the staged report folder: files to log as
    # (path, artifact folder)
    on_epoch: Callable[[Path, dict], list[tuple[Path, str]]] = lambda staged, row: []
    # after the model and reports are written: the figures' file names written to the folder
    figures: Callable[[Path], list[str]] = lambda staged: []


def settings_of(family: str, cfg, p) -> dict:
    """What a training run depends on: its checkpoint's fingerprint and its MLflow params."""
    return {family: cfg.model_dump(), "seed": p.seed, "profile": p.profile,
            "data": p.data.model_dump()}


def generator_run(family: str, cfg, p, dev: torch.device, images: data.ImageData) -> Run:
    """A generator family's run: a grid of fixed noise after every epoch, the family's figures."""
    from trilemma import families

    model = families.build(family, cfg, dev, images.spec)
    grid_labels = torch.arange(p.sample.grid) % images.spec.num_classes if model.conditional \
        else None
    # a guided family's grids at the sample stage's guidance; other knobs at the family's preview
    guidance = {"guidance": p.sample.guidance} if "guidance" in model.knobs else {}

    def draw_grid(staged: Path) -> Path:
        # the same noise every epoch: the grids show one set of digits being learned
        drawn = model.sample(p.sample.grid, grid_labels, generator(p.seed), **guidance)
        figures.save_grid(drawn, staged / "grid.png")
        return staged / "grid.png"

    def on_epoch(staged: Path, row: dict) -> list[tuple[Path, str]]:
        return [(draw_grid(staged), f"grids/epoch_{row['epoch']:03d}")]  # a copy per epoch

    def final_figures(staged: Path) -> list[str]:
        if not (staged / "grid.png").exists():  # resumed after the last epoch: none ran here
            draw_grid(staged)
        x_test = torch.from_numpy(images.x_test[:5000]).float() / 255  # (n,C,S,S)
        names = []
        for name, fig in model.figures(x_test, torch.from_numpy(images.y_test[:5000])).items():
            figures.save_figure(fig, staged / f"{name}.png")
            names.append(f"{name}.png")
        return names

    return Run("train", model,
               save=lambda path: families.save(model, family, cfg, path),
               probe=lambda steps, batch: probes.generator_probe(model, p, images, dev, steps,
                                                                 batch),
               mlflow_settings=lambda: mlflow_model.settings(family, p),
               on_epoch=on_epoch, figures=final_figures)


def translator_run(family: str, cfg, p, dev: torch.device, images: data.ImageData) -> Run:
    """An image-to-image family's run: input | baseline | output | target on test images."""
    from trilemma import i2i
    from trilemma.classifier import judge_for
    from trilemma.i2i.scores import EXAMPLES, examples_figure

    model = i2i.build(family, cfg, dev, images.spec, judge_for(family, dev))

    def final_figures(staged: Path) -> list[str]:
        x_test = torch.from_numpy(images.x_test[:EXAMPLES]).float() / 255
        figure = examples_figure(model.task, model.translate, x_test,
                                 f"{family}: {model.task.description}")
        figures.save_figure(figure, staged / "examples.png")
        return ["examples.png"]

    return Run("train-i2i", model,
               save=lambda path: i2i.save(model, family, cfg, path),
               probe=lambda steps, batch: probes.translator_probe(model, p, images, dev, steps,
                                                                  batch),
               mlflow_settings=lambda: mlflow_model.translator_settings(family, p),
               figures=final_figures)


def train_and_report(make_run: Callable[..., Run], family: str, cfg, p,
                     dev: torch.device) -> None:
    """Train the family `make_run` (generator_run or translator_run) builds on the training
    images; rank 0 writes models/<family>.pt, then reports/train/<family>/ as one set, and logs
    to MLflow."""
    images = data.load_npz(paths.DATA, p.data)
    run_of = make_run(family, cfg, p, dev, images)
    model, settings = run_of.model, settings_of(family, cfg, p)
    x_train, y_train = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    batch = min(cfg.batch_size, len(x_train))
    # before any rank starts MLflow: an uneven batch stops every rank at once (fit checks it too)
    distributed.check_batch(batch, family)
    trace: list[dict] = []  # TRACE_POINTS rows of mean losses per epoch (every rank: collective)

    def train_loop(on_epoch=None, probe=None) -> list[dict]:
        return fit(model, x_train, y_train, cfg, name=family, device=dev, seed=p.seed,
                   checkpoint=paths.checkpoint(family), fingerprint=fingerprint(settings),
                   on_epoch=on_epoch, trace=trace, probe=probe,
                   checkpoint_seconds=p.train.checkpoint_seconds)

    if not distributed.is_rank0():  # the other torchrun ranks train their share; rank 0 writes
        train_loop()
        return
    out = paths.train_reports(family)
    # the judge's files are checked before the run starts: a missing one stops the stage here
    probe = run_of.probe(planned_steps(cfg, len(x_train)), batch)
    with tracking.stage_run(run_of.stage, family, p.profile) as run:
        run.log_params(tracking.flatten(settings))
        probe.on_row = log_probe(run)
        # every report file, the epochs' figures included, goes to `staged`, which takes the old
        # folder's place as a whole at the end: a failure or a kill leaves the old set untouched
        with atomic_dir(out) as staged:
            def after_epoch(row: dict) -> None:
                run.log_training(row, trace)  # each loss by optimisation step
                for path, folder in run_of.on_epoch(staged, row):
                    run.log_artifact(path, folder)

            with BusySampler(dev) as busy:
                history = train_loop(after_epoch, probe)
            timing = write_training_reports(staged, history, trace, p.profile, dev, busy, probe)
            figure_names = run_of.figures(staged)
            # the model after everything that can fail on the way to its reports, and before
            # they are swapped in: new reports never describe a model not written, and a failed
            # report leaves the old model beside the old reports
            run_of.save(paths.model(family))
        # kept until the reports are in: a kill before this resumes after the last epoch and
        # writes the same model and reports again
        remove(paths.checkpoint(family))
        for name in figure_names:  # logged from the swapped-in folder, where the files now live
            run.log_artifact(out / name)
        run.log_reports("train", family)
        run.log_artifact(out / "loss.csv")
        # registered as trilemma-<family> by the tracker; last, since a failure turns tracking
        # off for what would follow
        settings_of_model = run_of.mlflow_settings()
        copies, folder = mlflow_model.snapshot(paths.model(family), settings_of_model)
        run.call(mlflow_model.log_model, family, copies, settings_of_model, snapshot=folder)
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
