"""Float images to uint8 pixels: rounded, and clamped first so nothing wraps around."""

from __future__ import annotations

import torch

from trilemma import pixels


def test_pixels_round_and_clamp_to_uint8():
    assert torch.equal(pixels.from_unit(torch.tensor([0.0, 0.5, 1.2, -0.1, 0.999])),
                       torch.tensor([0, 128, 255, 0, 255], dtype=torch.uint8))
    assert torch.equal(pixels.from_signed(torch.tensor([-1.0, 0.0, 1.01, -1.2, 0.997])),
                       torch.tensor([0, 128, 255, 0, 255], dtype=torch.uint8))
