"""Every family the pipeline knows, by name: where its module is and what it is. Imports nothing
(no torch): params validation, the report and the tests read it without loading a network.

A family's module (`module`) holds its `Config` (its params section, a TrainConfig) and `build`;
`trilemma.loader` imports it when the family is used. Everything outside that module asks the
entry here what the family is instead of naming it or checking its type. Adding a family: its
module, one entry below, one params.yaml section (and its name in `families`/`i2i_families`).
tests/test_families.py checks each declaration against the model its module builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["generator", "translator"]
GAN_TINY = {"epochs": 1, "width": 8, "latent_dim": 8, "batch_size": 64}
PIXEL_DIFFUSION_TINY = {"epochs": 1, "batch_size": 64, "widths": [8, 16], "patch": 2,
                        "timesteps": 20, "dropout": 0.0}
TRANSLATOR_TINY = {"epochs": 1, "width": 8, "batch_size": 32, "max_steps": 3}


@dataclass(frozen=True)
class Entry:
    module: str  # dotted path of the family's module
    kind: Kind = "generator"  # generator: draws images (`families`); translator: maps images
    conditional: bool = False  # draws the classes it is asked for
    latent: bool = False  # decodes a Gaussian latent: interpolation and arithmetic figures
    diffusion: Literal["pixel", "latent"] | None = None  # the space it denoises in, if it does
    # how the control stage steers it toward a class: "steer" (Adam on the latent of `decode`),
    # "classifier" (classifier guidance of its denoising), "classifier-free" (its own guidance);
    # None: it cannot be steered
    control: Literal["steer", "classifier", "classifier-free"] | None = None
    knobs: tuple[str, ...] = ()  # the `sample` settings its `sample` takes
    needs_judge: bool = False  # built with the judge (models/classifier.pt) as part of its loss
    tiny: dict[str, Any] = field(default_factory=dict)  # its section in the tests' tiny params


def _latent(module: str, **declared: Any) -> Entry:
    """A family that decodes a Gaussian latent (the VAE, the GANs): truncation, steering."""
    return Entry(f"trilemma.families.{module}", latent=True, knobs=("truncation",),
                 **{"control": "steer", "tiny": GAN_TINY, **declared})


def _diffusion(module: str, space: Literal["pixel", "latent"], **declared: Any) -> Entry:
    conditional = declared.pop("conditional", False)
    return Entry(f"trilemma.families.{module}", conditional=conditional, diffusion=space,
                 knobs=("sampler", "steps", "eta") + (("guidance",) if conditional else ()),
                 control="classifier-free" if conditional else "classifier", **declared)


# generators in the order of params.yaml `families`, then the translators
REGISTRY: dict[str, Entry] = {
    "vae": _latent("vae", tiny={"epochs": 1, "width": 8, "latent_dim": 2, "batch_size": 64}),
    "mlp_gan": _latent("mlp_gan"),
    "dcgan": _latent("dcgan"),
    "wgan_gp": _latent("wgan_gp"),
    "cgan": _latent("cgan", conditional=True, control=None),
    "stylegan": _latent("stylegan", tiny={"epochs": 1, "width": 8, "latent_dim": 8, "w_dim": 16,
                                       "mapping_layers": 2, "batch_size": 64}),
    "progan": _latent("progan", tiny={  # grows 7 -> 14 -> 28 in its 4 steps
        "epochs": 1, "width": 4, "max_width": 16, "latent_dim": 8, "batch_size": 64,
        "resolution_steps": 1, "fade_steps": 1}),
    "ddpm": _diffusion("ddpm", "pixel", tiny=PIXEL_DIFFUSION_TINY),
    "cfg_diffusion": _diffusion("cfg_diffusion", "pixel", conditional=True,
                                tiny=PIXEL_DIFFUSION_TINY),
    "latent_diffusion": _diffusion("latent_diffusion", "latent", conditional=True, tiny={
        # 2 autoencoder steps, then 2 diffusion steps
        "epochs": 1, "batch_size": 64, "width": 8, "widths": [8, 16], "timesteps": 20,
        "dropout": 0.0, "ae_steps": 2, "max_steps": 4}),
    "pix2pix": Entry("trilemma.i2i.pix2pix", "translator", tiny=TRANSLATOR_TINY),
    "srgan": Entry("trilemma.i2i.srgan", "translator", needs_judge=True,
                   tiny={**TRANSLATOR_TINY, "blocks": 1}),
    "cyclegan": Entry("trilemma.i2i.cyclegan", "translator", tiny=TRANSLATOR_TINY),
}


def names(kind: Kind) -> list[str]:
    """The registered families of one kind, in registry order."""
    return [name for name, entry in REGISTRY.items() if entry.kind == kind]


def entry(name: str) -> Entry:
    """The declaration of a registered family (KeyError naming it otherwise)."""
    return REGISTRY[name]
