"""Stages `train-referee` and `control <family>`: steering generators toward a requested class
with the judge's gradient, scored by the judge and by an independent referee classifier."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, single_process, user_errors)
from trilemma import data, families, figures, paths, tracking
from trilemma.classifier import (ClassifierTrainee, load_judge, pixel_stats, save_judge,
                                 save_no_judge)
from trilemma.config import ClassifierConfig, Params, fingerprint
from trilemma.control_eval import GUIDANCE_COLUMNS, STEER_COLUMNS, guidance, kind_of, steering
from trilemma.errors import ConfigError, DataError, NoJudge
from trilemma.io import atomic_dir, remove, write_csv, write_json
from trilemma.runtime import autocast, device_name, set_precision

FIGURE = "before_after.png"


def referee_config(p: Params) -> ClassifierConfig:
    """The judge's recipe with the referee's width and length, and shift augmentation: a second
    opinion that does not share the judge's weights, initialisation or data order."""
    c = p.control
    return ClassifierConfig(**{**p.classifier.model_dump(), "width": c.referee_width,
                               "epochs": c.referee_epochs, "max_steps": c.referee_max_steps,
                               "augment": True})


@user_errors
def train_referee(params: ParamsOption = Path("params.yaml"), device: DeviceOption = "auto",
                  dry_run: DryRunOption = False) -> None:
    """Train the referee, a second classifier (seed + 1, shift augmentation) that scores the
    control stage: steering ascends the judge's log-probability and can fool the judge with
    adversarial pixels, so success also counts with a network the steering never saw. Writes
    models/referee.pt and reports/control/referee/{metrics.json,timing.json,per_class.csv}."""
    p, dev = setup(params, device)
    single_process("train-referee")
    cfg = referee_config(p)
    settings = {"referee": cfg.model_dump(), "seed": p.seed + 1, "data": p.data.model_dump()}
    if dry_run:
        return print_settings({**settings, "device": str(dev)})
    from trilemma import metrics

    images = data.load_npz(paths.DATA, p.data)
    out = paths.REFEREE_REPORTS
    if not images.spec.labelled:
        reason = f"{images.description} has no class labels, so no referee was trained"
        log(f"no referee: {reason}")
        save_no_judge(reason, images.spec, paths.REFEREE)
        with atomic_dir(out) as staged:  # the reports swapped in as one set
            write_json(staged / "metrics.json", {"referee": False, "reason": reason,
                                                 "profile": p.profile})
            write_json(staged / "timing.json", {"train_seconds": 0.0, "device": device_name(dev)})
            write_csv(staged / "per_class.csv", [],
                      columns=["digit", "class", "n", "correct", "accuracy"])
        return
    trainee = ClassifierTrainee(cfg, dev, len(images.x_train), images.spec,
                                *pixel_stats(images.x_train, images.source))
    with tracking.stage_run("train-referee", None, p.profile) as run:
        run.log_params(tracking.flatten(settings))
        history = fit_referee(trainee, images, cfg, p, dev, settings)
        save_judge(trainee.net, cfg, images.spec, paths.REFEREE)
        referee = load_judge(paths.REFEREE, dev)  # score exactly what was saved
        predictions = metrics.embed(referee, images.x_test, dev, p.evaluate.batch_size).predictions
        per_class = metrics.per_class_accuracy(images.y_test, predictions, images.spec.classes)
        accuracy = float((predictions == images.y_test).mean())
        summary = {"test_accuracy": round(accuracy, 6),
                   "min_class_accuracy": min(r["accuracy"] for r in per_class),
                   "width": cfg.width, "epochs": cfg.epochs, "seed": p.seed + 1,
                   "profile": p.profile}
        timing = {"train_seconds": round(sum(r["seconds"] for r in history), 2),
                  "device": device_name(dev)}
        # the model first, then its reports, swapped in as one set: a failure or a kill while
        # they are written leaves the old set, and the checkpoint, kept until they are in, lets
        # a rerun write them again without training
        with atomic_dir(out) as staged:
            write_json(staged / "metrics.json", summary)
            write_json(staged / "timing.json", timing)
            write_csv(staged / "per_class.csv", per_class)
        remove(paths.checkpoint("referee"))
        log(f"referee test accuracy {accuracy:.4f} in {timing['train_seconds']:.1f} s")
        run.log_reports("train-referee", None)  # tagged with their digest, as `sync` expects


