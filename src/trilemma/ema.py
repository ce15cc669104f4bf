"""An exponential moving average (EMA) of a network's weights: the copy that samples. Averaging
the last few hundred optimiser steps smooths out the oscillation of adversarial (and noisy
diffusion) training; ProGAN and StyleGAN sample from it with decay 0.999 (Karras et al., 2018;
2019)."""

from __future__ import annotations

import copy
from typing import Annotated, Optional

import torch
from pydantic import AfterValidator, Field
from torch import nn

# A family's `ema_decay` setting where the EMA is optional: 0 and null both mean off and are
# stored as null, so a model trained with either loads, and a checkpoint resumes, under the other
Decay = Annotated[Optional[float], Field(ge=0, lt=1), AfterValidator(lambda decay: decay or None)]


def warmed_up(decay: float, step: int) -> float:
    """The decay used after optimisation step `step` (from 0): min(decay, (1+step)/(10+step)).
    Early on the average forgets fast, so a short run is not an average of its random start;
    0.999 itself is reached after about 9,000 steps."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """A frozen copy of `net` (eval mode, no gradients) whose parameters follow net's by
    `update`, and whose buffers (running statistics, StyleGAN's w_avg and fixed noise maps) are
    net's own, copied at every update."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """After optimisation step `step` of `net` (the plain module, not a DDP wrapper)."""
        weight = 1 - warmed_up(self.decay, step)
        torch._foreach_lerp_(list(self.net.parameters()), list(net.parameters()), weight)
        for mine, theirs in zip(self.net.buffers(), net.buffers()):
            mine.copy_(theirs)


def maybe(net: nn.Module, decay: float | None) -> EMA | None:
    """An EMA of `net`, or None when `decay` is None or 0 (off: the trained net samples)."""
    return EMA(net, decay) if decay else None
