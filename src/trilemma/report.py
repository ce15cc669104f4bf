"""reports/README.md, reports/summary.csv and reports/figures/ from the metric files alone."""

from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd
import torch

from trilemma import figures, paths
from trilemma.io import atomic_path, read_json, write_csv
from trilemma.tracking import git_commit


def summary_rows(families: list[str]) -> list[dict]:
    """One row per family plus the real-data floor: quality, diversity, speed."""
    floor = read_json(paths.REAL_METRICS)
    rows = [{"family": "real data (floor)", "fid_classifier": floor["fid_classifier"],
             "fid_over_floor": 1.0, "is_classifier": floor["is_classifier"],
             "min_class_fraction": None, "samples_per_second": None, "train_seconds": None}]
    for name in families:
        ev = read_json(paths.eval_reports(name) / "metrics.json")
        tr = read_json(paths.train_reports(name) / "metrics.json")
        rows.append({"family": name, "fid_classifier": ev["fid_classifier"],
                     "fid_over_floor": round(ev["fid_classifier"] / floor["fid_classifier"], 3),
                     "is_classifier": ev["is_classifier"],
                     "min_class_fraction": min(ev["class_histogram"].values()),
                     "samples_per_second": ev["samples_per_second"],
                     "train_seconds": tr["train_seconds"]})
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):  # about four significant digits, thousands separated
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    head = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def build(families: list[str], out: Path = paths.REPORTS) -> str:
    """Write the report files; return the README text."""
    rows = summary_rows(families)
    write_csv(out / "summary.csv", rows)
    clf = read_json(paths.CLASSIFIER_REPORTS / "metrics.json")
    per_digit = pd.read_csv(paths.CLASSIFIER_REPORTS / "per_class.csv").to_dict("records")

    histories = {f: pd.read_csv(paths.train_reports(f) / "loss.csv").to_dict("records")
                 for f in families}
    figures.save_figure(figures.loss_curves(histories), out / "figures" / "loss_curves.png")
    hists = {f: list(read_json(paths.eval_reports(f) / "metrics.json")["class_histogram"].values())
             for f in families}
    figures.save_figure(figures.class_histograms(hists), out / "figures" / "class_histograms.png")

    floor = read_json(paths.REAL_METRICS)
    grids = "\n".join(f"| {f} | ![{f} samples](samples/{f}.png) |" for f in families)
    text = f"""# trilemma report

Profile **{clf['profile']}** · device **{clf['device']}** · torch {torch.__version__} ·
Python {platform.python_version()} · git commit `{git_commit()}`.
Built by `trilemma report` from the metric files under `reports/`; every number below comes from
those files.

## Quality, diversity, speed

{markdown_table(rows, {"family": "family", "fid_classifier": "FID (classifier) ↓",
                       "fid_over_floor": "× floor ↓", "is_classifier": "IS (classifier) ↑",
                       "min_class_fraction": "rarest digit share ↑",
                       "samples_per_second": "images/s ↑", "train_seconds": "train s"})}

- **FID (classifier)**: Fréchet distance between the judge classifier's penultimate features of
  {floor['n']} samples and of the MNIST test set. The floor row scores {floor['n']} real training
  images the same way: no generator can be expected to go below it.
- **IS (classifier)**: exp E[KL(p(y|x) ‖ p(y))] with the judge's softmax; 10 is the maximum.
- **rarest digit share**: fraction of samples the judge assigns to the least frequent digit
  (0.1 means every digit is equally covered; near 0 means a missing mode).

## Samples

| family | first samples (fixed seed) |
|---|---|
{grids}

## Mode coverage

![class histograms](figures/class_histograms.png)

## Training

![loss curves](figures/loss_curves.png)

## The judge: classifier accuracy per digit (test set)

Test accuracy **{clf['test_accuracy']:.4f}** after {clf['epochs']} epochs.

{markdown_table(per_digit, {"digit": "digit", "n": "n", "correct": "correct",
                            "accuracy": "accuracy"})}

![confusion matrix](classifier/confusion.png)
"""
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(text)
    return text
