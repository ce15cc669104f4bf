"""Writing outputs so that a killed stage never leaves a half-written file behind."""

from __future__ import annotations

import glob
import io
import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from trilemma.errors import DataError, brief


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Temporary copies of `path` (files or folders) left by a process that was killed."""
    for kind in ("tmp", "old"):  # .NAME.tmpPID, .NAME.oldPID
        prefix = f".{path.name}.{kind}"
        for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
            pid = stale.name[len(prefix):]
            if pid.isdigit() and not _alive(int(pid)):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{path.parent}: cannot create output directory ({err.strerror})") from None
    _remove_stale(path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    _make_parent(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # no permission, disk full, file too large, read-only file system
        raise DataError(f"{path}: cannot write ({err.strerror or brief(err)})") from None
    except RuntimeError as err:  # torch.save reports a failed write this way
        if "write" not in str(err):
            raise
        raise DataError(f"{path}: cannot write ({brief(err)})") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside the folder `path`; when the block succeeds it takes
    `path`'s place as a whole, so a reader (or a killed run) sees the old set of files or the new
    one, never a mix of both."""
    path = Path(path)
    _make_parent(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        if path.exists():
            os.replace(path, old)  # two renames: the old set stays whole until the new one is in
        os.replace(tmp, path)
    except DataError as err:  # a file inside: name it where it was meant to go
        raise DataError(str(err).replace(str(tmp), str(path))) from None
    except OSError as err:
        raise DataError(f"{path}: cannot write ({err.strerror or brief(err)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    import numpy as np

    # in memory first: np.savez leaves its zip open when a write fails (a full disk), and the
    # zip's cleanup then prints a traceback of its own
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def finite_or_null(obj: Any) -> Any:
    """`obj` with every non-finite float (a measurement that failed: inf, nan) as None, so that
    it is written as JSON's null: Infinity and NaN are no JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def file_sha256(path: str | Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Rows as CSV; `columns` fixes the header (and its order), written even with no rows."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, float_format="%.6g")
