"""Progressive GAN: the growth schedule, fade-in, minibatch stddev, equalized learning rate,
resume mid-fade, sampling before the last resolution, the schedule's validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from trilemma import families
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import ConfigError
from trilemma.families import progan
from trilemma.nets.progan import (Discriminator, EqualizedConv2d, EqualizedLinear, Generator,
                                  group_spread, minibatch_stddev)

CPU = torch.device("cpu")
TINY = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 4, "max_width": 16, "latent_dim": 8,
        "resolution_steps": 4, "fade_steps": 2}


def build(image: ImageSpec = MNIST_SPEC, seed: int = 0, **overrides) -> progan.ProGAN:
    torch.manual_seed(seed)
    return progan.build(progan.Config(**{**TINY, **overrides}), CPU, image)


def batch(image: ImageSpec = MNIST_SPEC, n: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, image.channels, image.size, image.size, generator=g)
    return x.contiguous(memory_format=torch.channels_last), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("step, expected", [
    (0, (0, 1.0)), (99, (0, 1.0)),              # 7x7: no fade
    (100, (1, 0.0)), (120, (1, 0.5)), (140, (1, 1.0)), (199, (1, 1.0)),  # 14x14 fades in
    (200, (2, 0.0)), (230, (2, 0.75)),          # 28x28 fades in
    (240, (2, 1.0)), (10_000, (2, 1.0)),        # and keeps every later step
])
def test_phase_of_three_resolutions(step, expected):
    assert progan.phase(step, levels=3, resolution_steps=100, fade_steps=40) == expected


def test_phase_of_five_resolutions_and_without_fade():
    # 64x64: 4, 8, 16, 32, 64
    assert [progan.phase(s, 5, 10, 5)[0] for s in (0, 10, 20, 30, 39, 40, 400)] == \
        [0, 1, 2, 3, 3, 4, 4]
    assert progan.phase(32, 5, 10, 5) == (3, 0.4)
    assert progan.phase(10, 5, 10, 0) == (1, 1.0)  # fade_steps 0: a new level enters at once


@pytest.mark.parametrize("size, resolutions", [(28, [7, 14, 28]), (64, [4, 8, 16, 32, 64]),
                                               (16, [4, 8, 16])])
def test_generator_grows_from_base_grid_to_full_size(size, resolutions):
    g = Generator(8, 3, size, width=4, max_width=16)
    z = torch.randn(2, 8)
    assert [g(z, level).shape[-1] for level in range(g.levels)] == resolutions
    d = Discriminator(3, size, width=4, max_width=16)
    for level, r in enumerate(resolutions):
        assert d(torch.randn(2, 3, r, r), level).shape == (2,)


def test_fade_in_starts_from_the_upsampled_previous_resolution():
    torch.manual_seed(0)
    g = Generator(8, 1, 28, width=4, max_width=16)
    z = torch.randn(4, 8)
    previous = F.interpolate(g(z, 1), scale_factor=2, mode="nearest")  # (4,1,28,28)
    torch.testing.assert_close(g(z, 2, alpha=0.0), previous)
    assert not torch.allclose(g(z, 2, alpha=0.5), previous)
    torch.testing.assert_close(g(z, 2, alpha=1.0), g(z, 2))

    d = Discriminator(1, 28, width=4, max_width=16)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(d(x, 2, alpha=0.0), d(F.avg_pool2d(x, 2), 1))


def test_real_images_fade_between_coarse_and_fine():
    x = torch.rand(2, 1, 28, 28)
    fine = F.avg_pool2d(x, 2)  # (2,1,14,14)
    coarse = F.interpolate(F.avg_pool2d(x, 4), scale_factor=2, mode="nearest")
    torch.testing.assert_close(progan.resize_real(x, 14, 1.0), fine)
    torch.testing.assert_close(progan.resize_real(x, 14, 0.0), coarse)
    torch.testing.assert_close(progan.resize_real(x, 14, 0.25), 0.75 * coarse + 0.25 * fine)
    assert progan.resize_real(x, 28, 1.0) is x


def test_minibatch_stddev_is_zero_for_identical_images_only():
    same = torch.randn(1, 3, 5, 5).expand(8, -1, -1, -1)
    out = minibatch_stddev(same)
    assert out.shape == (8, 4, 5, 5)
    torch.testing.assert_close(out[:, :3], same)
    assert out[:, 3].abs().max() < 1e-3  # sqrt of the 1e-8 that keeps the gradient finite
    varied = minibatch_stddev(torch.randn(8, 3, 5, 5))
    assert varied[:, 3].min() > 0.3  # N(0,1) features: a std near 1


def test_minibatch_stddev_groups_samples_and_shrinks_the_group_to_divide_the_batch():
    # groups of 4 are samples {0,2,4,6} and {1,3,5,7}: only the second varies
    x = torch.zeros(8, 1, 2, 2)
    x[1::2] = torch.arange(4.0)[:, None, None, None]
    std = minibatch_stddev(x)[:, 1, 0, 0]
    assert torch.all(std[0::2] < 1e-3) and torch.allclose(std[1::2], torch.tensor(math.sqrt(1.25)))
    assert minibatch_stddev(torch.randn(6, 2, 3, 3)).shape == (6, 3, 3, 3)  # group 3
    assert minibatch_stddev(torch.randn(1, 2, 3, 3)).shape == (1, 3, 3, 3)  # group 1


@pytest.mark.parametrize("shape", [(8, 6), (8, 3, 5, 5)])
def test_group_spread_is_the_mean_population_std_over_each_group(shape):
    x = torch.randn(*shape)
    groups = x.reshape(4, 2, -1)  # sample i is in group i % 2
    expected = (groups.var(0, unbiased=False) + 1e-8).sqrt().mean(1).repeat(4)
    torch.testing.assert_close(group_spread(x), expected)
    if len(shape) == 4:  # the layout convolutions use on the CPU gives the same
        torch.testing.assert_close(group_spread(x.contiguous(memory_format=torch.channels_last)),
                                   expected)


def test_equalized_layers_store_unit_normal_weights_and_scale_by_he():
    torch.manual_seed(0)
    conv = EqualizedConv2d(64, 64, 3)
    assert abs(conv.weight.std().item() - 1) < 0.02 and abs(conv.weight.mean().item()) < 0.02
    assert conv.scale == pytest.approx(math.sqrt(2 / (64 * 9)))
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1))
    linear = EqualizedLinear(200, 10, gain=1.0)
    assert linear.scale == pytest.approx(1 / math.sqrt(200))
    assert abs(linear.weight.std().item() - 1) < 0.05


@pytest.mark.parametrize("steps, says", [
    (200, "end at 14x14;"), (230, "end at 28x28, fading in (alpha 0.72)"), (241, None)])
def test_a_run_too_short_for_the_full_size_says_so(steps, says, capsys):
    build(resolution_steps=100, fade_steps=40).plan(steps)
    out = capsys.readouterr().out
    if says is None:
        assert out == ""
    else:
        assert f"warning: progan: the run's {steps} steps {says}" in out
        assert "28x28 is faded in after step 240" in out


def test_train_step_grows_the_resolution_on_schedule():
    model = build()
    x, y = batch()
    seen = [(model.train_step(x, y)["resolution"].item(), model.phase()) for _ in range(9)]
    assert [r for r, _ in seen] == [7] * 4 + [14] * 4 + [28]
    assert model.state_dict()["steps"] == 9


@pytest.mark.parametrize("loss", ["wgan-gp", "logistic"])
def test_resume_mid_fade_repeats_the_next_step_exactly(loss):
    model = build(loss=loss)
    x, y = batch()
    for _ in range(5):  # step 5 is at 14x14, alpha 0.5
        model.train_step(x, y)
    assert model.phase() == (1, 0.5)
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    losses = model.train_step(x, y)
    expected = {k: v.clone() for k, v in model.g.state_dict().items()}

    resumed = build(seed=1, loss=loss)
    resumed.load_state_dict(state)
    assert resumed.phase() == (1, 0.5)
    torch.set_rng_state(rng)
    again = resumed.train_step(x, y)
    assert all(torch.equal(again[k], losses[k]) for k in losses)
    assert all(torch.equal(v, expected[k]) for k, v in resumed.g.state_dict().items())


@pytest.mark.parametrize("steps", [0, 5, 9])
def test_sampling_before_the_last_resolution_gives_full_size_uint8(steps):
    image = ImageSpec(3, 16, ("a", "b"))
    model = build(image)
    model.steps = steps  # 4x4, 8x8 mid-fade, 16x16
    images = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16)
    if steps == 0:  # 4x4 nearest-upsampled: constant 4x4 blocks
        torch.testing.assert_close(images, images[..., ::4, ::4].repeat_interleave(4, -1)
                                   .repeat_interleave(4, -2))


def test_decode_is_differentiable_and_matches_generate():
    model = build()
    model.steps = 5
    z = torch.randn(3, 8, requires_grad=True)
    out = model.decode(z)
    assert out.shape == (3, 1, 28, 28) and 0 <= out.min() and out.max() <= 1
    out.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert (model.generate(z.detach()).float() - out.detach() * 255).abs().max() <= 0.5 + 1e-4
    assert isinstance(model, families.LatentFamily)


def test_growth_figure_has_a_row_per_resolution_trained():
    model = build()
    model.steps = 9  # at 28x28: rows 7, 14, 28
    fig = model.figures(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))["growth"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["7x7", "14x14", "28x28"]


def test_fade_longer_than_a_resolution_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="progan.fade_steps 5 exceeds progan.resolution_steps 4") \
            as err:
        build(fade_steps=5)
    assert "\n" not in str(err.value)


def test_size_the_networks_cannot_halve_is_a_config_error():
    with pytest.raises(ConfigError, match="data.image_size 9"):
        build(ImageSpec(1, 9, ("a", "b")))


def test_train_stage_grows_to_full_size_and_saves_the_growth_figure(tiny_repo):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from trilemma import paths

    # the tiny repo's params (conftest's TINY): 4 steps, 7 -> 14 -> 28
    result = CliRunner().invoke(app, ["train", "progan"])
    assert result.exit_code == 0, result.output
    assert (tiny_repo / paths.train_reports("progan") / "growth.png").is_file()
    blob = torch.load(tiny_repo / paths.model("progan"), weights_only=True)
    assert blob["state"]["steps"] == 4  # 256 images / 64, so the last 2 steps ran at 28x28
