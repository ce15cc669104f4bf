"""Stage `sample <family>`: N images from a trained family, timed, plus the fixed-noise grid."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import families, figures, paths, tracking
from trilemma.io import write_npz
from trilemma.runtime import device_name, generator


def draw(model: families.Family, n: int, batch_size: int, seed: int,
         device: torch.device) -> tuple[np.ndarray, np.ndarray | None, float]:
    """n images (n,28,28) uint8, the requested labels (balanced digits) for a conditional family,
    and the sampling time in seconds (after one untimed warm-up batch)."""
    labels = torch.arange(n) % 10 if model.conditional else None
    model.sample(min(batch_size, n), None if labels is None else labels[:batch_size], generator(seed))
    gen = generator(seed)
    chunks = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        batch_labels = None if labels is None else labels[start:start + batch_size]
        chunks.append(model.sample(min(batch_size, n - start), batch_labels, gen).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    images = torch.cat(chunks)[:, 0].numpy()  # (n,28,28)
    return images, None if labels is None else labels.numpy(), seconds


@user_errors
def sample(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
           device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Draw `sample.n` images to samples/<family>.npz (with the time it took) and a grid of the
    first `sample.grid` of them to reports/samples/<family>.png."""
    p, dev = setup(params, device)
    cfg = p.family(family)
    if dry_run:
        return print_settings({"sample": p.sample.model_dump(), family: cfg.model_dump(),
                               "seed": p.seed, "device": str(dev)})
    model = families.load(family, cfg, paths.model(family), dev)
    images, labels, seconds = draw(model, p.sample.n, p.sample.batch_size, p.seed, dev)
    rate = p.sample.n / seconds
    arrays = {"images": images, "seconds": np.float64(seconds),
              "images_per_second": np.float64(rate), "device": np.str_(device_name(dev))}
    if labels is not None:
        arrays["labels"] = labels
    write_npz(paths.samples(family), arrays)
    figures.save_grid(images[:p.sample.grid], paths.sample_grid(family))
    log(f"wrote {p.sample.n} samples to {paths.samples(family)} in {seconds:.2f} s "
        f"({rate:.0f} images/s on {device_name(dev)})")
    with tracking.stage_run("sample", family, p.profile) as run:
        run.log_params(tracking.flatten({"sample": p.sample.model_dump(), "seed": p.seed}))
        run.log_metrics({"samples_per_second": rate, "sample_seconds": seconds})
        run.log_artifact(paths.sample_grid(family))
