"""What the three translators share: the config fields, translation in eval mode, and the state
of one generator-discriminator pair (their GAN losses are `trilemma.gan_losses`')."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from trilemma.config import TrainConfig
from trilemma.data import ImageSpec
from trilemma.errors import ConfigError
from trilemma.gan import load_pair_state, pair_state


class I2IConfig(TrainConfig):
    width: int = Field(32, ge=4)  # channels of the first layer of every net; deeper ones double
    beta1: float = Field(0.5, ge=0, lt=1)  # Adam betas: pix2pix's and CycleGAN's (0.5, 0.999)
    beta2: float = Field(0.999, ge=0, lt=1)


def check_image(family: str, image: ImageSpec, multiple: int) -> None:
    """The tasks are defined for grey digits with labels (the judge scores whether the digit
    survives), on a side the nets can halve: one line naming the key otherwise."""
    if image.channels != 1:
        raise ConfigError(f"data.channels: {family} translates grey digit images (1 channel), "
                          f"got {image.channels}; remove it from the params' `i2i_families`")
    if not image.labelled:
        raise ConfigError(f"data.folder: {family} scores translations by the judge's accuracy on "
                          "labelled digits; these images have no classes; remove it from "
                          "the params' `i2i_families`")
    if image.size % multiple:
        raise ConfigError(f"data.image_size: {family} needs a side divisible by {multiple}, "
                          f"got {image.size}")


def prepare(net: nn.Module, device: torch.device) -> nn.Module:
    # channels_last: oneDNN's fast convolutions on a CPU, the tensor-core layout on a GPU
    return net.to(device, memory_format=torch.channels_last)


@torch.no_grad()
def translate_with(net: nn.Module, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """net(inputs) in eval mode, back in the mode it was in: (n,C,s,s) -> (n,C,S,S) in [0,1]."""
    training = net.training
    net.eval()
    out = net(inputs.to(device).contiguous(memory_format=torch.channels_last))
    net.train(training)
    return out.float().clamp(0, 1)


class GeneratorDiscriminatorPair:
    """The state of a translator trained as one generator `g` against one discriminator `d`,
    with optimisers `opt_g` and `opt_d` (pix2pix, SRGAN; SRGAN's judge is an input file, not
    trained state)."""

    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    def state_dict(self) -> dict[str, Any]:
        return pair_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_pair_state(self, state)

