"""What a command needs to know about torchrun before it knows whether it needs torch, read from
the environment and from the modules already imported: the torchrun refusal, the progress lines,
the stage log and the exit of every command then cost no torch import of their own (seed-spread
and an offline download import none at all; report, sync-mlflow and an online download still do,
for torch's version, the image-to-image package and torchvision's mirror list)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def launched() -> bool:
    """True in a process started by torchrun (it sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank0_by_environment() -> bool:
    """Rank 0 by torchrun's RANK (0 outside torchrun), for a process that has not joined a group."""
    return int(os.environ.get("RANK", "0")) == 0


def distributed_module() -> ModuleType | None:
    """`trilemma.distributed` if this process imported it, else None. Only that module joins a
    process group, so a process that never imported it is a single rank 0 with nothing to leave."""
    return sys.modules.get("trilemma.distributed")


def log(message: str) -> None:
    """A progress line; under torchrun from rank 0 only (by torchrun's RANK in a process that
    never imported `trilemma.distributed`)."""
    distributed = distributed_module()
    if distributed.is_rank0() if distributed is not None else rank0_by_environment():
        print(message, flush=True)
