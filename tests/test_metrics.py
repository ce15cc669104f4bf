"""The distance metrics of `trilemma.metrics` (FID and its bootstrap, KID, precision/recall)
against reference values computed here independently: numpy/scipy brute force or closed forms.
The class and Inception scores are in test_metrics_scores.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from trilemma import metrics


def gaussian(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """n points of N(shift, scale^2 I) in d dimensions, float64 (n,d)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(shift, scale, (n, d)))


# --- FID -------------------------------------------------------------------------------------

def fid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 sqrtm(S_x S_y)), unbiased (n-1) covariances."""
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sx @ sy).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx + sy - 2 * covmean))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fid_equals_the_scipy_reference_with_unbiased_covariances(seed):
    real = gaussian(80, 5, seed)
    rng = np.random.default_rng(100 + seed)
    mix = torch.from_numpy(rng.normal(0, 0.6, (5, 5)))  # a correlated, shifted fake set
    fake = gaussian(60, 5, 200 + seed, shift=0.3) @ mix + 0.5
    expected = fid_reference(real.numpy(), fake.numpy())
    assert metrics.fid(real, fake) == pytest.approx(expected, rel=1e-6)
    # the (n-1) covariance matters at this n: the biased one gives a clearly different value
    sx, sy = np.cov(real.numpy(), rowvar=False, ddof=0), np.cov(fake.numpy(), rowvar=False, ddof=0)
    biased = float(((real.numpy().mean(0) - fake.numpy().mean(0)) ** 2).sum()
                   + np.trace(sx + sy - 2 * scipy.linalg.sqrtm(sx @ sy).real))
    assert abs(biased - expected) > 1e-4 * expected


def test_fid_of_a_set_against_itself_is_zero():
    x = gaussian(100, 6, 0, scale=3.0)
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("c, shift", [(1.0, 2.0), (0.5, 0.0), (0.25, 1.5), (2.0, -1.0)])
def test_fid_of_a_scaled_and_shifted_copy_has_the_closed_form(c, shift):
    # x centred, y = c x + m: S_y = c^2 S_x, sqrt(S_x S_y) = c S_x, mean_y - mean_x = m,
    # so FID = ||m||^2 + (1 - c)^2 Tr(S_x)
    x = gaussian(200, 4, 3) @ torch.tensor([[1.0, 0.3, 0, 0], [0, 1, 0.5, 0], [0, 0, 2, 0],
                                            [0, 0, 0, 0.5]], dtype=torch.float64)
    x = x - x.mean(0)
    m = torch.tensor([shift, 0.0, -shift / 2, 0.0], dtype=torch.float64)
    expected = float(m @ m) + (1 - c) ** 2 * float(np.trace(np.cov(x.numpy(), rowvar=False)))
    assert metrics.fid(x, c * x + m) == pytest.approx(expected, rel=1e-6, abs=1e-8)


def test_fids_share_the_real_statistics_and_forget_each_fake_set():
    real, a, b = gaussian(50, 3, 0), gaussian(40, 3, 1, shift=1.0), gaussian(40, 3, 2, scale=2.0)
    scores = metrics.fids(real, [a, b, a])
    assert scores[0] == pytest.approx(scores[2], rel=1e-9)  # `b` left nothing behind
    assert scores == pytest.approx([fid_reference(real.numpy(), f.numpy()) for f in (a, b, a)],
                                   rel=1e-6)


# --- FID bootstrap ---------------------------------------------------------------------------

def test_fid_bootstrap_is_reproducible_for_a_seed_and_differs_for_another():
    real, fake = gaussian(300, 3, 0), gaussian(100, 3, 1, shift=0.5)
    first = metrics.fid_bootstrap(real, fake, rounds=20, seed=7)
    assert first == metrics.fid_bootstrap(real, fake, rounds=20, seed=7)
    other = metrics.fid_bootstrap(real, fake, rounds=20, seed=8)
    assert other != first
    assert first["std"] > 0 and first["low"] < first["high"]


def test_fid_bootstrap_with_two_rounds_reports_their_sample_std_and_percentiles():
    # two scores s1, s2: std (ddof=1) = |s1-s2|/sqrt(2); the 2.5th and 97.5th percentiles
    # (linear interpolation) are 0.95 |s1-s2| apart
    real, fake = gaussian(300, 3, 0), gaussian(100, 3, 1, shift=0.5)
    two = metrics.fid_bootstrap(real, fake, rounds=2, seed=0)
    assert two["high"] - two["low"] == pytest.approx(0.95 * math.sqrt(2) * two["std"], rel=1e-9)
    assert two["std"] > 0
    three = metrics.fid_bootstrap(real, fake, rounds=3, seed=0)  # the relation is not generic
    assert three["high"] - three["low"] != pytest.approx(0.95 * math.sqrt(2) * three["std"],
                                                         rel=1e-3)


def test_fid_bootstrap_resamples_only_the_fake_set():
    # every resample of a constant fake set is the same set: no spread if real stays fixed
    real = gaussian(200, 3, 0)
    fake = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64).repeat(50, 1)
    boot = metrics.fid_bootstrap(real, fake, rounds=10, seed=0)
    assert boot["std"] == 0.0
    assert boot["low"] == boot["high"] == pytest.approx(metrics.fid(real, fake), rel=1e-9)


def test_fid_bootstrap_spread_shrinks_as_the_fake_set_grows():
    # with distinct distributions the spread of FID goes as 1/sqrt(n): 16x more points, ~1/4
    real = gaussian(2000, 3, 0)
    small = metrics.fid_bootstrap(real, gaussian(100, 3, 1, shift=0.7), rounds=40, seed=0)
    big_fake = gaussian(1600, 3, 2, shift=0.7)
    big = metrics.fid_bootstrap(real, big_fake, rounds=40, seed=0)
    assert big["std"] < 0.5 * small["std"]
    assert big["low"] <= metrics.fid(real, big_fake) <= big["high"]


def test_fid_bootstrap_interval_on_real_digits_contains_the_point_and_fresh_draws(mnist):
    # MNIST training digits against the test set, in 4x4-pooled pixel features (49 dims): the
    # real-data floor in miniature. Every resample holds fewer distinct digits, so the resampled
    # FIDs sit above the point estimate: their raw percentiles would miss it.
    def features(images: np.ndarray) -> torch.Tensor:
        return nn.functional.avg_pool2d(torch.from_numpy(images).double() / 255, 4).flatten(1)

    real = features(mnist.x_test)  # all 10000, as the evaluate stage
    order = np.random.default_rng(0).permutation(len(mnist.x_train))  # the stored order is not iid
    draws = [features(mnist.x_train[order[i * 500:(i + 1) * 500]]) for i in range(13)]
    point = metrics.fid(real, draws[0])
    boot = metrics.fid_bootstrap(real, draws[0], rounds=100, seed=0)
    assert boot["low"] < point < boot["high"]
    assert boot["bias"] > point - boot["low"]  # the uncorrected 2.5th percentile is above `point`
    # the interval's width is about FID's sampling noise: it holds most fresh draws of 500 digits
    fresh = np.array(metrics.fids(real, draws[1:]))
    assert ((boot["low"] <= fresh) & (fresh <= boot["high"])).mean() >= 0.75


# --- KID -------------------------------------------------------------------------------------

def mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of equal-size sets with k(a,b) = (a.b/d + 1)^3, by brute force: the
    within-set means leave out i == j; the cross mean is over all m^2 pairs (x, y independent)."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return float(xx + yy - 2 * xy)


@pytest.mark.parametrize("seed", [0, 1])
def test_kid_equals_brute_force_mmd_when_each_subset_is_the_whole_set(seed):
    real, fake = gaussian(40, 5, seed), gaussian(40, 5, 10 + seed, shift=0.4, scale=1.3)
    mean, std = metrics.kid(real, fake, seed=0, subsets=5)  # subset size = 40 = n
    assert mean == pytest.approx(mmd2_reference(real.numpy(), fake.numpy()), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    real = gaussian(300, 4, 0)
    same, _ = metrics.kid(real, gaussian(300, 4, 1), seed=0, subsets=10)
    shifted, _ = metrics.kid(real, gaussian(300, 4, 2, shift=0.5), seed=0, subsets=10)
    assert shifted > 0.1
    assert abs(same) < 0.02 * shifted


def test_kid_is_reproducible_for_a_seed_with_random_subsets():
    real, fake = gaussian(100, 3, 0), gaussian(80, 3, 1, shift=0.3)  # subsets of 80
    first = metrics.kid(real, fake, seed=3, subsets=20)
    assert first == metrics.kid(real, fake, seed=3, subsets=20)
    assert first != metrics.kid(real, fake, seed=4, subsets=20)
    assert first[1] > 1e-3  # the subsets differ


def test_kid_subsets_hold_at_most_1000_points():
    real, fake = gaussian(1100, 3, 0), gaussian(1100, 3, 1, shift=0.3)
    mean, std = metrics.kid(real, fake, seed=0, subsets=3)
    assert std > 1e-3  # subsets of the whole set would all give the same value (std ~1e-16)
    assert mean == pytest.approx(mmd2_reference_fast(real.numpy(), fake.numpy()), rel=0.2)


def mmd2_reference_fast(x: np.ndarray, y: np.ndarray) -> float:
    """mmd2_reference with matrices, for sets too big for Python loops."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.sum() / m ** 2)


