"""Stage `sample <family>`: N images from a trained family, timed; the same N again at every
value of the family's sampling sweeps (e.g. truncation); grid, interpolation and arithmetic figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import (distributed, families, figures, latent, paths, provenance, registry,
                      tracking)
from trilemma.config import SWEEPS, SampleConfig
from trilemma.errors import ConfigError
from trilemma.generation import cap_steps, draw
from trilemma.io import atomic_dir, write_npz
from trilemma.runtime import (autocast, device_name, generator, peak_memory,
                              reset_peak_memory, set_precision)


def knob_settings(model: families.Family, cfg: SampleConfig) -> tuple[dict, list[tuple[str, object]]]:
    """The main sampling settings of the knobs `model` honours, and the (knob, value) pairs of
    its sweeps (`<knob>_sweep` in SWEEPS), without the main value."""
    main = {knob: getattr(cfg, knob) for knob in model.knobs}
    swept = {knob: getattr(cfg, f"{knob}_sweep") for knob in SWEEPS if knob in model.knobs}
    if "steps" in model.knobs:  # at most T steps: a count above it would sample the same again
        capped = cap_steps(model, {"sample.steps": [main["steps"]], "steps_sweep": swept["steps"]})
        (main["steps"],), swept["steps"] = capped["sample.steps"], capped["steps_sweep"]
    sweep = [(knob, value) for knob, values in swept.items()
             for value in dict.fromkeys(values) if value != main[knob]]
    return main, sweep


def describe(model: families.Family, knob: str, settings: dict) -> tuple[float, str]:
    """A swept knob's setting as a number (for sorting and axes) and a label for tables:
    truncation None -> (inf, "none"); steps -> (network evaluations, "ddim 20" or "ddpm 1000")."""
    value = settings[knob]
    if knob == "truncation":
        return as_float(value), "none" if value is None else f"{value:g}"
    if knob == "steps":
        total = model.timesteps
        if value == "ddpm":
            return float(total), f"ddpm {total}"
        return float(min(value, total)), f"{settings['sampler']} {min(value, total)}"
    return float(value), f"{value:g}"


def check_memory(images: int, image) -> None:
    """ConfigError naming sample.n when the images to hold (main set and sweeps) would take more
    than half of this machine's memory: evaluate holds them again, with their features."""
    import os

    need = images * image.channels * image.size * image.size  # uint8
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have // 2:
        raise ConfigError(f"sample.n: {images} images (with the sweeps' sample.sweep_n each) of "
                          f"{image.channels}x{image.size}x{image.size} take {need / 2**30:.1f} GiB;"
                          f" at most half of this machine's {have / 2**30:.0f} GiB of memory")


def as_float(value: float | None) -> float:
    return math.inf if value is None else float(value)


@user_errors
def sample(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
           device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Draw `sample.n` images to samples/<family>.npz (with the time it took), `sample.sweep_n` at
    each value of the sweeps the family honours (`sample.truncation_sweep`, `steps_sweep`,
    `guidance_sweep`), and figures to reports/samples/<family>/:
    grid.png (the first `sample.grid` images) and, for latent families, interpolation.png and
    arithmetic.png. Under torchrun the processes share the batches out; rank 0 writes."""
    p, dev = setup(params, device)
    cfg = families.config(p, family)
    if dry_run:
        return print_settings({"sample": p.sample.model_dump(), family: cfg.model_dump(),
                               "seed": p.seed, "device": str(dev)})
    model = families.load(family, cfg, paths.model(family), dev)
    main, sweep = knob_settings(model, p.sample)
    n, bs, m = p.sample.n, p.sample.batch_size, p.sample.sweep_size()
    check_memory(n + len(sweep) * m, model.image)
    set_precision(cfg.precision)
    reset_peak_memory(dev)
    with autocast(cfg.precision, dev):
        images, labels, seconds = draw(model, n, bs, p.seed, dev, warmup=True, **main)
    arrays = {"images": images, "seconds": np.float64(seconds),
              "images_per_second": np.float64(n / seconds), "device": np.str_(device_name(dev)),
              "processes": np.int64(distributed.world_size()),
              **provenance.stamp(family, paths.model(family), p)}  # evaluate checks it
    if dev.type == "cuda":
        arrays["peak_gpu_memory_gib"] = np.float64(peak_memory(dev)["peak_gpu_memory_gib"])
    for knob in SWEEPS:
        if knob in main:  # the main setting, for the first row of each sweep table
            value, label = describe(model, knob, main)
            arrays.update({f"knob_{knob}": np.float64(value), f"label_{knob}": np.str_(label)})
    if labels is not None:
        arrays["labels"] = labels
    shown = ", ".join(f"{k}={v}" for k, v in main.items())
    log(f"{family}: {n} samples in {seconds:.2f} s ({n / seconds:.0f} images/s on "
        f"{device_name(dev)}){f' at {shown}' if shown else ''}")
    sweep_images, sweep_rates, sweep_values, sweep_labels = [], [], [], []
    for knob, value in sweep:
        settings = {**main, knob: value}
        with autocast(cfg.precision, dev):
            imgs, _, secs = draw(model, m, bs, p.seed, dev, **settings)
        number, label = describe(model, knob, settings)
        sweep_images.append(imgs)
        sweep_rates.append(m / secs)
        sweep_values.append(number)
        sweep_labels.append(label)
        log(f"{family}: {m} samples at {knob} {label} in {secs:.2f} s ({m / secs:.0f} images/s)")
    if not distributed.is_rank0():  # the other torchrun ranks only draw their batches
        return
    arrays.update(sweep_knob=np.array([k for k, _ in sweep], dtype=str),
                  sweep_value=np.array(sweep_values, dtype=np.float64),
                  sweep_label=np.array(sweep_labels, dtype=str),
                  sweep_images=np.stack(sweep_images) if sweep_images
                  else np.zeros((0, m, *images.shape[1:]), np.uint8),
                  sweep_images_per_second=np.array(sweep_rates, dtype=np.float64))
    # timing is over: the run records from here (a tracker logs it after the stage)
    with tracking.stage_run("sample", family, p.profile) as run:
        run.log_params(tracking.flatten({"sample": p.sample.model_dump(), "seed": p.seed}))
        out = paths.sample_figures(family)
        written = [out / "grid.png"]
        with atomic_dir(out) as staged:  # a DVC output folder: no temporary file ever inside
            figures.save_grid(images[:p.sample.grid], staged / "grid.png")
            if registry.entry(family).latent:
                for name, make, cols in (("interpolation", latent.interpolation, 10),
                                         ("arithmetic", latent.arithmetic, 9)):
                    classes = model.image.num_classes if model.conditional else 0
                    grid = make(model.generate, model.latent_dim, classes, generator(p.seed))
                    figures.save_grid(grid.cpu(), staged / f"{name}.png", nrow=cols)
                    written.append(out / f"{name}.png")
            write_npz(paths.samples(family), arrays)  # last: the figures are in place by then
        log(f"wrote {paths.samples(family)} and {', '.join(f.name for f in written)} in {out}")
        run.log_metrics({"samples_per_second": n / seconds, "sample_seconds": seconds})
        for path in written:
            run.log_artifact(path)
