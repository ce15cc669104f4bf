"""Latent-space tools: truncated noise, slerp, and the interpolation / arithmetic figures."""

from __future__ import annotations

import math

import pytest
import torch

from trilemma import families, latent

CPU = torch.device("cpu")
TINY = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8, "latent_dim": 4}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_family(name: str):
    torch.manual_seed(0)
    return families.build(name, families.REGISTRY[name].Config(**TINY), CPU)


class Recorder:
    """Wraps a `generate` callable and keeps the latents and labels of each call."""

    def __init__(self, generate):
        self.generate, self.calls = generate, []

    def __call__(self, z, labels=None):
        self.calls.append((z.clone(), None if labels is None else labels.clone()))
        return self.generate(z, labels)


# --- noise -----------------------------------------------------------------------------------

@pytest.mark.parametrize("truncation", [None, 0.7])
def test_noise_is_repeatable_with_the_same_generator_seed(truncation):
    a = latent.noise(50, 6, gen(1), truncation)
    b = latent.noise(50, 6, gen(1), truncation)
    c = latent.noise(50, 6, gen(2), truncation)
    assert a.shape == (50, 6) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("tau", [0.25, 1.0, 2.0])
def test_truncated_noise_stays_within_minus_tau_to_tau(tau):
    z = latent.noise(4000, 8, gen(0), tau)
    assert z.abs().max() <= tau
    assert z.abs().max() > 0.9 * tau  # cut at tau, not squeezed well inside it


@pytest.mark.parametrize("truncation", [None, math.inf])
def test_no_truncation_is_plain_randn_with_the_same_generator(truncation):
    expected = torch.randn(30, 5, generator=gen(4))
    assert torch.equal(latent.noise(30, 5, gen(4), truncation), expected)


def test_smaller_truncation_gives_smaller_spread():
    stds = [latent.noise(4000, 8, gen(0), tau).std().item() for tau in (0.5, 1.0, 2.0, None)]
    assert stds == sorted(stds)
    assert stds[-1] == pytest.approx(1.0, abs=0.03)
    # N(0,1) cut to [-0.5, 0.5] is close to uniform on it: std about 0.5 / sqrt(3)
    assert stds[0] == pytest.approx(0.5 / math.sqrt(3), abs=0.02)


# --- slerp -----------------------------------------------------------------------------------

def test_slerp_endpoints_are_the_inputs():
    a, b = torch.randn(5, 7, generator=gen(0)), torch.randn(5, 7, generator=gen(1))
    path = latent.slerp(a, b, torch.linspace(0, 1, 4))
    assert path.shape == (5, 4, 7)
    torch.testing.assert_close(path[:, 0], a)
    torch.testing.assert_close(path[:, -1], b)


def test_slerp_keeps_the_norm_of_equal_norm_inputs():
    a, b = torch.randn(6, 16, generator=gen(0)), torch.randn(6, 16, generator=gen(1))
    a, b = 3 * a / a.norm(dim=1, keepdim=True), 3 * b / b.norm(dim=1, keepdim=True)
    path = latent.slerp(a, b, torch.linspace(0, 1, 9))
    torch.testing.assert_close(path.norm(dim=2), torch.full((6, 9), 3.0))
    # a straight line would dip towards the centre: the midpoint must not
    assert (a + b).div(2).norm(dim=1).max() < 2.9


# --- figures on a real family ----------------------------------------------------------------

def test_interpolation_is_rows_times_cols_uint8_images():
    model = tiny_family("dcgan")
    images = latent.interpolation(model.generate, model.latent_dim, 0, gen(0), rows=3, cols=5)
    assert images.shape == (15, 1, 28, 28) and images.dtype == torch.uint8


def test_interpolation_rows_run_between_two_latents():
    model = tiny_family("dcgan")
    record = Recorder(model.generate)
    latent.interpolation(record, model.latent_dim, 0, gen(0), rows=3, cols=5)
    (z, labels), = record.calls
    z = z.reshape(3, 5, model.latent_dim)
    a, b = latent.noise(3, 4, g := gen(0)), latent.noise(3, 4, g)
    torch.testing.assert_close(z[:, 0], a)
    torch.testing.assert_close(z[:, -1], b)
    assert labels is None


def test_arithmetic_is_rows_times_cols_uint8_images():
    model = tiny_family("dcgan")
    images = latent.arithmetic(model.generate, model.latent_dim, 0, gen(0), rows=2, cols=3)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.uint8


@pytest.mark.parametrize("classes", [10, 3])
def test_row_labels_give_row_i_class_i_mod_classes(classes):
    labels = latent.row_labels(12, 3, classes)
    assert labels.shape == (36,) and labels.dtype == torch.int64
    assert torch.equal(labels.reshape(12, 3), (torch.arange(12) % classes)[:, None].expand(12, 3))
    assert latent.row_labels(12, 3, 0) is None  # unconditional


@pytest.mark.parametrize("make, cols", [(latent.interpolation, 4), (latent.arithmetic, 3)])
def test_conditional_figure_rows_ask_for_digit_i_mod_10(make, cols):
    model = tiny_family("cgan")
    record = Recorder(model.generate)
    images = make(record, model.latent_dim, model.image.num_classes, gen(0), rows=12, cols=cols)
    assert images.shape == (12 * cols, 1, 28, 28) and images.dtype == torch.uint8
    _, labels = record.calls[-1]  # the figure's own call (arithmetic first probes the ink)
    assert torch.equal(labels, latent.row_labels(12, cols, 10))
    # the labels reach the generator: a different digit gives a different image
    z = record.calls[-1][0][:1]
    assert not torch.equal(model.generate(z, torch.tensor([0])), model.generate(z, torch.tensor([1])))


# --- ink direction ---------------------------------------------------------------------------

def ink_of_first_axis(z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Flat images whose brightness grows linearly with z[:, 0] and ignores every other axis."""
    level = (128 + 40 * z[:, 0]).round().clamp(0, 255).to(torch.uint8)  # (n,)
    return level[:, None, None, None].expand(-1, 1, 28, 28)


def test_ink_direction_points_along_the_axis_that_controls_ink():
    bold = latent.ink_direction(ink_of_first_axis, 8, 0, gen(0))
    assert bold.shape == (8,)
    assert bold[0] > 0  # towards more ink
    assert bold[0] / bold.norm() > 0.95
    # top vs bottom 10% of a standard normal: about 2 * 1.75 apart
    assert bold[0] == pytest.approx(3.5, abs=0.3)


def test_ink_direction_asks_a_conditional_family_for_every_class_in_turn():
    record = Recorder(ink_of_first_axis)
    latent.ink_direction(record, 8, 3, gen(0), n=30)
    (_, labels), = record.calls
    assert torch.equal(labels, torch.arange(30) % 3)
