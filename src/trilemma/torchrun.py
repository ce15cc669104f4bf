"""What a command needs to know about torchrun before it knows whether it needs torch: read from
the environment and from the modules already imported, so that stages which never touch a tensor
(download, report, sync-mlflow, seed-spread) skip torch's import (about 1 s of start-up)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def launched() -> bool:
    """True in a process started by torchrun (it sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed_module() -> ModuleType | None:
    """`trilemma.distributed` if this process imported it, else None. Only that module joins a
    process group, so a process that never imported it is a single rank 0 with nothing to leave."""
    return sys.modules.get("trilemma.distributed")
