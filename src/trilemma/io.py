"""Writing outputs so that a killed stage never leaves a half-written file behind."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import shutil
from contextlib import contextmanager, suppress
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
    """Temporary copies of `path` (files or folders) left by a process that was killed. A folder
    that `atomic_dir` set aside (.NAME.oldPID) while its staged one (.NAME.tmpPID) had yet to
    take its place is the last whole set: it goes back to `path`, if `path` is missing, not away.
    (Without its staged folder the new set did take its place: the old one is out of date.)"""
    for kind in ("old", "tmp"):  # .NAME.oldPID, .NAME.tmpPID
        prefix = f".{path.name}.{kind}"
        for stale in sorted(path.parent.glob(f"{glob.escape(prefix)}*")):
            pid = stale.name[len(prefix):]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            staged = path.with_name(f".{path.name}.tmp{pid}")
            if kind == "old" and staged.exists() and not os.path.lexists(path):
                with suppress(OSError):  # where it cannot go back, it stays for a person to see
                    os.replace(stale, path)
                continue
            _discard(stale)


def _discard(path: Path) -> None:
    """Remove a temporary file or folder where it can be: a removal that fails (a read-only file
    system refuses even to remove a file that is not there) must not hide the error being raised."""
    with suppress(OSError):  # is_dir too: a folder without search permission raises there
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _failure(err: OSError, path: Path, tmp: Path) -> DataError:
    """`err`, raised while `path` was written through its temporary copy `tmp`, as one line
    naming the file that failed: `path` (or the file in it) when the output failed, or the other
    file the block used (an input it read), for which "cannot write `path`" would be wrong."""
    why = err.strerror or brief(err)
    if err.filename is None:  # a write to a file already open (a full disk) names no file
        return DataError(f"{path}: cannot write ({why})")
    # a copy or rename names its source and its destination (filename2): the output, if either
    for name in map(Path, map(os.fsdecode, filter(None, (err.filename2, err.filename)))):
        if os.path.abspath(name) == os.path.abspath(path):  # the final rename
            return DataError(f"{path}: cannot write ({why})")
        with suppress(ValueError):
            inside = Path(os.path.abspath(name)).relative_to(os.path.abspath(tmp))
            return DataError(f"{path / inside}: cannot write ({why})")
    name = Path(os.fsdecode(err.filename))  # another file the block used: an input it read
    return DataError(f"{name}: not found" if isinstance(err, FileNotFoundError)
                     else f"{name}: {why}")


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
        raise _failure(err, path, tmp) from None
    except RuntimeError as err:  # torch.save reports a failed open or write this way
        text = brief(err)
        if "write" not in text and "open file failed" not in text:
            raise
        raise DataError(f"{path}: cannot write ({text.split('strerror: ')[-1]})") from None
    finally:
        _discard(tmp)


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
        raise _failure(err, path, tmp) from None
    finally:  # stopped between the two renames (an error, Ctrl-C): the old set goes back
        if old.exists() and not os.path.lexists(path):
            with suppress(OSError):
                os.replace(old, path)
        if os.path.lexists(path) or not old.exists():
            _discard(tmp)
            _discard(old)
        # else both stay: the next writer of `path` puts the old set back (_remove_stale)


def remove(path: str | Path) -> None:
    """Delete the file `path` if it is there; one that cannot be deleted is named."""
    path = Path(path)
    try:
        path.unlink(missing_ok=True)
    except OSError as err:  # a read-only file system refuses even a file that is not there
        if os.path.lexists(path):
            raise DataError(f"{path}: cannot remove ({err.strerror or brief(err)})") from None


def is_number(value: Any) -> bool:
    """A JSON number: an int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def state_problem(saved: Any, fresh: Any, where: str = "") -> str | None:
    """Why a state read from a file (`saved`: nested dicts and lists of tensors and numbers, as
    torch.save wrote them) cannot stand in for `fresh`, the same object's state as built now, or
    None. A NaN or an infinity anywhere (training stops at the first non-finite loss, so a file
    holding one was damaged), or a value of another kind than fresh's at the same place (integer
    weights would be cast silently on loading; a counter that is text fails steps later). Places
    that only one of them has are the loader's to name (missing and unexpected keys)."""
    import torch

    name = where or "the state"
    if torch.is_tensor(saved):
        if fresh is not None and not torch.is_tensor(fresh):
            return f"{name} is a tensor, not of type {type(fresh).__name__}"
        if fresh is not None and saved.dtype != fresh.dtype:
            return f"{name} is {saved.dtype}, not {fresh.dtype}"
        finite = not (saved.is_floating_point() or saved.is_complex()) or \
            bool(torch.isfinite(saved).all())
        return None if finite else f"{name} holds NaN or infinite values"
    if isinstance(saved, float) and not math.isfinite(saved):
        return f"{name} is {saved}"
    if fresh is not None and not _same_kind(saved, fresh):
        return f"{name} is of type {type(saved).__name__}, not {type(fresh).__name__}"
    if isinstance(saved, dict):
        pairs = ((key, value, fresh.get(key) if isinstance(fresh, dict) else None)
                 for key, value in saved.items())
    elif isinstance(saved, (list, tuple)):
        pairs = ((i, value, fresh[i] if isinstance(fresh, (list, tuple)) and i < len(fresh)
                  else None) for i, value in enumerate(saved))
    else:
        return None
    for key, value, fresh_value in pairs:
        found = state_problem(value, fresh_value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _same_kind(saved: Any, fresh: Any) -> bool:
    """Values of one kind: an int for an int (not a bool), a number for a float, a mapping for a
    mapping, a list or tuple for either, a str for a str."""
    if isinstance(fresh, bool) or isinstance(saved, bool):
        return type(saved) is type(fresh)
    for kind, accepted in ((int, int), (float, (int, float)), (dict, dict), (str, str),
                           ((list, tuple), (list, tuple))):
        if isinstance(fresh, kind):
            return isinstance(saved, accepted)
    return True


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
    except (OSError, UnicodeDecodeError) as err:  # a folder, no permission, binary
        raise DataError(f"{path}: cannot read ({brief(err)})") from None


def read_json_object(path: str | Path) -> dict:
    """read_json of a file that must hold one JSON object (a stage's metrics, timing)."""
    found = read_json(path)
    if not isinstance(found, dict):
        raise DataError(f"{path}: not a JSON object")
    return found


def read_csv_rows(path: str | Path) -> list[list[str]]:
    """The rows of the CSV file `path`, its header first, every row with as many fields as it
    (pandas would pad a short row with blanks and read it as a row of missing scores); blank
    lines left out, as pandas skips them. Anything else is one DataError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # as pandas reads it, whatever the locale
        rows = [row for row in csv.reader(io.StringIO(text, newline=""))  # no blank lines
                if row and (len(row) > 1 or row[0].strip())]
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read as CSV ({brief(err)})") from None
    if not rows:
        raise DataError(f"{path}: empty (not even a header)")
    if any(len(row) != len(rows[0]) for row in rows[1:]):
        raise DataError(f"{path}: a row's fields do not match the header")
    return rows


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Rows as CSV; `columns` fixes the header (and its order), written even with no rows."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, float_format="%.6g")
