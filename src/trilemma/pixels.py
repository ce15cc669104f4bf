"""Float images to uint8 pixels, written once: what the stages save, score and draw is rounded
here, clamped first so that a value just outside the range cannot wrap around."""

from __future__ import annotations

import torch


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """Floats in [0,1] -> uint8 0..255, on x's device."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def from_signed(x: torch.Tensor) -> torch.Tensor:
    """Floats in [-1,1] -> uint8 0..255, on x's device."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
