"""The report's numbers: the metric files read into rows (summary, sweeps) and markdown tables
of them, with the data set's words for what a class and an image are."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trilemma import paths, seed_spread
from trilemma.config import SWEEPS
from trilemma.report import inputs

SUMMARY_COLUMNS = {"family": "family", "fid_classifier": "FID ↓", "fid_over_floor": "× floor ↓",
                   "kid_classifier": "KID ↓", "is_classifier": "IS ↑",
                   "fid_inception": "Inception FID ↓", "is_inception": "Inception IS ↑",
                   "precision": "precision ↑", "recall": "recall ↑",
                   "min_class_fraction": "rarest digit ↑", "class_kl_uniform": "KL to uniform ↓",
                   "label_accuracy": "label accuracy ↑", "samples_per_second": "images/s ↑",
                   "verdict": "verdict", "train_seconds": "train s", "train_peak_memory_gib": "train peak GiB"}
# summary.csv also keeps the spreads (the README shows them as ±) and both peak memories (the
# README shows the GPU's, else the process's RAM)
CSV_COLUMNS = [*list(SUMMARY_COLUMNS)[:-1], "fid_classifier_std", "fid_classifier_ci_low",
               "fid_classifier_ci_high", "kid_classifier_std", "is_inception_std", "sample_device",
               "train_device", "train_peak_gpu_memory_gib", "train_peak_rss_gib", "n"]
METRIC_KEYS = ["fid_classifier", "fid_classifier_std", "fid_classifier_ci_low",
               "fid_classifier_ci_high", "kid_classifier", "kid_classifier_std", "is_classifier",
               "fid_inception", "is_inception", "is_inception_std", "precision", "recall",
               "min_class_fraction", "class_kl_uniform", "label_accuracy"]
# the columns that need the judge: n/a when the data has no labels to train one on
JUDGE_KEYS = ["fid_classifier", "fid_over_floor", "kid_classifier", "is_classifier", "precision",
              "recall", "min_class_fraction", "class_kl_uniform", "label_accuracy"]
SWEEP_SCORES = ["fid_classifier", "kid_classifier", "is_classifier", "precision", "recall",
                "min_class_fraction", "class_kl_uniform", "label_accuracy", "samples_per_second"]
SWEEP_COLUMNS = ["setting", "value", "main", "n", *SWEEP_SCORES]  # what the report uses


@dataclass(frozen=True)
class Data:
    """What the judge was trained to tell apart, and the words the README uses for it."""
    name: str  # "MNIST", or e.g. "image folder data/faces (64x64 RGB, 3 classes)"
    classes: list[str]  # class names in index order; empty without a judge
    judge: bool
    reason: str  # why there is no judge; "" when there is one

    @property
    def mnist(self) -> bool:
        return self.name == "MNIST"

    @property
    def unit(self) -> str:  # what one class is called in the text
        return "digit" if self.mnist else "class"

    @property
    def things(self) -> str:  # what the images are called in the text
        return "digits" if self.mnist else "images"

    @property
    def test_set(self) -> str:
        return "MNIST test set" if self.mnist else f"test images of {self.name}"

    @property
    def judge_reason(self) -> str:
        return self.reason.rstrip(".") or "no judge was trained"

    def class_name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)


def judge_files() -> tuple[dict, dict, list[dict]]:
    """The judge's metrics.json, timing.json and per-class rows (train-classifier's)."""
    folder = paths.CLASSIFIER_REPORTS
    clf = inputs.json_file(folder / "metrics.json", ["profile"])
    if clf.get("judge", True) is not False:  # the judge section shows these
        scores = ["test_accuracy", "epochs"]
        inputs.check(folder / "metrics.json", clf, keys=scores, numbers=scores)
    timing = inputs.json_file(folder / "timing.json", ["device"])
    per_class = inputs.csv_file(folder / "per_class.csv", ["digit", "n", "correct", "accuracy"],
                                numbers=["digit", "n", "correct", "accuracy"])
    return clf, timing, per_class.to_dict("records")


def floor_metrics() -> dict:
    """The real-data floor's scores (train-classifier's reports/eval/real/metrics.json)."""
    return _scores(paths.REAL_METRICS, "n")


def eval_metrics(name: str) -> dict:
    """The family's scores (its evaluate stage's metrics.json)."""
    return _scores(paths.eval_reports(name) / "metrics.json", "n_samples")


def _scores(path: Path, count: str) -> dict:
    """A metrics.json whose scores are scores (finite, a FID not negative, a share 0..1; the
    stages write null for what they did not compute): a hand-edited value stops the report
    before it writes anything, not part-way through its figures."""
    found = inputs.json_file(path, [count], numbers=[*METRIC_KEYS, count])
    for key in METRIC_KEYS:
        seed_spread.score(found.get(key), key, str(path))
    return found


def data_info(clf: dict, per_class: list[dict]) -> Data:
    """Read from the judge's metrics.json (older files name no data and no classes: MNIST, with
    the per-class table's digits as names)."""
    classes = clf.get("classes") or [str(r.get("class", r["digit"])) for r in per_class]
    return Data(name=clf.get("data", "MNIST"), classes=[str(c) for c in classes],
                judge=clf.get("judge", True) is not False, reason=clf.get("reason", ""))


