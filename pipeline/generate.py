"""Command `generate <family>`: images from a trained model on request, written as a PNG grid or
an .npz: n images of the requested classes at chosen sampling settings, or, for an image-to-image
family, the translations of given image files. The drawing is the sample stage's
(`trilemma.generation.draw`): with its seed, n and settings it gives the sample stage's images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from pipeline.common import DeviceOption, ParamsOption, log, setup, single_process, user_errors
from trilemma.errors import ConfigError

ModelArgument = Annotated[str, typer.Argument(
    help="A family of params.yaml `families` or `i2i_families`, trained (models/<family>.pt).")]
OUTPUTS = (".png", ".npz")


def _save(out: Path, arrays: dict[str, np.ndarray], nrow: int | None) -> None:
    from trilemma import figures
    from trilemma.generation import write_npz_exact

    if out.suffix == ".png":
        figures.save_grid(arrays["images"], out, nrow=nrow)
    else:
        write_npz_exact(out, arrays)


def _refuse(options: dict[str, object], why: str) -> None:
    """One line naming the first option set that does not apply."""
    for name, value in options.items():
        if value is not None:
            raise ConfigError(f"--{name}: {why}")


@user_errors
def generate(
    family: ModelArgument,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output file: .png (a grid) or .npz (images, labels); "
        "default <family>.png")] = None,
    n: Annotated[Optional[int], typer.Option(
        "-n", "--n", help="Number of images (default: params sample.grid).")] = None,
    label: Annotated[Optional[str], typer.Option(
        "--label", help="Conditional families: a class (7), a list (1,4,7, repeated) or `all` "
        "(balanced, the default).")] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="Noise seed (default: params seed, as the sample stage).")] = None,
    truncation: Annotated[Optional[float], typer.Option(
        "--truncation", help="Latent families: truncation tau (default: params sample).")] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", help="Diffusion families: denoising steps.")] = None,
    sampler: Annotated[Optional[str], typer.Option(
        "--sampler", help="Diffusion families: ddim or ddpm.")] = None,
    eta: Annotated[Optional[float], typer.Option(
        "--eta", help="Diffusion families: DDIM noise, 0..1.")] = None,
    guidance: Annotated[Optional[float], typer.Option(
        "--guidance", help="Classifier-free guided families: guidance scale w.")] = None,
    inputs: Annotated[Optional[Path], typer.Option(
        "--input", help="Image-to-image families: an image file, or a folder of them, to "
        "translate.")] = None,
    params: ParamsOption = Path("params.yaml"),
    device: DeviceOption = "auto",
) -> None:
    """Draw images from models/<family>.pt (as the sample stage does, with these options
    overriding params `sample` and `seed`) or translate --input images with an image-to-image
    family; write them to --out. The same options give byte-identical files."""
    single_process("generate")
    if n is not None and n < 1:
        raise ConfigError(f"-n: must be at least 1, got {n}")
    if seed is not None and seed < 0:  # as params `seed`: numpy's seeds are non-negative
        raise ConfigError(f"--seed: must be at least 0, got {seed}")
    out = out or Path(f"{family}.png")
    if out.suffix not in OUTPUTS:
        raise ConfigError(f"--out: {out} must end in .png (a grid) or .npz")
    p, dev = setup(params, device)
    knobs = {"truncation": truncation, "steps": steps, "sampler": sampler, "eta": eta,
             "guidance": guidance}
    if family in p.i2i_families:
        _refuse({"n": n, "label": label, "seed": seed, **knobs},
                f"{family} translates the --input images; it draws no noise")
        arrays, nrow = _translate(family, p, dev, inputs)
    else:
        _refuse({"input": inputs}, f"{family} draws new images; --input is for the "
                f"image-to-image families ({', '.join(p.i2i_families) or 'none'})")
        arrays, nrow = _draw(family, p, dev, n or p.sample.grid, label, seed, knobs)
    _save(out, arrays, nrow)
    log(f"{family}: wrote {len(arrays['images'])} images to {out}")


def _draw(family: str, p, dev, n: int, label: str | None, seed: int | None,
          given: dict) -> tuple[dict[str, np.ndarray], int | None]:
    from trilemma import families, paths
    from trilemma.generation import cap_steps, draw, knob_values, parse_labels
    from trilemma.runtime import autocast, set_precision

    cfg = families.config(p, family)
    model = families.load(family, cfg, paths.model(family), dev)
    labels = parse_labels(label, n, model)
    settings = knob_values(model, p.sample, given)
    if "steps" in settings:
        name = "--steps" if given.get("steps") is not None else "sample.steps"
        (settings["steps"],) = cap_steps(model, {name: [settings["steps"]]})[name]
    set_precision(cfg.precision)
    with autocast(cfg.precision, dev):
        images, labels, _ = draw(model, n, p.sample.batch_size, p.seed if seed is None else seed,
                                 dev, labels=labels, **settings)
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels
    balanced = model.conditional and label in (None, "all")
    return arrays, model.image.num_classes if balanced else None  # balanced: a class a column


def _translate(family: str, p, dev, source: Path | None) -> tuple[dict[str, np.ndarray], None]:
    from trilemma import i2i, paths
    from trilemma.classifier import load_judge
    from trilemma.generation import input_size, read_images, translate

    if source is None:
        raise ConfigError(f"--input: missing; {family} translates an image file or a folder")
    # the judge only when it is there: a translator built with it (SRGAN) says it needs it
    judge = load_judge(paths.CLASSIFIER, dev) if paths.CLASSIFIER.exists() else None
    model = i2i.load(family, i2i.config(p, family), paths.model(family), dev, judge)
    x, _ = read_images(source, model.image.channels, input_size(model.task, model.image))
    return {"inputs": x, "images": translate(model, x, p.evaluate.batch_size)}, None
