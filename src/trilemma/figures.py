"""Figures shared by stages: image grids, loss curves, latent scatter, confusion matrix, histograms."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trilemma.io import atomic_path  # noqa: E402


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None) -> None:
    """uint8 images (n,[1,]28,28) as one PNG grid, white lines between digits."""
    from torchvision.utils import make_grid  # torchvision takes seconds to import

    images = torch.as_tensor(images).reshape(-1, 1, 28, 28)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=255)  # (3,H,W) uint8
    with atomic_path(path) as tmp:
        Image.fromarray(grid[0].numpy()).save(tmp, format="PNG")


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def latent_scatter(z: np.ndarray, labels: np.ndarray) -> plt.Figure:
    """2-D latent means (n,2) coloured by digit."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    ax.set(xlabel="z[0]", ylabel="z[1]", title="VAE latent means of test digits")
    return fig


def confusion_figure(matrix: np.ndarray) -> plt.Figure:
    """(10,10) counts, rows = true digit, columns = predicted."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for i in range(10):
        for j in range(10):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title="classifier confusion matrix (test set)")
    return fig


def loss_curves(histories: dict[str, list[dict]], columns: int = 3) -> plt.Figure:
    """One panel per family: every logged loss against the (fractional) epoch."""
    rows_n = -(-len(histories) // columns)
    fig, axes = plt.subplots(rows_n, min(columns, len(histories)), squeeze=False,
                             figsize=(4.5 * min(columns, len(histories)), 3.2 * rows_n))
    for ax in axes.flat[len(histories):]:
        ax.set_visible(False)
    for ax, (name, rows) in zip(axes.flat, histories.items()):
        epochs = [r["epoch"] for r in rows]
        for key in rows[0]:
            if key not in ("epoch", "step", "seconds"):
                ax.plot(epochs, [r[key] for r in rows], marker="o", ms=2, label=key)
        ax.set(title=name, xlabel="epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def class_histograms(hists: dict[str, list[float]]) -> plt.Figure:
    """Fraction of samples the classifier assigns to each digit, per family (uniform = 0.1)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(hists)
    for i, (name, fractions) in enumerate(hists.items()):
        ax.bar(np.arange(10) + (i - (len(hists) - 1) / 2) * width, fractions, width, label=name)
    ax.axhline(0.1, color="gray", ls="--", lw=1, label="uniform")
    ax.set(xticks=range(10), xlabel="digit", ylabel="fraction of samples",
           title="class histogram of samples (mode coverage)")
    ax.legend(fontsize=8)
    return fig


def value_label(value: float) -> str:
    """A sweep value as shown on axes and in tables: inf (no truncation) reads 'none'."""
    return "none" if np.isinf(value) else f"{value:g}"


def sweep_curves(knob: str, sweeps: dict[str, list[dict]]) -> plt.Figure:
    """FID and rarest-digit share against one sampling knob, a line per family: the trade-off
    between quality and mode coverage that the knob buys. Rows as in sweep.csv."""
    values = sorted({r["value"] for rows in sweeps.values() for r in rows}, reverse=True)
    position = {v: i for i, v in enumerate(values)}
    fig, (ax_fid, ax_cov) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in sweeps.items():
        xs = [position[r["value"]] for r in rows]
        ax_fid.plot(xs, [r["fid_classifier"] for r in rows], marker="o", label=name)
        ax_cov.plot(xs, [r["min_class_fraction"] for r in rows], marker="o", label=name)
    for ax in (ax_fid, ax_cov):
        ax.set_xticks(range(len(values)), [value_label(v) for v in values])
        ax.set_xlabel(knob)
    ax_fid.set(ylabel="FID (classifier), log scale", yscale="log", title=f"quality vs {knob}")
    ax_cov.axhline(0.1, color="gray", ls="--", lw=1, label="uniform")
    ax_cov.set(ylabel="rarest digit share", title=f"mode coverage vs {knob}")
    ax_cov.legend(fontsize=8)
    fig.tight_layout()
    return fig
