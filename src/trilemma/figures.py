"""Figures shared by stages: image grids, loss curves, latent scatter, confusion matrix, histograms."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from trilemma.io import atomic_path

if TYPE_CHECKING:
    import matplotlib.pyplot as plt


@functools.cache
def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, never a window), imported on first use:
    importing it costs a stage about a second of start-up that most never need."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None) -> None:
    """uint8 images (n,C,S,S) as one PNG grid (grey or RGB), white lines between images."""
    from torchvision.utils import make_grid  # torchvision takes seconds to import

    images = torch.as_tensor(images)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=255)  # (3,H,W) uint8
    pixels = grid[0].numpy() if images.shape[1] == 1 else grid.permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def message_figure(text: str) -> plt.Figure:
    """A figure that only says something: in place of one that cannot be drawn, and why."""
    import textwrap

    fig, ax = pyplot().subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, textwrap.fill(text, 70), ha="center", va="center", fontsize=9, wrap=True)
    ax.set_axis_off()
    return fig


def latent_scatter(z: np.ndarray, labels: np.ndarray) -> plt.Figure:
    """2-D latent means (n,2) coloured by class (labels -1: no classes, one colour)."""
    fig, ax = pyplot().subplots(figsize=(5.5, 5))
    k = int(labels.max()) + 1
    if k > 0:
        points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10" if k <= 10 else "viridis",
                            s=3, vmin=-0.5, vmax=k - 0.5)
        fig.colorbar(points, ax=ax, ticks=range(k) if k <= 20 else None, label="class")
    else:
        ax.scatter(z[:, 0], z[:, 1], s=3)
    ax.set(xlabel="z[0]", ylabel="z[1]", title="VAE latent means of test images")
    return fig


def confusion_figure(matrix: np.ndarray, labels: list[str] | None = None) -> plt.Figure:
    """(K,K) counts, rows = true class, columns = predicted; ticks show `labels` (class names)
    when given, else the class indices."""
    k = len(matrix)
    size = max(5.0, 0.45 * k)  # room for a count in every cell as K grows
    fig, ax = pyplot().subplots(figsize=(size * 1.1, size))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ticks = list(range(k))
    names = labels if labels is not None and len(labels) == k else [str(i) for i in ticks]
    ax.set_xticks(ticks, names, rotation=_rotation(names))
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="true", title="classifier confusion matrix (test set)")
    return fig


def _rotation(names: list[str]) -> int:
    """Tick labels stand upright once class names would run into each other."""
    return 90 if sum(len(n) + 1 for n in names) > 40 else 0


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
    ax.set_xticks(range(k), names, rotation=_rotation(names))
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


def _image_row(ax_row, images: torch.Tensor, label: str) -> None:
    """One row of uint8 images (n,C,S,S), labelled at the left."""
    for ax, image in zip(ax_row, images):
        ax.imshow(image[0].numpy() if len(image) == 1 else image.permute(1, 2, 0).numpy(),
                  cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
    ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)


def denoising_figure(frames: list[tuple[int, torch.Tensor]]) -> plt.Figure:
    """The reverse process: one column per kept step (t, uint8 (n,1,28,28)), x_T left, x_0 right;
    one row per sample."""
    n = len(frames[0][1])
    fig, axes = pyplot().subplots(n, len(frames), figsize=(1.0 * len(frames), 1.0 * n), squeeze=False)
    for col, (t, images) in enumerate(frames):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(images[row, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, col].set_title("x_0" if t < 0 else f"t={t}", fontsize=8)
    fig.suptitle("reverse process, noise to digit (DDIM, EMA weights)", fontsize=9)
    fig.tight_layout()
    return fig


def reconstruction_figure(real: torch.Tensor, rows: list[tuple[int, torch.Tensor, torch.Tensor, float]],
                          timesteps: int) -> plt.Figure:
    """img2img: real digits (n,1,28,28), then for each (t, noised, denoised, mse) the digits
    noised to step t and the model's reconstruction from there."""
    n = len(real)
    fig, axes = pyplot().subplots(1 + 2 * len(rows), n, figsize=(0.9 * n + 1.6, 0.9 * (1 + 2 * len(rows))),
                             squeeze=False)
    _image_row(axes[0], real, "real")
    for i, (t, noisy, recon, mse) in enumerate(rows):
        _image_row(axes[1 + 2 * i], noisy, f"noised to\nt={t}/{timesteps}")
        _image_row(axes[2 + 2 * i], recon, f"denoised\nMSE {mse:.3f}")
    fig.suptitle("reconstruction: test digits noised to step t, then denoised", fontsize=9)
    fig.tight_layout()
    return fig
