"""What a stage's report files give MLflow: its summary scores as metrics, its per-class tables
as table artifacts, and a digest that tells `sync` whether those files are in MLflow already.
Plain file reading: no MLflow here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from trilemma import paths
from trilemma.io import is_number, read_csv_rows, read_json_object

# per-class rows (class histogram, per-class accuracy): one table each, not ten metrics
TABLES = ("per_class.csv",)


def synced_stages(families: list[str], i2i: list[str] = (),
                  control: list[str] = ()) -> list[tuple[str, str | None]]:
    """(stage, family) of every stage that writes metric files, in pipeline order."""
    return ([("train-classifier", None)] + [("train", f) for f in families]
            + [("evaluate", f) for f in families] + [("train-i2i", f) for f in i2i]
            + [("evaluate-i2i", f) for f in i2i]
            + ([("train-referee", None)] if control else []) + [("control", f) for f in control])


def report_files(stage: str, family: str | None) -> dict[Path, str]:
    """The JSON metric files a stage writes under reports/, each with the prefix its metric names
    get in MLflow."""
    if stage == "train-classifier":
        folder = paths.CLASSIFIER_REPORTS
        return {folder / "metrics.json": "", folder / "timing.json": "",
                paths.REAL_METRICS: "floor_"}
    if stage == "train-referee":
        folder = paths.REFEREE_REPORTS
    else:
        folder = {"train": paths.train_reports, "evaluate": paths.eval_reports,
                  "train-i2i": paths.train_reports, "evaluate-i2i": paths.eval_reports,
                  "control": paths.control_reports}[stage](family)
    return {folder / "metrics.json": "", folder / "timing.json": ""}


def file_metrics(files: dict[Path, str]) -> dict[str, float]:
    """The top-level numbers of JSON metric files: the summary scores. Nested mappings (the class
    histogram, per-class values) are left to the tables, so that the scores lead in MLflow's
    chart view instead of ten histogram bins."""
    found: dict[str, Any] = {}
    for path, prefix in files.items():
        found.update({prefix + k: v for k, v in read_json_object(path).items()})
    return {k: float(v) for k, v in found.items() if is_number(v)}


Logged = tuple[dict[str, float], dict[str, dict[str, list]]]  # a stage's metrics and tables


def read_stages(families: list[str], i2i: list[str] = (),
                control: list[str] = ()) -> dict[tuple[str, str | None], Logged | Path]:
    """The metrics and tables `sync` logs for each stage, or for a stage that has not written
    all its metric files yet the first one missing; all read first, so that a broken file stops
    `sync` before it starts a run: a run cut short would stay open."""
    read: dict[tuple[str, str | None], Logged | Path] = {}
    for stage, family in synced_stages(families, i2i, control):
        missing = [path for path in report_files(stage, family) if not path.exists()]
        read[stage, family] = missing[0] if missing else \
            (stage_metrics(stage, family), tables(stage, family))
    return read


def stage_metrics(stage: str, family: str | None) -> dict[str, float]:
    """file_metrics of the stage's report files, and for `evaluate` the family's training time
    (from train's timing.json, when there), so that one evaluate run holds every score the
    comparison needs."""
    found = file_metrics(report_files(stage, family))
    if stage == "evaluate":
        timing = paths.train_reports(family) / "timing.json"
        if timing.is_file():
            seconds = read_json_object(timing).get("train_seconds")
            if is_number(seconds):
                found["train_seconds"] = float(seconds)
    return found


def tables(stage: str, family: str | None) -> dict[str, dict[str, list]]:
    """The stage's per-class CSV files as columns ({'per_class.json': {'digit': [...], ...}}),
    named as MLflow's table artifacts; values stay the CSV's text, numbers as numbers."""
    found = {}
    for path in _table_files(stage, family):
        header, *rows = read_csv_rows(path)
        if rows:
            found[path.with_suffix(".json").name] = {
                column: [_number(row[i]) for row in rows] for i, column in enumerate(header)}
    return found


def _table_files(stage: str, family: str | None) -> list[Path]:
    """The stage's per-class CSV files that are there (a folder in a file's place is one too:
    reading it names it)."""
    folder = next(iter(report_files(stage, family))).parent
    return [folder / name for name in TABLES if (folder / name).exists()]


def _number(text: str) -> Any:
    if "_" in text:  # int() and float() read "1_0" as 10: a cell with one is text
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def reports_digest(stage: str, family: str | None) -> str:
    """What `sync` compares to tell that a stage's reports are in MLflow: a digest of its metric
    files and its per-class tables."""
    digest = hashlib.sha256()
    for path in [*report_files(stage, family), *_table_files(stage, family)]:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
