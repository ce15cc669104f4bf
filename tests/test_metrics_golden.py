"""FID, KID, IS, PSNR and SSIM as the package computes them (torchmetrics' formulas, written out
so that no stage imports torchmetrics) against torchmetrics itself, a test dependency only: the
same inputs, seeds and random subsets must give the same numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from trilemma import metrics
from trilemma.i2i.scores import PSNR_CAP, psnr, ssim


class Given(nn.Module):
    """Features computed already: the extractor torchmetrics runs is the identity."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Correlated, non-Gaussian float64 features (n,d), like a network's penultimate layer."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.relu(torch.randn(n, d, generator=g, dtype=torch.float64) @ mix * scale + shift)


def quiet(metric_class, **kwargs):
    with warnings.catch_warnings():  # its note on buffering every feature in memory
        warnings.simplefilter("ignore", UserWarning)
        return metric_class(sync_on_compute=False, **kwargs)


# the last two: a singular fake, then real, covariance. Their zero eigenvalues come out of either
# eigensolver as rounding noise whose square roots (about d sqrt(eps lambda)) differ between ours
# (the symmetric S_r^1/2 S_f S_r^1/2) and theirs (S_r S_f): ~1e-8 of FID here, not a bound
@pytest.mark.parametrize("n_real,n_fake,d,rel", [(500, 300, 16, 1e-10), (2000, 2000, 128, 1e-10),
                                                 (50, 7, 4, 1e-10), (500, 5, 16, 1e-7),
                                                 (5, 500, 16, 1e-7)])
def test_fid_equals_torchmetrics(n_real, n_fake, d, rel):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = features(n_real, d, 0)
    fakes = [features(n_fake, d, 1), features(n_fake, d, 2, shift=0.3, scale=1.5)]
    theirs = FrechetInceptionDistance(feature=Given(d), reset_real_features=False,
                                      sync_on_compute=False)
    theirs.update(real, real=True)
    expected = []
    for fake in fakes:
        theirs.reset()
        theirs.update(fake, real=False)
        expected.append(float(theirs.compute()))
    assert metrics.fids(real, fakes) == pytest.approx(expected, rel=rel, abs=1e-10)


def test_fid_of_a_single_image_is_refused_as_torchmetrics_refuses_it():
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.fid(features(10, 4, 0), features(1, 4, 1))


@pytest.mark.parametrize("n_real,n_fake,subsets", [(1200, 1100, 4), (300, 250, 20), (80, 60, 5)])
def test_kid_equals_torchmetrics_with_the_same_random_subsets(n_real, n_fake, subsets):
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = features(n_real, 32, 0), features(n_fake, 32, 1, shift=0.2)
    size = min(metrics.KID_SUBSET, n_real, n_fake)
    theirs = quiet(KernelInceptionDistance, feature=Given(32), subsets=subsets, subset_size=size)
    theirs.update(real, real=True)
    theirs.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        mean, std = theirs.compute()
    assert metrics.kid(real, fake, seed=5, subsets=subsets) == pytest.approx(
        (float(mean), float(std)), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("n,splits", [(503, 10), (2000, 10), (40, 3)])
def test_inception_score_equals_torchmetrics_with_the_same_shuffle(n, splits):
    from torchmetrics.image.inception import InceptionScore

    logits = features(n, 10, 3, scale=4.0) - 1.0
    theirs = quiet(InceptionScore, feature=Given(10), splits=splits)
    theirs.update(logits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        mean, std = theirs.compute()
    assert metrics.inception_score(logits, seed=7, splits=splits) == pytest.approx(
        (float(mean), float(std)), rel=1e-10)


def image_pairs(n: int, channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit-like images in [0,1] and noisy, shifted copies: scores far from both extremes."""
    g = torch.Generator().manual_seed(n)
    x = (torch.rand(n, channels, size, size, generator=g) > 0.7).float()
    y = (x.roll(1, dims=-1) + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


def flat_pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearly flat images (0.99 and a faint ramp): float32 rounding makes some local variances
    come out below zero, which SSIM must clamp as torchmetrics does."""
    ramp = torch.linspace(0, 1e-3, 28).expand(n, 1, 28, 28)
    return torch.full((n, 1, 28, 28), 0.99), (0.99 - ramp).contiguous()


@pytest.mark.parametrize("n,channels,size", [(250, 1, 28), (7, 3, 32), (3, 1, 12)])
def test_psnr_equals_torchmetrics_per_image(n, channels, size):
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = image_pairs(n, channels, size)
    expected = peak_signal_noise_ratio(x.double(), y.double(), data_range=1.0, reduction="none",
                                       dim=(1, 2, 3))
    torch.testing.assert_close(psnr(x, y), expected, rtol=1e-6, atol=0)


def test_psnr_is_the_float64_formula_per_image():
    # torchmetrics' own float32 constant 10 / ln 10 leaves ~1e-7 dB between us: this test pins
    # our value itself, so that an MSE in float32 (or over the wrong axes) cannot hide in that
    x, y = image_pairs(5, 3, 16)
    mse = ((x.double() - y.double()) ** 2).numpy().reshape(5, -1).mean(axis=1)
    expected = torch.from_numpy(10 * np.log10(1 / mse))
    torch.testing.assert_close(psnr(x, y), expected, rtol=1e-13, atol=0)


def test_psnr_of_identical_images_is_the_cap():
    x, _ = image_pairs(2, 1, 28)
    assert psnr(x, x).tolist() == [PSNR_CAP, PSNR_CAP]


@pytest.mark.parametrize("n,channels,size", [(250, 1, 28), (7, 3, 32), (3, 1, 12)])
def test_ssim_equals_torchmetrics_per_image(n, channels, size):
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = image_pairs(n, channels, size)
    same_precision = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    float64 = structural_similarity_index_measure(x.double(), y.double(), data_range=1.0,
                                                  reduction="none")
    torch.testing.assert_close(ssim(x, y), same_precision.double(), rtol=0, atol=1e-7)
    torch.testing.assert_close(ssim(x, y), float64, rtol=0, atol=1e-6)  # float32 costs ~1e-7


def test_ssim_clamps_negative_variances_of_flat_images_as_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = flat_pairs(4)
    expected = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim(x, y), expected.double(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("score", [psnr, ssim])
def test_image_scores_refuse_batches_of_different_shapes_with_both_shapes(score):
    x, y = image_pairs(4, 1, 28)
    with pytest.raises(ValueError, match=r"\(4, 1, 28, 28\) and \(1, 1, 28, 28\)"):
        score(x, y[:1])
