"""The report's figures: loss curves, class histograms, sweeps, the speed corner, the trilemma
and the learning curves, drawn to reports/<profile>/figures/ from the metric files' rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from trilemma import paths
from trilemma.config import SWEEPS
from trilemma.figures import pyplot, save_figure, tick_rotation
from trilemma.io import remove
from trilemma.report import inputs
from trilemma.report.curves import FIGURE as LEARNING_CURVES
from trilemma.report.tables import Data, has_fid, number
from trilemma.report.prose import render

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


def loss_histories(families: list[str]) -> dict[str, list[dict]]:
    """Each family's finer loss trace (its train stage's loss_steps.csv) as rows."""
    return {f: inputs.csv_file(paths.train_reports(f) / "loss_steps.csv", ["epoch"], ["epoch"])
            .to_dict("records") for f in families}


def histograms(scores: dict[str, dict], classes: list[str]) -> dict[str, list[float]]:
    """Each family's class histogram (the share of its samples the judge puts in each class) in
    class order, from its metrics (`scores`: tables.eval_metrics by family); families without
    one (no judge) are left out."""
    hists = {}
    for f, metrics in scores.items():
        histogram = metrics.get("class_histogram") or {}
        inputs.check(paths.eval_reports(f) / "metrics.json", histogram, numbers=histogram,
                     part="class_histogram")
        if histogram:
            hists[f] = in_class_order(histogram, classes)
    return hists


def texts(rows: list[dict], hists: dict[str, list[float]], data: Data) -> dict[str, str]:
    """The README text that stands for the histogram and trilemma figures (the image, or why
    there is none)."""
    fid_key = _fid_key(rows)
    return {"histograms": ("![class histograms](figures/class_histograms.png)" if hists
                           else render("histograms_none", reason=data.judge_reason)),
            "trilemma": (render("trilemma_none") if fid_key is None else
                         render("trilemma_inception" if fid_key == "fid_inception"
                                else "trilemma_judge"))}


def draw(rows: list[dict], floor: dict, data: Data, by_knob: dict[str, dict[str, list[dict]]],
         probed: dict[str, pd.DataFrame], histories: dict[str, list[dict]],
         hists: dict[str, list[float]], folder: Path) -> None:
    """Draw the report-level figures that the metric files allow into `folder` (the report's
    figures/); remove those they do not allow. `probed`: the learning curves
    (curves.read_curves), `histories`: loss_histories, `hists`: histograms."""
    save_figure(loss_curves(histories), folder / "loss_curves.png")
    if hists:
        save_figure(class_histograms(hists, data.classes, data.unit),
                    folder / "class_histograms.png")
    else:
        remove(folder / "class_histograms.png")
    for knob in SWEEPS:
        by_family = by_knob.get(knob, {})
        all_rows = [r for family_rows in by_family.values() for r in family_rows]
        if not has_fid(all_rows):
            remove(folder / f"sweep_{knob}.png")
            if knob == "steps":
                remove(folder / "speed_corner.png")
            continue
        save_figure(sweep_curves(knob, by_family, len(data.classes), data.unit),
                    folder / f"sweep_{knob}.png")
        if knob == "steps":
            others = {r["family"]: r for r in rows[1:] if r["family"] not in by_family}
            save_figure(speed_corner(by_family, others), folder / "speed_corner.png")
    fid_key = _fid_key(rows)
    if fid_key is None:
        remove(folder / "trilemma.png")
    else:
        save_figure(trilemma(rows[1:], floor, fid_key), folder / "trilemma.png")
    if probed:
        save_figure(curves_figure(probed, floor.get("fid_classifier")), folder / LEARNING_CURVES)
    else:
        remove(folder / LEARNING_CURVES)


def _fid_key(rows: list[dict]) -> str | None:
    """The trilemma figure's FID: the judge's if any family has one, else Inception's, else none."""
    return next((k for k in ("fid_classifier", "fid_inception")
                 if any(number(r.get(k)) is not None for r in rows[1:])), None)


def in_class_order(histogram: dict[str, float], classes: list[str]) -> list[float]:
    """A class_histogram's fractions in class-index order: metric files sort their keys as
    strings, so "10" comes before "2" and names come alphabetically."""
    if all(key in classes for key in histogram):
        return [histogram[c] for c in classes if c in histogram]
    if all(key.isdigit() for key in histogram):
        return [histogram[key] for key in sorted(histogram, key=int)]
    return list(histogram.values())


