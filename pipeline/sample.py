"""Stage `sample <family>`: N images from a trained family, timed; the same N again at every
value of the family's sampling sweeps (e.g. truncation); grid, interpolation and arithmetic figures."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import families, figures, latent, paths, tracking
from trilemma.config import SampleConfig
from trilemma.io import write_npz
from trilemma.runtime import device_name, generator


def draw(model: families.Family, n: int, batch_size: int, seed: int, device: torch.device,
         **knobs) -> tuple[np.ndarray, np.ndarray | None, float]:
    """n images (n,28,28) uint8, the requested labels (balanced digits) for a conditional family,
    and the sampling time in seconds (after one untimed warm-up batch)."""
    labels = torch.arange(n) % 10 if model.conditional else None
    model.sample(min(batch_size, n), None if labels is None else labels[:batch_size],
                 generator(seed), **knobs)
    gen = generator(seed)
    chunks = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        batch_labels = None if labels is None else labels[start:start + batch_size]
        chunks.append(model.sample(min(batch_size, n - start), batch_labels, gen, **knobs).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    images = torch.cat(chunks)[:, 0].numpy()  # (n,28,28)
    return images, None if labels is None else labels.numpy(), seconds


def knob_settings(model: families.Family, cfg: SampleConfig) -> tuple[dict, list[tuple[str, float]]]:
    """The main sampling settings of the knobs `model` honours, and the (knob, value) pairs of
    its sweeps, without the main value. A value of None (no truncation) is stored as inf."""
    main = {knob: getattr(cfg, knob) for knob in model.knobs}
    sweep = [(knob, value) for knob in model.knobs for value in getattr(cfg, f"{knob}_sweep")
             if value != main[knob]]
    return main, sweep


def as_float(value: float | None) -> float:
    return math.inf if value is None else float(value)


@user_errors
def sample(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
           device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Draw `sample.n` images to samples/<family>.npz (with the time it took), the same number at
    each sweep value (`sample.truncation_sweep`), and figures to reports/samples/<family>/:
    grid.png (the first `sample.grid` images) and, for latent families, interpolation.png and
    arithmetic.png."""
    p, dev = setup(params, device)
    cfg = p.family(family)
    if dry_run:
        return print_settings({"sample": p.sample.model_dump(), family: cfg.model_dump(),
                               "seed": p.seed, "device": str(dev)})
    model = families.load(family, cfg, paths.model(family), dev)
    main, sweep = knob_settings(model, p.sample)
    n, bs = p.sample.n, p.sample.batch_size
    images, labels, seconds = draw(model, n, bs, p.seed, dev, **main)
    arrays = {"images": images, "seconds": np.float64(seconds),
              "images_per_second": np.float64(n / seconds), "device": np.str_(device_name(dev)),
              **{f"knob_{k}": np.float64(as_float(v)) for k, v in main.items()}}
    if labels is not None:
        arrays["labels"] = labels
    log(f"{family}: {n} samples in {seconds:.2f} s ({n / seconds:.0f} images/s on "
        f"{device_name(dev)})")
    sweep_images, sweep_rates = [], []
    for knob, value in sweep:
        imgs, _, secs = draw(model, n, bs, p.seed, dev, **{**main, knob: value})
        sweep_images.append(imgs)
        sweep_rates.append(n / secs)
        log(f"{family}: {n} samples at {knob}={value} in {secs:.2f} s")
    arrays.update(sweep_knob=np.array([k for k, _ in sweep], dtype=str),
                  sweep_value=np.array([as_float(v) for _, v in sweep], dtype=np.float64),
                  sweep_images=np.stack(sweep_images) if sweep_images
                  else np.zeros((0, n, 28, 28), np.uint8),
                  sweep_images_per_second=np.array(sweep_rates, dtype=np.float64))
    write_npz(paths.samples(family), arrays)

    out = paths.sample_figures(family)
    written = [out / "grid.png"]
    figures.save_grid(images[:p.sample.grid], written[0])
    if isinstance(model, families.LatentFamily):
        for name, make, cols in (("interpolation", latent.interpolation, 10),
                                 ("arithmetic", latent.arithmetic, 9)):
            grid = make(model.generate, model.latent_dim, model.conditional, generator(p.seed))
            figures.save_grid(grid.cpu(), out / f"{name}.png", nrow=cols)
            written.append(out / f"{name}.png")
    log(f"wrote {paths.samples(family)} and {', '.join(f.name for f in written)} in {out}")
    with tracking.stage_run("sample", family, p.profile) as run:
        run.log_params(tracking.flatten({"sample": p.sample.model_dump(), "seed": p.seed}))
        run.log_metrics({"samples_per_second": n / seconds, "sample_seconds": seconds})
        for path in written:
            run.log_artifact(path)
