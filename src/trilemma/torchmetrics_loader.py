"""torchmetrics takes 4-5 s to import on a CPU (it loads its whole package): a stage starts that
import on a background thread (`start`) while it reads and embeds images. Every torchmetrics import
in the package calls `wait` first: two threads importing one package can deadlock, or one of them
sees it half-initialised (KeyError: 'torchmetrics')."""

from __future__ import annotations

import importlib
import threading

_loading: list[threading.Thread] = []


def start() -> None:
    thread = threading.Thread(target=importlib.import_module, args=("torchmetrics",),
                              name="import-torchmetrics", daemon=True)
    thread.start()
    _loading.append(thread)


def wait() -> None:
    """Join an import `start`ed and still under way; a no-op otherwise."""
    while _loading:
        _loading.pop().join()
