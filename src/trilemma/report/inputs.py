"""Reading the stage outputs the report is built from, one way for every file: a file that is
missing, unreadable, empty or without the keys or columns the report uses stops the report with
one line naming it; a file that may be absent (`optional`) reads as None then, but not when it is
there and broken. The report reads everything before it writes anything, so such an error leaves
the last report whole."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from trilemma.errors import DataError, brief
from trilemma.io import is_number, read_csv_rows, read_json_object

if TYPE_CHECKING:
    import pandas as pd


def require(path: Path | str, found: Iterable[str], wanted: Iterable[str],
            what: str = "key") -> None:
    """DataError naming `path` and the first of `wanted` that `found` lacks."""
    found = set(found)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{path}: no {what} {missing[0]!r} (rerun the stage that writes it)")


def check(path: Path, found, keys: Iterable[str] = (), numbers: Iterable[str] = (),
          part: str = "") -> dict:
    """`found`, read from `path` (from its `part`, e.g. "guidance row", when not the whole file):
    a mapping with every one of `keys`, where each of `numbers` it holds is a number or null."""
    where = f"{path}: {part}" if part else str(path)
    if not isinstance(found, dict):
        raise DataError(f"{where}: not a JSON object")
    require(where, found, keys)
    for key in numbers:
        value = found.get(key)
        if value is not None and not is_number(value):
            raise DataError(f"{where}: {key!r} is {value!r}, not a number")
    return found


def json_file(path: Path, keys: Iterable[str] = (), numbers: Iterable[str] = (),
              optional: bool = False) -> dict | None:
    """The JSON object in `path`, with every one of `keys`; each of `numbers` that it holds is a
    number or null. None when `optional` and there is no such file."""
    path = Path(path)
    if optional and not path.exists():
        return None
    if path.is_file() and not path.stat().st_size:
        raise DataError(f"{path}: empty")
    return check(path, read_json_object(path), keys, numbers)  # names a missing or bad file


def csv_file(path: Path, columns: Iterable[str] = (), numbers: Iterable[str] = (),
             optional: bool = False, **read) -> pd.DataFrame | None:
    """The table in `path` (a header at least: the stages write one even without rows), with
    every one of `columns`; each of `numbers` that it has holds numbers (or blanks). `read` goes
    to pandas.read_csv. None when `optional` and there is no such file."""
    import pandas as pd

    path = Path(path)
    if optional and not path.exists():
        return None
    text = io.StringIO()  # pandas infers the types from text
    csv.writer(text, lineterminator="\n").writerows(read_csv_rows(path))  # names a bad file
    text.seek(0)
    try:
        table = pd.read_csv(text, **read)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read as CSV ({brief(err)})") from None
    require(path, table.columns, columns, "column")
    for column in numbers:
        if column in table:
            values = pd.to_numeric(table[column], errors="coerce")
            bad = table[column][values.isna() & table[column].notna()]
            if len(bad):
                raise DataError(f"{path}: column {column!r} holds {bad.iloc[0]!r}, "
                                f"not a number")
            table[column] = values
    return table
