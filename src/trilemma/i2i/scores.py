"""Scoring translations where the derived pairs exist: PSNR and SSIM in batches (torchmetrics'
formulas, held to its values by the tests; not imported, for its 4-5 s import); and the
input | baseline | output | target figure."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trilemma import pixels
from trilemma.i2i.tasks import Task

PSNR_CAP = 100.0  # dB, for identical images (the formula gives inf); uint8 images that differ
#                   in one grey level at one pixel of 28x28 score 77 dB, so the cap moves no other


SSIM_CHUNK = 100  # images per convolution
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the Gaussian window's side and its std in pixels
EXAMPLES = 8  # test images in the input | baseline | output | target figure


def _same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"expected two image batches (n,C,S,S) of one shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (n,C,S,S) images in [0,1] (data range 1), capped at PSNR_CAP:
    (n,)."""
    _same_shape(pred, target)
    mse = (pred.double() - target.double()).square().mean(dim=(1, 2, 3))
    return (-10 * torch.log10(mse)).clamp(max=PSNR_CAP)  # 1/0 -> inf -> the cap


def _ssim_window(channels: int, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """SSIM's normalised 2-D Gaussian window (channels,1,size,size), one copy per channel."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-(offsets / sigma).square() / 2)
    line = line / line.sum()
    return torch.outer(line, line).expand(channels, 1, size, size)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) of
    (n,C,S,S) images in [0,1] (data range 1), averaged over every pixel of a reflect-padded image,
    as torchmetrics computes it: (n,)."""
    _same_shape(pred, target)
    # float32: a CPU convolves it about 12x faster than float64 (oneDNN), and per-image values
    # move by about 1e-7; in chunks, to bound the five stacked moment images
    return torch.cat([_ssim_chunk(pred[i:i + SSIM_CHUNK].float(), target[i:i + SSIM_CHUNK].float())
                      for i in range(0, len(pred), SSIM_CHUNK)]).double()


def _ssim_chunk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    c1, c2 = 0.01**2, 0.03**2
    pad = SSIM_WINDOW // 2
    x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))
    window = _ssim_window(x.shape[1]).to(x)  # on the images' device
    moments = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), window, groups=x.shape[1])
    mu_x, mu_y, xx, yy, xy = moments.split(len(x))
    var_x = (xx - mu_x.square()).clamp(min=0)
    var_y = (yy - mu_y.square()).clamp(min=0)
    cov = xy - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1)
                                                         * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)


def examples_figure(task: Task, translate, x: torch.Tensor, title: str):
    """Rows input | baseline | output | target for digits x (n,C,S,S) in [0,1]; `translate` maps
    task inputs to outputs. Small inputs are shown blown up with nearest neighbours."""
    from trilemma.figures import image_table

    inputs, target = task.pair(x)
    size = target.shape[-1]
    shown = inputs if inputs.shape[-1] == size else F.interpolate(inputs, size=size, mode="nearest")
    rows = [("input", shown), (task.baseline_name.replace(" ", "\n", 1), task.baseline(inputs)),
            ("output", translate(inputs).cpu()), ("target", target)]
    return image_table([(label, pixels.from_unit(images)) for label, images in rows], title=title)