def loss_curves(histories: dict[str, list[dict]], columns: int = 3) -> plt.Figure:
    """One panel per family: every logged loss against the (fractional) epoch."""
    rows_n = -(-len(histories) // columns)
    fig, axes = pyplot().subplots(rows_n, min(columns, len(histories)), squeeze=False,
                             figsize=(4.5 * min(columns, len(histories)), 3.2 * rows_n))
    for ax in axes.flat[len(histories):]:
        ax.set_visible(False)
    for ax, (name, rows) in zip(axes.flat, histories.items()):
        epochs = [r["epoch"] for r in rows]
        for key in rows[0] if rows else []:  # a run too short to log leaves an empty panel
            if key not in ("epoch", "step", "seconds"):
                ax.plot(epochs, [r[key] for r in rows], marker="o", ms=2, label=key)
        ax.set(title=name, xlabel="epoch")
        if rows:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_histograms(hists: dict[str, list[float]], labels: list[str] | None = None,
                     unit: str = "digit") -> plt.Figure:
    """Fraction of samples the classifier assigns to each of the K classes, per family
    (uniform = 1/K); ticks show `labels` (class names) when given."""
    k = max(len(fractions) for fractions in hists.values())
    fig, ax = pyplot().subplots(figsize=(max(7.0, 0.6 * k), 3.4))
    width = 0.8 / len(hists)
    for i, (name, fractions) in enumerate(hists.items()):
        ax.bar(np.arange(len(fractions)) + (i - (len(hists) - 1) / 2) * width, fractions, width,
               label=name)
    ax.axhline(1 / k, color="gray", ls="--", lw=1, label="uniform")
    names = labels if labels is not None and len(labels) == k else [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=tick_rotation(names))
    ax.set(xlabel=unit, ylabel="fraction of samples",
           title="class histogram of samples (mode coverage)")
    ax.legend(fontsize=8)
    return fig


def sweep_curves(knob: str, sweeps: dict[str, list[dict]], n_classes: int = 10,
                 unit: str = "digit") -> plt.Figure:
    """FID, rarest-class share and (for conditional families) label accuracy against one
    sampling knob, a line per family: what the knob buys in quality, mode coverage and control.
    Rows as in <knob>_sweep.csv, in the order the table gives (the knob's natural order)."""
    labels: dict[float, str] = {}
    for rows in sweeps.values():
        for r in rows:
            labels.setdefault(r["value"], str(r["setting"]))
    values = sorted(labels, reverse=knob == "truncation")  # loose to tight; few to many
    position = {v: i for i, v in enumerate(values)}
    accuracy = any(not _missing(r["label_accuracy"]) for rows in sweeps.values() for r in rows)
    panels = 3 if accuracy else 2
    fig, axes = pyplot().subplots(1, panels, figsize=(5 * panels, 3.6))
    for name, rows in sweeps.items():
        xs = [position[r["value"]] for r in rows]
        axes[0].plot(xs, [r["fid_classifier"] for r in rows], marker="o", label=name)
        axes[1].plot(xs, [r["min_class_fraction"] for r in rows], marker="o", label=name)
        if accuracy and not _missing(rows[0]["label_accuracy"]):
            axes[2].plot(xs, [r["label_accuracy"] for r in rows], marker="o", label=name)
    for ax in axes:
        ax.set_xticks(range(len(values)), [labels[v] for v in values],
                      rotation=30 if knob == "steps" else 0)
        ax.set_xlabel(knob)
    axes[0].set(ylabel="FID (classifier), log scale", yscale="log", title=f"quality vs {knob}")
    axes[1].axhline(1 / n_classes, color="gray", ls="--", lw=1, label="uniform")
    axes[1].set(ylabel=f"rarest {unit} share", title=f"mode coverage vs {knob}")
    axes[1].legend(fontsize=8)
    if accuracy:
        axes[2].set(ylabel="label accuracy", title=f"conditioning vs {knob}", ylim=(0, 1.02))
    fig.tight_layout()
    return fig


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def speed_corner(steps: dict[str, list[dict]], others: dict[str, dict]) -> plt.Figure:
    """FID against sampling speed: a line per diffusion family through its step counts (rows of
    steps_sweep.csv), and one point per other family (rows with fid_classifier and
    samples_per_second; those without a FID are left out). The fast-and-good corner is bottom
    right."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    for name, rows in steps.items():
        xs, ys = [r["samples_per_second"] for r in rows], [r["fid_classifier"] for r in rows]
        ax.plot(xs, ys, marker="o", label=name)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(str(r["setting"]), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    for name, row in others.items():
        if not _missing(row.get("fid_classifier")):
            ax.scatter(row["samples_per_second"], row["fid_classifier"], marker="s", label=name)
    ax.set(xscale="log", yscale="log", xlabel="images per second (log)",
           ylabel="FID (classifier, log)", title="the speed corner: quality vs sampling speed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(curves: dict[str, pd.DataFrame], floor_fid: float | None) -> plt.Figure:
    """Probe FID against training seconds, log-log: a line per family, the real-data floor as a
    dashed line (its FID at the main table's n: a lower bound, not a target at the probes' n)."""
    fig, ax = pyplot().subplots(figsize=(8, 5))
    colours = pyplot().get_cmap("tab10")
    for i, (name, curve) in enumerate(curves.items()):
        keep = curve["train_seconds"] > 0
        ax.plot(curve["train_seconds"][keep], curve["fid_classifier"][keep], marker="o", ms=3,
                color=colours(i % 10), label=name)
    if floor_fid:
        ax.axhline(floor_fid, color="grey", linestyle="--", linewidth=1,
                   label=f"real data (floor), FID {floor_fid:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="training seconds (log; probes excluded)",
           ylabel="probe FID (classifier, log)",
           title="quality against training cost: the judge's probes during training")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


FID_LABELS = {"fid_classifier": "FID (classifier, log; better up)",
              "fid_inception": "Inception FID (log; better up)"}


def trilemma(rows: list[dict], floor: dict, fid_key: str = "fid_classifier") -> plt.Figure:
    """The three corners at once: quality (FID under `fid_key`, log, better up) against sampling
    speed (images/s, log, faster right), marker area = coverage (k-NN recall). One point per
    family (rows with family, the FID, samples_per_second, recall); rows without that FID are
    left out, and without a recall (no judge) every marker has one size. The real-data floor is
    a dashed line at the floor's FID, labelled with it, when the floor has that FID. Labels are
    moved apart so that none overlaps another."""
    fig, ax = pyplot().subplots(figsize=(8, 5.5))
    colours = pyplot().get_cmap("tab10")
    has_recall = any(not _missing(r.get("recall")) for r in rows)
    labels = []
    for i, row in enumerate(rows):
        if _missing(row.get(fid_key)) or _missing(row.get("samples_per_second")):
            continue
        recall = row.get("recall") if not _missing(row.get("recall")) else None
        point = (row["samples_per_second"], row[fid_key])
        size = 30 + 900 * recall if recall is not None else 120  # one size without a recall
        ax.scatter(*point, s=size, color=colours(i % 10), alpha=0.75, edgecolors="black",
                   linewidths=0.6, zorder=3)
        note = (f"\nrecall {recall:.2f}" if recall is not None
                else "\nrecall n/a" if has_recall else "")  # the title says why there is none
        labels.append((f"{row['family']}{note}", point, size))
    floor_fid = None if _missing(floor.get(fid_key)) else float(floor[fid_key])
    if floor_fid is not None:
        ax.axhline(floor_fid, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"real data (floor): FID {floor_fid:.3g}", (0.01, floor_fid),
                    xycoords=("axes fraction", "data"), fontsize=8, color="grey", xytext=(0, 3),
                    textcoords="offset points")
    if has_recall:
        for recall in (0.25, 0.5, 1.0):  # a size key
            ax.scatter([], [], s=30 + 900 * recall, color="white", edgecolors="black",
                       label=f"recall {recall:g}")
        ax.legend(loc="lower left", fontsize=8, labelspacing=1.6, borderpad=1.0, title="coverage")
    corners = ("quality, speed, coverage (marker area = recall)" if has_recall
               else "quality and speed (coverage n/a: recall needs the judge)")
    ax.set(xscale="log", yscale="log", xlabel="sampling speed: images per second (log) →",
           ylabel=f"quality: {FID_LABELS[fid_key]}",
           title=f"the generative trilemma: {corners}")
    ax.invert_yaxis()  # lower FID is better: the good corner is top right
    ax.margins(x=0.25, y=0.15)
    fig.tight_layout()
    _place_labels(fig, ax, labels)
    return fig


def _place_labels(fig: plt.Figure, ax: plt.Axes, labels: list[tuple[str, tuple, float]],
                  fontsize: int = 8) -> None:
    """Annotate each (text, data point, marker area) beside its marker, moving a label up or
    down (then to the left) in small steps until its box overlaps no label placed before it.
    Deterministic: boxes are estimated from the text's length, the top labels placed first."""
    fig.canvas.draw()  # final limits and layout: data -> display (pixels) is now fixed
    to_pixels, dpi = ax.transData.transform, fig.dpi
    char_w, line_h = 0.6 * fontsize * dpi / 72, 1.25 * fontsize * dpi / 72  # pixels
    placed: list[tuple[float, float, float, float]] = []
    order = sorted(labels, key=lambda lab: -to_pixels(lab[1])[1])  # top of the figure first

    def free(box: tuple[float, float, float, float]) -> bool:
        return all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3]
                   for b in placed)

    for text, point, area in order:
        px, py = to_pixels(point)
        radius = (area ** 0.5) / 2 * dpi / 72  # the marker's radius in pixels
        lines = text.split("\n")
        w, h = char_w * max(map(len, lines)) + 2, line_h * len(lines)
        for dy, side in [(k * sign * line_h / 2, side) for side in (1, -1) for k in range(12)
                         for sign in ((1,) if k == 0 else (1, -1))]:
            x0 = px + radius + 3 if side == 1 else px - radius - 3 - w
            box = (x0, py - h / 2 + dy, x0 + w, py + h / 2 + dy)
            if free(box):
                break
        placed.append(box)
        offset = ((box[0] - px) * 72 / dpi, (box[1] + h / 2 - py) * 72 / dpi)  # points
        moved = abs(box[1] + h / 2 - py) > 1
        ax.annotate(text, point, xytext=offset, textcoords="offset points", fontsize=fontsize,
                    va="center", ha="left",
                    arrowprops=dict(arrowstyle="-", color="grey", lw=0.5) if moved else None)
