"""Stages `train-referee` and `control <family>`: steering generators toward a requested class
with the judge's gradient, scored by the judge and by an independent referee classifier."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, single_process, user_errors)
from trilemma import data, families, figures, latent, paths, tracking
from trilemma.classifier import (ClassifierTrainee, load_judge, pixel_stats, save_judge,
                                 save_no_judge)
from trilemma.config import ClassifierConfig, Params, fingerprint
from trilemma.control import steer, x0_guide
from trilemma.denoising import Diffusion
from trilemma.errors import ConfigError, DataError, NoJudge
from trilemma.io import atomic_dir, write_csv, write_json
from trilemma.runtime import autocast, device_name, generator, set_precision

STEER_COLUMNS = ["digit", "class", "n", "judge_before", "judge_after", "referee_before",
                 "referee_after", "z_change"]
GUIDANCE_COLUMNS = ["method", "scale", "digit", "class", "n", "judge_accuracy",
                    "referee_accuracy"]
FIGURE = "before_after.png"
SHOWN = 8  # images per row of the figures


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
        run.wait_started()  # MLflow's start-up must not share the CPU with timed training
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
        paths.checkpoint("referee").unlink(missing_ok=True)
        log(f"referee test accuracy {accuracy:.4f} in {timing['train_seconds']:.1f} s")
        run.log_reports("train-referee", None)  # tagged with their digest, as `sync` expects


def fit_referee(trainee: ClassifierTrainee, images: data.ImageData, cfg: ClassifierConfig,
                p: Params, dev: torch.device, settings: dict) -> list[dict]:
    from trilemma.train import fit

    return fit(trainee, torch.from_numpy(images.x_train), torch.from_numpy(images.y_train), cfg,
               name="referee", device=dev, seed=p.seed + 1, checkpoint=paths.checkpoint("referee"),
               fingerprint=fingerprint(settings),
               checkpoint_seconds=p.train.checkpoint_seconds)


def kind_of(model: families.Family, family: str) -> str:
    """"steer" (an unconditional family with a differentiable `decode`), "classifier" (an
    unconditional pixel diffusion: classifier guidance), "classifier-free" (a conditional family
    with a `guidance` knob: its own guidance, for comparison); ConfigError otherwise."""
    if model.conditional and "guidance" in model.knobs:
        return "classifier-free"
    if isinstance(model, Diffusion) and not model.conditional:
        return "classifier"
    if hasattr(model, "decode") and hasattr(model, "latent_dim") and not model.conditional:
        return "steer"
    raise ConfigError(f"control.families: {family!r} cannot be steered (only unconditional latent "
                      "families with `decode`, pixel diffusion and guided conditional families "
                      "can)")


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
    cfg = p.family(family)
    if dry_run:
        return print_settings({"control": p.control.model_dump(), "sample": p.sample.model_dump(),
                               family: cfg.model_dump(), "seed": p.seed, "device": str(dev)})
    images = data.load_npz(paths.DATA, p.data)
    model = families.load(family, cfg, paths.model(family), dev)
    kind = kind_of(model, family)
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
            figures.save_figure(figures.rows_figure(shown), staged / FIGURE)
        log(f"{family}: wrote {out}")
        run.log_params(tracking.flatten({"control": p.control.model_dump(), "seed": p.seed}))
        # per scale as guidance.<scale>.<column>, e.g. guidance.3.referee_accuracy
        numbers = tracking.flatten({**result, **timing, "guidance": {
            f"{row['scale']:g}": row for row in result.get("guidance", [])}})
        run.log_metrics({k: v for k, v in numbers.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.log_reports("control", family)  # tagged with their digest, as `sync` expects
        for name in ("metrics.json", "per_class.csv", FIGURE):
            run.log_artifact(out / name)


def predictions(net: torch.nn.Module, images: np.ndarray, dev: torch.device, bs: int) -> np.ndarray:
    from trilemma import metrics

    return metrics.embed(net, images, dev, bs).predictions


def steering(model, judge, referee, p: Params, dev: torch.device):
    """Latent steering of every class from `control.per_class` prior latents each: the metrics,
    per-class rows, the figure's rows and the steering time."""
    c, k = p.control, model.image.num_classes
    classes = model.image.classes
    target = torch.arange(k).repeat_interleave(c.per_class)  # (k*n,) class of each latent
    z0 = latent.noise(len(target), model.latent_dim, generator(p.seed))  # (k*n,L) the prior
    t0 = time.perf_counter()
    z = torch.cat([steer(model.decode, judge, z0[s:s + c.batch_size],
                         target[s:s + c.batch_size].to(dev), c.steps, c.lr, c.prior_weight).cpu()
                   for s in range(0, len(target), c.batch_size)])
    seconds = time.perf_counter() - t0
    before, after = model.generate(z0).cpu(), model.generate(z).cpu()  # uint8 (k*n,C,S,S)
    y, bs = target.numpy(), p.evaluate.batch_size
    hits = {f"{who}_{when}": predictions(net, x.numpy(), dev, bs) == y
            for who, net in (("judge", judge), ("referee", referee))
            for when, x in (("before", before), ("after", after))}
    change = (z - z0).norm(dim=1).numpy()  # (k*n,)
    rows = [{"digit": d, "class": classes[d], "n": c.per_class,
             **{key: round(float(hit[y == d].mean()), 6) for key, hit in hits.items()},
             "z_change": round(float(change[y == d].mean()), 4)} for d in range(k)]
    result = {f"{key}_success": round(float(hit.mean()), 6) for key, hit in hits.items()}
    result.update(mean_z_change=round(float(change.mean()), 4),
                  mean_z_norm_before=round(float(z0.norm(dim=1).mean()), 4),
                  mean_z_norm_after=round(float(z.norm(dim=1).mean()), 4),
                  per_class=c.per_class, steps=c.steps, lr=c.lr, prior_weight=c.prior_weight,
                  referee_per_class={classes[r["digit"]]: r["referee_after"] for r in rows})
    log(f"steering {len(y)} latents ({c.steps} steps) took {seconds:.1f} s: judge success "
        f"{result['judge_before_success']:.3f} -> {result['judge_after_success']:.3f}, referee "
        f"{result['referee_before_success']:.3f} -> {result['referee_after_success']:.3f}, "
        f"|z| {result['mean_z_norm_before']:.2f} -> {result['mean_z_norm_after']:.2f}")
    m = min(SHOWN, c.per_class)
    shown = [(f"{classes[d]} {when}", x[y == d][:m]) for d in range(k)
             for when, x in (("before", before), ("after", after))]
    return result, rows, shown, {"seconds": round(seconds, 3)}