def number(value) -> float | None:
    """None for what a metric file or a CSV leaves empty (null, NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def over_floor(fid, floor_fid) -> float | None:
    """FID as a multiple of the real-data floor's; None when either is missing."""
    fid, floor_fid = number(fid), number(floor_fid)
    return None if fid is None or not floor_fid else round(fid / floor_fid, 3)


def has_fid(rows: list[dict]) -> bool:
    return any(number(r.get("fid_classifier")) is not None for r in rows)


def summary_rows(floor: dict, scores: dict[str, dict],
                 verdicts: dict[str, str | None]) -> list[dict]:
    """One row per family plus the real-data floor: quality, coverage, speed, conditional
    accuracy, each straight from the metric files (`floor`: floor_metrics(), `scores`: each
    family's eval_metrics); `verdicts`: each family's convergence verdict (curves.verdicts)."""
    rows = [{"family": "real data (floor)", **{k: floor.get(k) for k in METRIC_KEYS},
             "fid_over_floor": over_floor(floor.get("fid_classifier"),
                                          floor.get("fid_classifier")), "n": floor["n"]}]
    for name, ev in scores.items():
        speed = inputs.json_file(paths.eval_reports(name) / "timing.json",
                                 ["samples_per_second", "device"], ["samples_per_second"])
        tr = inputs.json_file(paths.train_reports(name) / "timing.json",
                              ["train_seconds", "device"],
                              ["train_seconds", "peak_gpu_memory_gib", "peak_rss_gib"])
        rows.append({"family": name, **{k: ev.get(k) for k in METRIC_KEYS},
                     "fid_over_floor": over_floor(ev.get("fid_classifier"),
                                                  floor.get("fid_classifier")),
                     "samples_per_second": speed["samples_per_second"],
                     "verdict": verdicts.get(name), "sample_device": speed["device"], "train_seconds": tr["train_seconds"],
                     "train_device": tr["device"], "n": ev["n_samples"],
                     "train_peak_gpu_memory_gib": tr.get("peak_gpu_memory_gib"),
                     "train_peak_rss_gib": tr.get("peak_rss_gib")})
    return [{k: row.get(k) for k in CSV_COLUMNS} for row in rows]


def inception_notes(found: list[dict]) -> list[str]:
    """Why the Inception columns hold what they hold, each reason once, from the metric files
    `found` (the floor's and the families')."""
    return list(dict.fromkeys(str(m.get("inception_note", "")) for m in found))


def display(row: dict, judge: bool = True) -> dict:
    """A summary row for the README: FID and KID with their ± (bootstrap std; std over KID
    subsets), n/a where Inception did not run and, without a judge, in the judge's columns."""
    shown = dict(row)
    for key in ("fid_classifier", "kid_classifier"):
        if row.get(key) is not None and row.get(f"{key}_std") is not None:
            shown[key] = plus_minus(row[key], row[f"{key}_std"])
    for key in ("fid_inception", "is_inception"):
        if row.get(key) is None:
            shown[key] = "n/a"
    if not judge:
        shown.update(dict.fromkeys(JUDGE_KEYS, "n/a"))
    gpu, rss = row.get("train_peak_gpu_memory_gib"), row.get("train_peak_rss_gib")
    shown["train_peak_memory_gib"] = (f"{gpu:.2f} GPU" if gpu is not None else
                                      f"{rss:.2f} RAM" if rss is not None else None)
    return shown


def sweeps(families: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{knob: {family: rows of its <knob>_sweep.csv}} for the knobs each family honours."""
    by_knob: dict[str, dict[str, list[dict]]] = {}
    for knob in SWEEPS:
        for name in families:
            table = inputs.csv_file(paths.eval_reports(name) / f"{knob}_sweep.csv",
                                    SWEEP_COLUMNS, ["value", "n", *SWEEP_SCORES],
                                    keep_default_na=False, na_values=[""])
            if len(table):  # no judge: the scores all empty (NaN)
                table[SWEEP_SCORES] = table[SWEEP_SCORES].astype(float)  # 0 and 1 read as ints
                by_knob.setdefault(knob, {})[name] = table.to_dict("records")
    return by_knob


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):  # three or four significant digits, thousands separated
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.{digits}f}"
    return str(value)


def plus_minus(value: float, spread: float) -> str:
    """'251.6 ± 3.7': the spread to the value's decimals."""
    decimals = 0 if abs(value) >= 1000 else 1 if abs(value) >= 10 else 3
    return f"{value:,.{decimals}f} ± {spread:,.{decimals}f}"


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    head = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def summary_columns(data: Data) -> dict[str, str]:
    """SUMMARY_COLUMNS in the data's words."""
    return {**SUMMARY_COLUMNS, "min_class_fraction": f"rarest {data.unit} ↑"}


def class_columns(data: Data) -> dict[str, str]:
    """The index column, and the names beside it unless they are the indices (MNIST)."""
    if data.classes == [str(i) for i in range(len(data.classes))]:
        return {"digit": data.unit}
    return {"digit": "#", "class": data.unit}
