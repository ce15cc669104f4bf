"""What "two processes compute what one computes" means in the data-parallel tests
(test_distributed.py, test_distributed_ranks.py): a deadline for the processes, and comparisons
that allow floating-point summation order and no more."""

from __future__ import annotations

import math

import torch

from test_resume import flat  # nested model file -> {"state.vae.encoder.0.weight": tensor, ...}

__all__ = ["DEADLINE", "close", "flat", "scaled_diffs"]

DEADLINE = 180  # seconds per command: a hung collective fails the test instead of blocking CI

# loss.csv holds 6 significant digits (%.6g), metrics.json 6 decimals: one step of that rounding
# (up to 1e-5 relative, 1e-6 absolute) on top of the summation-order noise
LOSS_REL, LOSS_ABS = 2e-5, 2e-6


def scaled_diffs(a: dict, b: dict) -> dict[str, float]:
    """Two saved models: every non-tensor entry (config, image spec, optimiser settings) and every
    integer tensor equal; per float tensor, max |a-b| / max(1, max |b|)."""
    flat_a, flat_b = flat(a), flat(b)
    assert flat_a.keys() == flat_b.keys()
    diffs = {}
    for key, value in flat_a.items():
        other = flat_b[key]
        if not isinstance(value, torch.Tensor):
            assert value == other, key
            continue
        assert value.shape == other.shape and value.dtype == other.dtype, key
        if not value.is_floating_point():
            assert torch.equal(value, other), key
        elif value.numel():
            scale = max(1.0, other.abs().max().item())
            diffs[key] = (value.double() - other.double()).abs().max().item() / scale
    return diffs


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=LOSS_REL, abs_tol=LOSS_ABS)
