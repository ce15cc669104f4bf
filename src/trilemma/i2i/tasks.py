"""The image-to-image tasks, derived from the digits themselves: pure, deterministic functions of
a batch of target digits (B,1,S,S) in [0,1], so every stage and test rebuilds the same pairs.

- edges: the Sobel gradient magnitude of the digit -> the digit (pix2pix)
- super_resolution: the digit area-averaged down by `factor` -> the digit (SRGAN); the
  no-learning answer is bicubic upsampling
- thicken: the digit -> its strokes dilated by a 3x3 max filter (CycleGAN, trained unpaired);
  the no-learning answer is the untranslated digit
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

# Sobel's horizontal kernel; its transpose is the vertical one
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_SCALE = 4.0  # the largest response of one Sobel kernel to a [0,1] step edge


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude of x (B,C,S,S) in [0,1], divided by SOBEL_SCALE and clamped to [0,1];
    zero padding, so a stroke touching the border still has an outline there."""
    c = x.shape[1]
    kernel = torch.stack([_SOBEL, _SOBEL.T]).to(x)[:, None].repeat(c, 1, 1, 1)  # (2C,1,3,3)
    grad = F.conv2d(x, kernel, padding=1, groups=c)  # (B,2C,S,S): gx, gy per channel
    gx, gy = grad[:, 0::2], grad[:, 1::2]
    return (gx.square() + gy.square()).sqrt().div(SOBEL_SCALE).clamp(0, 1)


def dilate(x: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Grey-level dilation by a (2r+1)^2 square: a max filter; x (B,C,S,S) -> same shape."""
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area (box) averaging: (B,C,S,S) -> (B,C,S/factor,S/factor)."""
    return F.avg_pool2d(x, factor)


def bicubic(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic upsampling to (B,C,size,size), clamped to [0,1] (bicubic overshoots at edges)."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@dataclass(frozen=True)
class Task:
    """One translation task: `pair` maps target digits to (input, target); `baseline` maps inputs
    to the answer without learning, at the target's size."""

    name: str
    description: str  # for the report: what goes in and what comes out
    baseline_name: str
    pair: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    baseline: Callable[[torch.Tensor], torch.Tensor]
    paired_training: bool  # False: training never sees an input with its own target


def edges_task() -> Task:
    return Task("edges", "Sobel edge magnitude -> digit", "the edge map itself",
                lambda x: (sobel_edges(x), x), lambda inputs: inputs, True)


def super_resolution_task(factor: int) -> Task:
    def baseline(inputs: torch.Tensor) -> torch.Tensor:
        return bicubic(inputs, inputs.shape[-1] * factor)

    return Task("super_resolution", f"{factor}x area-downsampled digit -> digit",
                "bicubic upsampling", lambda x: (downsample(x, factor), x), baseline, True)


def thicken_task(radius: int = 1) -> Task:
    return Task("thicken", f"digit <-> digit dilated by a {2 * radius + 1}x{2 * radius + 1} "
                "max filter (unpaired)", "the untranslated digit",
                lambda x: (x, dilate(x, radius)), lambda inputs: inputs, False)


def unpaired_halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of images from one shuffled batch (B,C,S,S): the even rows stand for
    domain A, the odd rows (to be mapped to domain B) for B, so no image meets its own
    translation in training."""
    half = len(x) // 2
    return x[0:2 * half:2], x[1:2 * half:2]
