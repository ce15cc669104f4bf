"""Device choice and seeding: the environment a stage runs in."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from trilemma.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str | None = None) -> torch.device:
    """`--device` if given, else $TRILEMMA_DEVICE, else auto (cuda when available)."""
    choice = (choice or os.environ.get("TRILEMMA_DEVICE") or "auto").lower()
    if choice not in DEVICE_CHOICES:
        raise ConfigError(f"device: must be one of {', '.join(DEVICE_CHOICES)} (got {choice!r})")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but no CUDA GPU is visible")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    """What goes into metrics files: the GPU model, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    """Seed every RNG and ask torch for deterministic kernels (a warning, not an error, for ops
    that have none: on a GPU, reruns then agree up to those ops' floating-point ordering)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