# --- precision / recall ----------------------------------------------------------------------

def precision_recall_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019 by double loops: a point's radius is the distance to its k-th
    nearest *other* point of its own set; precision is the share of fake points within some real
    point's radius of it, recall the share of real points within some fake point's radius."""

    def dist(a, b):
        return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))

    def radii(points):
        return [sorted(dist(p, q) for j, q in enumerate(points) if j != i)[k - 1]
                for i, p in enumerate(points)]

    def share_inside(points, centres, r):
        return sum(any(dist(p, c) <= rc for c, rc in zip(centres, r)) for p in points) / len(points)

    return share_inside(fake, real, radii(real)), share_inside(real, fake, radii(fake))


@pytest.mark.parametrize("seed", range(4))
def test_precision_recall_equal_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    real = rng.normal(0, 1, (40, 3))
    fake = rng.normal(1.0, 0.7, (50, 3))  # shifted and narrower: neither score is 0 or 1
    for k in (1, 3):
        got = metrics.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=k)
        expected = precision_recall_reference(real.tolist(), fake.tolist(), k)
        assert got == expected
        assert 0 < got[0] < 1 and 0 < got[1] < 1


def as_points(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)  # 1-D points (n,1)


def test_precision_recall_of_a_small_1d_example_worked_by_hand():
    # real 0,1,2,3 with k=1: every radius is 1, so the real manifold is [-1, 4].
    # fake 0.5,4,11,12: radii 3.5 (0.5 to 4), 3.5, 1, 1; the ball [-3, 4] around 0.5 holds all
    # real points. Precision: 0.5 and 4 (on the edge of 3's ball: balls are closed) of the fake
    # points are in [-1, 4] -> 2/4; recall: 4/4.
    real, fake = as_points([0, 1, 2, 3]), as_points([0.5, 4, 11, 12])
    assert metrics.precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert metrics.precision_recall(fake, real, k=1) == (1.0, 0.5)  # the roles swap
    # k=3 on real 0..4 (radii 3, 2, 2, 2, 3: the manifold is [-3, 7]) and fake 6,7,8,30,31
    # (radii 24, 23, 22, 23, 24: manifold [-18, 55]): precision 2/5, recall 5/5
    assert metrics.precision_recall(as_points(range(5)), as_points([6, 7, 8, 30, 31])) == (0.4, 1.0)


def test_precision_recall_of_identical_and_of_far_apart_sets():
    x = as_points([0, 1, 2, 4, 7, 11])
    assert metrics.precision_recall(x, x) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 100) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = gaussian(200, 2, 0)
    collapsed = real[:1].repeat(200, 1) + gaussian(200, 2, 1, scale=1e-6)  # all near real[0]
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0
    assert recall <= 2 / 200
    honest = metrics.precision_recall(real, gaussian(200, 2, 2))
    assert honest[1] > 0.8  # the same real set is well covered by a sample of its distribution


def test_precision_recall_need_more_than_k_points_in_each_set():
    four, three = gaussian(4, 2, 0), gaussian(3, 2, 1)
    with pytest.raises(ValueError, match="k=3"):
        metrics.precision_recall(three, four)
    with pytest.raises(ValueError):
        metrics.precision_recall(four, three)
    with pytest.raises(ValueError):
        metrics.precision_recall(four, four, k=4)
    p, r = metrics.precision_recall(four, four)  # 4 > 3 points: fine
    assert (p, r) == (1.0, 1.0)
