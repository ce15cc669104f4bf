"""Image primitives and the figures stages and families draw: image grids and rows, latent
scatter, confusion matrix, denoising and reconstruction. The report's own plots live in
trilemma.report.plots."""

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


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None,
              padding: int = 2) -> None:
    """uint8 images (n,C,H,W) as one PNG grid (grey or RGB), `nrow` to a row, white lines between
    images: torchvision's make_grid layout, drawn in numpy because importing torchvision costs a
    stage about 1.5 s (it pulls in torch._dynamo)."""
    images = uint8_array(images)
    n = len(images)
    cols = min(nrow or max(1, int(np.ceil(np.sqrt(n)))), n)
    grid = grid_array(images, cols, 0 if n == 1 else padding)  # one image alone, as make_grid
    with atomic_path(path) as tmp:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(tmp, format="PNG")


def uint8_array(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 images as a numpy array on the CPU, from a tensor on any device; TypeError for any
    other dtype, which would otherwise wrap around silently when written into the grid."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0-255), got {images.dtype}")
    return images


def grid_array(images: np.ndarray, cols: int, padding: int = 2) -> np.ndarray:
    """uint8 images (n,C,H,W) laid out `cols` to a row with white lines of `padding` pixels
    around each, empty places white: (rows*(H+p)+p, cols*(W+p)+p, C)."""
    n, channels, height, width = images.shape
    rows = max(1, -(-n // cols))
    # each image with the white line above and left of it
    tiles = np.full((rows * cols, height + padding, width + padding, channels), 255, np.uint8)
    tiles[:n, padding:, padding:] = images.transpose(0, 2, 3, 1)
    grid = tiles.reshape(rows, cols, height + padding, width + padding, channels)
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * (height + padding),
                                                 cols * (width + padding), channels)
    return np.pad(grid, ((0, padding), (0, padding), (0, 0)), constant_values=255)  # bottom, right


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
    ax.set_xticks(ticks, names, rotation=tick_rotation(names))
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="true", title="classifier confusion matrix (test set)")
    return fig


def tick_rotation(names: list[str]) -> int:
    """Tick labels stand upright once class names would run into each other."""
    return 90 if sum(len(n) + 1 for n in names) > 40 else 0


def _image_row(ax_row, images: torch.Tensor, label: str) -> None:
    """One row of uint8 images (n,C,S,S), labelled at the left."""
    for ax, image in zip(ax_row, images):
        ax.imshow(image[0].numpy() if len(image) == 1 else image.permute(1, 2, 0).numpy(),
                  cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
    ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)


def rows_figure(rows: list[tuple[str, torch.Tensor]]) -> plt.Figure:
    """Rows of uint8 images (m,C,S,S), each labelled at the left (e.g. "3 before", "3 after").
    A row is one picture of its images with white lines between them: an axes per image made
    a control stage's 200-image figure take 5.6 s to draw and save."""
    cols = max(len(images) for _, images in rows)
    fig, axes = pyplot().subplots(len(rows), 1, figsize=(0.7 * cols + 0.8, 0.7 * len(rows)),
                                  squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        strip = grid_array(uint8_array(images), cols)
        ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(hspace=0.05)
    return fig


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
