"""Device choice and seeding: the environment a stage runs in."""

from __future__ import annotations

import os
import random
import threading
from typing import Callable

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


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    """Seed every RNG. On a GPU, also ask torch for deterministic kernels (a warning, not an
    error, for ops that have none: reruns then agree up to those ops' floating-point ordering).
    The CPU kernels used here are deterministic already, and the switch would cost every CPU stage
    2 s of compiler imports plus a NaN fill of every new tensor."""
    if device is not None and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


PRECISIONS = ("fp32", "tf32", "bf16")


def set_precision(precision: str) -> None:
    """fp32: strict float32. tf32: float32 matmuls and convolutions on TensorFloat-32 tensor
    cores (CUDA only: a no-op elsewhere). bf16: tf32 plus bfloat16 autocast (`autocast`)."""
    mode = "ieee" if precision == "fp32" else "tf32"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bfloat16 autocast for `bf16`; a disabled context otherwise. bf16 needs no loss scaling."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak memory so far, in GiB: the GPU's allocated memory (None off the GPU), and the whole
    process's resident set (the CPU side, models and data included)."""
    import resource

    gib = 2 ** 30
    gpu = torch.cuda.max_memory_allocated(device) / gib if device.type == "cuda" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / gib  # Linux: KiB
    return {"peak_gpu_memory_gib": None if gpu is None else round(gpu, 3),
            "peak_rss_gib": round(rss, 3)}


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class BusySampler:
    """The GPU's busy share while a block runs: every `period` seconds a thread reads the share
    of the last sample interval in which a kernel was running (NVML, via torch.cuda.utilization).
    Off the GPU, or when NVML cannot be read, it records nothing. `read` replaces the reading."""

    def __init__(self, device: torch.device, period: float = 0.5,
                 read: Callable[[], float] | None = None):
        self.period, self.samples = period, []
        self.read = read or ((lambda: torch.cuda.utilization(device)) if device.type == "cuda"
                             else None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="gpu-busy", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(float(self.read()))
            except Exception:  # no NVML (driver, container): nothing to report, never a failure
                return

    def __enter__(self) -> "BusySampler":
        if self.read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict[str, float | int | None]:
        mean = sum(self.samples) / len(self.samples) if self.samples else None
        return {"gpu_busy_percent": None if mean is None else round(mean, 1),
                "gpu_busy_samples": len(self.samples)}