def guidance(model, kind: str, judge, referee, images: data.ImageData, p: Params,
             dev: torch.device):
    """Balanced requested labels sampled at each guidance scale from the same noise: per scale
    label accuracy by the judge and the referee and FID against the test set in the judge's
    features (the results), and images/s (the timing)."""
    from trilemma.generation import batch_generator
    from trilemma import metrics

    metrics.preload()
    real = metrics.load_embedded(paths.TEST_EMBEDDING, len(images.x_test))  # by train-classifier
    s, c, k = p.sample, p.control, model.image.num_classes
    if kind == "classifier-free":
        scales = sorted({*s.guidance_sweep, s.guidance})
    else:
        scales = sorted(set(c.guidance_scales))
    labels = torch.arange(c.guidance_n) % k  # (n,) balanced requests
    knobs = {"sampler": s.sampler, "steps": s.steps, "eta": s.eta}

    def draw(scale: float, n: int) -> np.ndarray:
        out = []
        for b, start in enumerate(range(0, n, c.batch_size)):
            lab = labels[start:start + c.batch_size][:n - start]
            gen = batch_generator(p.seed, b)  # the same noise at every scale
            if kind == "classifier-free":
                x = model.sample(len(lab), lab, gen, guidance=scale, **knobs)
            else:
                x = model.sample(len(lab), None, gen, **knobs,
                                 guide=x0_guide(judge, model.alpha_bar, lab.to(dev), scale))
            out.append(x.cpu())
        return torch.cat(out).numpy()

    draw(scales[-1], min(16, c.guidance_n))  # untimed warm-up: lazy initialisation, kernels
    table, rows, shown, rates = [], [], [], {}
    y, bs = labels.numpy(), p.evaluate.batch_size
    method = "classifier guidance (judge on x0)" if kind == "classifier" \
        else "classifier-free guidance"
    for scale in scales:
        t0 = time.perf_counter()
        x = draw(scale, c.guidance_n)
        secs = time.perf_counter() - t0
        rates[f"{scale:g}"] = round(len(y) / secs, 2)
        judged = metrics.embed(judge, x, dev, bs)
        hit_j, hit_r = judged.predictions == y, predictions(referee, x, dev, bs) == y
        table.append({"method": method, "scale": scale, "n": len(y),
                      "judge_accuracy": round(float(hit_j.mean()), 6),
                      "referee_accuracy": round(float(hit_r.mean()), 6),
                      "fid_classifier": round(metrics.fid(real.features, judged.features), 4)})
        rows += [{"method": method, "scale": scale, "digit": d, "class": model.image.classes[d],
                  "n": int((y == d).sum()), "judge_accuracy": round(float(hit_j[y == d].mean()), 6),
                  "referee_accuracy": round(float(hit_r[y == d].mean()), 6)} for d in range(k)]
        shown.append((f"scale {scale:g}", torch.from_numpy(x[:min(len(x), 2 * k, 2 * SHOWN)])))
        log(f"{method} {scale:g}: judge accuracy {table[-1]['judge_accuracy']:.3f}, referee "
            f"{table[-1]['referee_accuracy']:.3f}, FID {table[-1]['fid_classifier']:.2f}, "
            f"{rates[f'{scale:g}']:.0f} images/s")
    result = {"method": method, "guidance": table, "n": len(y), "sampler": s.sampler,
              "steps": s.steps}
    return result, rows, shown, {"images_per_second": rates}


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
