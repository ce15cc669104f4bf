"""Image primitives and the figures stages and families draw: image grids and tables, latent
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


def image_table(rows: list[tuple[str, torch.Tensor | np.ndarray]],
                titles: list[str] | None = None, title: str | None = None) -> plt.Figure:
    """Rows of uint8 images (m,C,S,S), each labelled at the left ("" for none), `titles` above
    the columns: the whole table is one picture with white lines between the images, and empty
    places (short rows) white. An axes per image made a 200-image figure take 5.6 s to draw and
    save; this takes well under a second."""
    arrays = [uint8_array(images) for _, images in rows]
    cols = max(len(a) for a in arrays)
    channels, height, width = arrays[0].shape[1:]
    places = np.full((len(rows) * cols, channels, height, width), 255, np.uint8)
    for i, a in enumerate(arrays):
        places[i * cols:i * cols + len(a)] = a
    padding = 2
    table = grid_array(places, cols, padding)
    cell = 0.7  # inches per image
    fig, ax = pyplot().subplots(figsize=(cell * cols + 0.8, cell * len(rows) + 0.3 + 0.3 * bool(title)))
    ax.imshow(table[..., 0] if channels == 1 else table, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    # an image's centre in the table, in pixels: rows step by its height, columns by its width
    row_centres = padding + np.arange(len(rows)) * (height + padding) + (height - 1) / 2
    col_centres = padding + np.arange(cols) * (width + padding) + (width - 1) / 2
    ax.set_yticks(row_centres, [label for label, _ in rows], fontsize=8)
    ax.set_xticks(col_centres if titles else [], titles or [], fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def denoising_figure(frames: list[tuple[int, torch.Tensor]]) -> plt.Figure:
    """The reverse process: one column per kept step (t, uint8 (n,C,S,S)), x_T left, x_0 right;
    one row per sample."""
    samples = torch.stack([images for _, images in frames], 1)  # (n, steps, C, S, S)
    return image_table([("", row) for row in samples],
                       titles=["x_0" if t < 0 else f"t={t}" for t, _ in frames],
                       title="reverse process, noise to digit (DDIM, EMA weights)")


def reconstruction_figure(real: torch.Tensor, rows: list[tuple[int, torch.Tensor, torch.Tensor, float]],
                          timesteps: int) -> plt.Figure:
    """img2img: real digits (n,1,28,28), then for each (t, noised, denoised, mse) the digits
    noised to step t and the model's reconstruction from there."""
    table = [("real", real)]
    for t, noisy, recon, mse in rows:
        table += [(f"noised to\nt={t}/{timesteps}", noisy), (f"denoised\nMSE {mse:.3f}", recon)]
    return image_table(table, title="reconstruction: test digits noised to step t, then denoised")
