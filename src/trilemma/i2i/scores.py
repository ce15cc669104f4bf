"""Scoring translations where the derived pairs exist: PSNR and SSIM (torchmetrics), in batches;
and the input | baseline | output | target figure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trilemma.i2i.tasks import Task
from trilemma import torchmetrics_loader

PSNR_CAP = 100.0  # dB, for identical images (torchmetrics gives inf); uint8 images that differ
#                   in one grey level at one pixel of 28x28 score 77 dB, so the cap moves no other


SSIM_CHUNK = 100  # images per torchmetrics call
EXAMPLES = 8  # test images in the input | baseline | output | target figure


def quantise(x: torch.Tensor) -> torch.Tensor:
    """[0,1] floats -> uint8, as the images would be saved."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (n,C,S,S) images in [0,1] (data range 1), capped at PSNR_CAP:
    (n,)."""
    torchmetrics_loader.wait()
    from torchmetrics.functional.image import peak_signal_noise_ratio

    per_image = peak_signal_noise_ratio(pred.double(), target.double(), data_range=1.0,
                                        reduction="none", dim=(1, 2, 3))
    return per_image.clamp(max=PSNR_CAP)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5) of (n,C,S,S) images in [0,1]: (n,)."""
    torchmetrics_loader.wait()
    from torchmetrics.functional.image import structural_similarity_index_measure

    # float32: a CPU convolves it about 12x faster than float64 (oneDNN), and per-image values
    # move by about 1e-7; in chunks, since the 11x11 window is unfolded per pixel
    return torch.cat([structural_similarity_index_measure(
        pred[i:i + SSIM_CHUNK].float(), target[i:i + SSIM_CHUNK].float(), data_range=1.0,
        reduction="none") for i in range(0, len(pred), SSIM_CHUNK)]).double()


def examples_figure(task: Task, translate, x: torch.Tensor, title: str):
    """Rows input | baseline | output | target for digits x (n,C,S,S) in [0,1]; `translate` maps
    task inputs to outputs. Small inputs are shown blown up with nearest neighbours."""
    from trilemma.figures import _image_row, pyplot

    inputs, target = task.pair(x)
    size = target.shape[-1]
    shown = inputs if inputs.shape[-1] == size else F.interpolate(inputs, size=size, mode="nearest")
    rows = [("input", shown), (task.baseline_name.replace(" ", "\n", 1), task.baseline(inputs)),
            ("output", translate(inputs).cpu()), ("target", target)]
    fig, axes = pyplot().subplots(len(rows), len(x), figsize=(0.9 * len(x) + 1.6, 0.95 * len(rows)),
                             squeeze=False)
    for ax_row, (label, images) in zip(axes, rows):
        _image_row(ax_row, quantise(images), label)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
