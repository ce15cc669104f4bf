"""Data parallelism over processes started by `torchrun` (torch.distributed, DistributedDataParallel).

One process per GPU (or per CPU slot with the gloo backend). Every process holds the whole data
set and the same seeds; each trains on its share of every global batch. The shares, and the random
numbers drawn for them, are chosen so that N processes compute what one process computes on the
same global batch: rank r takes rows r, r+N, r+2N, ... of the batch, and every draw is made for the
whole batch on every rank (same seed, same stream) and cut the same way. Gradients are averaged by
DDP; batch means of losses are averaged across ranks. What still differs from one process:
floating-point summation order, dropout masks (drawn per process) and BatchNorm statistics (per
process on a CPU; global on CUDA, where BatchNorm becomes SyncBatchNorm).

Outside torchrun every function here is the single-process identity: world size 1, rank 0.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
import torch
import torch.distributed as dist
from torch import nn

from trilemma.errors import ConfigError
from trilemma.torchrun import launched  # noqa: F401 (also this module's API)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_rank0() -> bool:
    """Rank 0: the one process that prints progress, writes files and logs to MLflow."""
    return rank() == 0


def start(device: torch.device) -> torch.device:
    """Join the torchrun process group if this process was started by torchrun; return the device
    this rank uses: its own GPU (LOCAL_RANK) on CUDA, else the CPU with the gloo backend."""
    if not launched() or active():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun: LOCAL_RANK {local} but only {torch.cuda.device_count()} "
                              "GPU(s) are visible; lower --nproc-per-node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(minutes=30))
    return device


def stop() -> None:
    """Leave the process group (every rank, at the end of a command)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, name: str) -> None:
    """ConfigError unless a global batch splits evenly over the processes."""
    world = world_size()
    if batch_size % world:
        raise ConfigError(f"{name}.batch_size: {batch_size} does not split evenly over {world} "
                          f"processes; use a multiple of {world}")


def share(rows: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch: r, r+N, r+2N, ... (all of them in one process)."""
    return rows[rank()::world_size()]


# Random draws for a local batch of n rows, made for the global batch and cut to this rank's rows:
# the same numbers reach the same examples whatever the number of processes.
def randn(n: int, *shape: int, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    return share(torch.randn(n * world_size(), *shape, device=device, dtype=dtype))


def randn_like(x: torch.Tensor) -> torch.Tensor:
    return randn(len(x), *x.shape[1:], device=x.device, dtype=x.dtype)


def rand(n: int, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
    return share(torch.rand(n * world_size(), *shape, device=device))


def randint(low: int, high: int, n: int, *shape: int,
            device: torch.device | str | None = None) -> torch.Tensor:
    return share(torch.randint(low, high, (n * world_size(), *shape), device=device))


def average(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Means across ranks of per-rank batch means (equal shares: the global batch mean)."""
    if not active() or not values:
        return values
    stacked = torch.stack([v.float() for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, stacked / world_size()))


def wrap(nets: dict[str, nn.Module], device: torch.device) -> dict[str, nn.Module]:
    """The networks as DistributedDataParallel modules (the nets themselves in one process).
    They share their parameters with the plain nets: optimisers, EMA and checkpoints see no
    difference. On CUDA, BatchNorm layers become SyncBatchNorm first (statistics of the global
    batch); the gloo backend has no SyncBatchNorm, so on a CPU they stay per process."""
    if not active():
        return nets
    from torch.nn.parallel import DistributedDataParallel as DDP

    wrapped = {}
    for name, net in nets.items():
        if device.type == "cuda":
            for child_name, child in list(net.named_children()):
                setattr(net, child_name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        if getattr(net, "partial", False):  # see average_gradients
            wrapped[name] = net
            continue
        wrapped[name] = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


def average_gradients(net: nn.Module) -> None:
    """The mean of every rank's gradients of `net`, in one all-reduce: for a net that runs part of
    itself per step (ProGAN's levels, `partial = True`), which `wrap` leaves to its trainee.
    DistributedDataParallel, even with find_unused_parameters, records which weights a step used
    and fails when a later step uses fewer (a fade-in that ends). Weights without a gradient are
    the same on every rank (they follow the step counter) and stay without one. Nothing in one
    process."""
    if not active():
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(mean)


def no_sync(net: nn.Module) -> contextlib.AbstractContextManager:
    """A backward whose gradients for `net` are thrown away (a GAN's D during the G step): no
    all-reduce for them. A plain context in one process."""
    return net.no_sync() if hasattr(net, "no_sync") else contextlib.nullcontext()


def barrier() -> None:
    if active():
        dist.barrier()


def gather_dict(local: dict) -> dict:
    """Every rank's entries merged, on every rank (picklable values; keys distinct per rank)."""
    if not active():
        return local
    parts: list[dict | None] = [None] * world_size()
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order, on every rank (CPU tensors of any length)."""
    if not active():
        return local
    parts: list[torch.Tensor | None] = [None] * world_size()
    dist.all_gather_object(parts, local.cpu())
    return torch.cat(parts)


def contiguous_share(n: int) -> slice:
    """This rank's block of n items: blocks in rank order cover 0..n-1 (`gather_rows` joins them)."""
    world, r = world_size(), rank()
    return slice(r * n // world, (r + 1) * n // world)
