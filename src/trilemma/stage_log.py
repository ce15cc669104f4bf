"""The stage log every `trilemma` command appends a line to (pipeline/common.py writes it): which
stage ran, for which family and profile, on what device, how long. Read here for the report's
pipeline time and for `python -m benchmarks.stages`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

Runs = dict[tuple[str, str | None], dict]  # (stage, family) -> its log entry


def stage_name(stage: str, family: str | None) -> str:
    """DVC's name of a stage: `train@vae` for a family's, `report` for one of its own."""
    return f"{stage}@{family}" if family else stage


def read(path: Path) -> list[dict]:
    """The log's entries; a line that is not JSON (a write cut short) is skipped."""
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def latest_runs(entries: list[dict]) -> dict[str, Runs]:
    """profile -> (stage, family) -> the latest successful entry: after a `dvc repro` (or
    `dvc repro -f`) that is the pipeline as it last ran."""
    latest: dict[str, Runs] = {}
    for entry in entries:
        if entry.get("status") == "ok" and entry.get("profile"):
            key = (entry["stage"], entry.get("family"))
            kept = latest.setdefault(entry["profile"], {}).get(key)
            if kept is None or entry["started"] >= kept["started"]:
                latest[entry["profile"]][key] = entry
    return latest


def before_report(families: list[str], i2i: list[str],
                  control: list[str]) -> set[tuple[str, str | None]]:
    """The (stage, family) runs dvc.yaml makes before the report for these params lists
    (tests/test_stage_deps.py checks the commands against dvc.yaml)."""
    return {("download", None), ("train-classifier", None), ("train-referee", None),
            *((s, f) for s in ("train", "sample", "evaluate") for f in families),
            *((s, f) for s in ("train-i2i", "evaluate-i2i") for f in i2i),
            *(("control", f) for f in control)}


def end(entry: dict) -> datetime:
    return datetime.fromisoformat(entry["started"]) + timedelta(seconds=entry["wall_seconds"])


@dataclass(frozen=True)
class Totals:
    stages: int
    wall_seconds: float      # the stages' wall times added up (each from its process start)
    startup_seconds: float   # of which interpreter and imports
    span_seconds: float      # first start to last end: DVC's own work between stages included
    first_start: datetime
    devices: tuple[str, ...]


def totals(runs: Runs) -> Totals:
    every = list(runs.values())
    first = min(datetime.fromisoformat(e["started"]) for e in every)
    return Totals(stages=len(every),
                  wall_seconds=sum(e["wall_seconds"] for e in every),
                  startup_seconds=sum(e["startup_seconds"] for e in every),
                  span_seconds=(max(end(e) for e in every) - first).total_seconds(),
                  first_start=first,
                  # None: a command that never imported torch used no device
                  devices=tuple(sorted({e["device"] for e in every if e.get("device")}))
                  or ("no device",))