def fit_referee(trainee: ClassifierTrainee, images: data.ImageData, cfg: ClassifierConfig,
                p: Params, dev: torch.device, settings: dict) -> list[dict]:
    from trilemma.train import fit

    return fit(trainee, torch.from_numpy(images.x_train), torch.from_numpy(images.y_train), cfg,
               name="referee", device=dev, seed=p.seed + 1, checkpoint=paths.checkpoint("referee"),
               fingerprint=fingerprint(settings),
               checkpoint_seconds=p.train.checkpoint_seconds)


@user_errors
def control(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
            device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Steer a trained family toward each class and score it with the judge and the referee.
    Unconditional latent families (VAE, GANs): latents from the prior optimised by Adam on
    -log p_judge(class | decode(z)) + control.prior_weight |z|^2/2. ddpm: classifier guidance
    with the judge on the predicted x0 at each control.guidance_scales. cfg_diffusion: its
    classifier-free guidance at sample.guidance and sample.guidance_sweep, for the same table.
    Writes reports/control/<family>/{metrics.json,timing.json,per_class.csv,before_after.png}."""
    p, dev = setup(params, device)
    single_process("control")
    if family not in p.control.families:
        listed = ", ".join(p.control.families) or "none"
        raise ConfigError(f"control.families: {family!r} is not listed there ({listed})")
    cfg = families.config(p, family)
    if dry_run:
        return print_settings({"control": p.control.model_dump(), "sample": p.sample.model_dump(),
                               family: cfg.model_dump(), "seed": p.seed, "device": str(dev)})
    images = data.load_npz(paths.DATA, p.data)
    model = families.load(family, cfg, paths.model(family), dev)
    kind = kind_of(family)
    out = paths.control_reports(family)
    if not paths.REFEREE.exists():  # load_judge's own message would name train-classifier
        raise DataError(f"{paths.REFEREE}: not found; run `trilemma train-referee` first")
    try:
        judge, referee = load_judge(paths.CLASSIFIER, dev), load_judge(paths.REFEREE, dev)
    except NoJudge as reason:
        return no_judge(family, kind, str(reason), out, p)
    set_precision(cfg.precision)
    with tracking.stage_run("control", family, p.profile) as run:
        with autocast(cfg.precision, dev):
            if kind == "steer":
                result, rows, shown, timing = steering(model, judge, referee, p, dev)
            else:
                result, rows, shown, timing = guidance(model, kind, judge, referee, images, p,
                                                       dev)
        result.update(family=family, kind=kind, profile=p.profile)

        with atomic_dir(out) as staged:  # the reports swapped in as one set
            write_json(staged / "metrics.json", result)  # results only: identical on a CPU rerun
            write_json(staged / "timing.json", {**timing, "device": device_name(dev)})
            write_csv(staged / "per_class.csv", rows)
            figures.save_figure(figures.image_table(shown), staged / FIGURE)
        log(f"{family}: wrote {out}")
        run.log_params(tracking.flatten({"control": p.control.model_dump(), "seed": p.seed}))
        # per scale as guidance.<scale>.<column>, e.g. guidance.3.referee_accuracy
        numbers = tracking.flatten({**result, **timing, "guidance": {
            f"{row['scale']:g}": row for row in result.get("guidance", [])}})
        run.log_metrics(numbers)  # it logs the numbers among them
        run.log_reports("control", family)  # tagged with their digest, as `sync` expects
        for name in ("metrics.json", "per_class.csv", FIGURE):
            run.log_artifact(out / name)


def no_judge(family: str, kind: str, reason: str, out: Path, p: Params) -> None:
    """Unlabelled images: nothing to steer toward. The outputs say why, so the pipeline goes on."""
    log(f"{family}: no control: {reason}")
    with atomic_dir(out) as staged:
        write_json(staged / "metrics.json", {"family": family, "kind": kind, "judge": False,
                                             "reason": reason, "profile": p.profile})
        write_json(staged / "timing.json", {"seconds": 0.0})
        write_csv(staged / "per_class.csv", [],
                  columns=STEER_COLUMNS if kind == "steer" else GUIDANCE_COLUMNS)
        figures.save_figure(figures.message_figure(f"no control: {reason}"), staged / FIGURE)
