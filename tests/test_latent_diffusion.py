"""Latent diffusion: the two training phases, the latent scale, sampling, sizes it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from trilemma import families
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import ConfigError
from trilemma.families import latent_diffusion

CPU = torch.device("cpu")
TINY = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8, "widths": [8, 16],
        "timesteps": 20, "ae_steps": 2, "dropout": 0.0}


def build(seed: int = 0, image: ImageSpec = MNIST_SPEC, **overrides):
    torch.manual_seed(seed)
    return latent_diffusion.build(latent_diffusion.Config(**{**TINY, **overrides}), CPU, image)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.fixture(scope="module")
def batch(mnist):
    x = torch.from_numpy(mnist.x_train[:8]).float() / 255  # (8,1,28,28) in [0,1]
    return x.contiguous(memory_format=torch.channels_last), torch.from_numpy(mnist.y_train[:8])


def test_autoencoder_trains_first_then_only_the_diffusion(batch):
    model = build()  # ae_steps 2
    for step in (1, 2):
        ae, unet = params(model.ae), params(model.diffusion.net)
        losses = model.train_step(*batch)
        assert set(losses) == {"ae_loss", "recon", "kl"}, step
        assert changed(ae, model.ae) and not changed(unet, model.diffusion.net), step
        assert model.scale is None
    ae, unet = params(model.ae), params(model.diffusion.net)
    losses = model.train_step(*batch)
    assert set(losses) == {"loss"}
    assert not changed(ae, model.ae) and changed(unet, model.diffusion.net)
    assert model.steps == 3 and model.diffusion.steps == 1


def test_latent_scale_makes_the_first_diffusion_batch_unit_variance(batch):
    model = build()
    for _ in range(3):
        model.train_step(*batch)
    z, _ = model.ae.encode(batch[0])
    assert torch.allclose((z * model.scale).std(unbiased=False), torch.tensor(1.0), atol=1e-4)
    scale = model.scale.clone()
    model.train_step(*batch)
    assert torch.equal(model.scale, scale)  # measured once, not per batch


@pytest.mark.parametrize("saved_after", [2, 3], ids=["before-scale", "after-scale"])
def test_resume_across_the_phase_boundary_repeats_the_next_steps(batch, saved_after):
    model = build(seed=0)
    for _ in range(saved_after):
        model.train_step(*batch)
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    expected = [model.train_step(*batch) for _ in range(2)]

    resumed = build(seed=1)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    again = [resumed.train_step(*batch) for _ in range(2)]
    assert all(torch.equal(a[k], e[k]) for a, e in zip(again, expected) for k in e)
    assert torch.equal(resumed.scale, model.scale)
    for net in model.nets:
        assert not changed(params(model.nets[net]), resumed.nets[net]), net


def test_sample_gives_uint8_images_of_the_data_shape_and_guidance_matters(batch):
    model = build()
    for _ in range(4):
        model.train_step(*batch)
    labels = torch.tensor([3, 7, 1])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    guided = model.sample(3, labels, gen(), steps=3, guidance=3.0)
    assert guided.dtype == torch.uint8 and guided.shape == (3, 1, 28, 28)
    assert torch.equal(guided, model.sample(3, labels, gen(), steps=3, guidance=3.0))
    assert not torch.equal(guided, model.sample(3, labels, gen(), steps=3, guidance=0.0))
    ancestral = model.sample(3, labels, gen(), steps="ddpm")
    assert ancestral.shape == (3, 1, 28, 28)


def test_reverse_process_does_not_clip_latents_to_the_pixel_range():
    # untrained, the U-Net predicts zero noise (its head starts at zero), so DDIM scales z_T up
    # by 1/sqrt(alpha_bar): a sampler clipping x_0 to [-1,1], as pixel diffusion does, stops there
    model = build()
    z_T = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    z0, _ = model.diffusion.denoise(z_T, model.timesteps - 1, torch.tensor([0, 1]), steps=2)
    assert z0.abs().max() > 2


@pytest.mark.parametrize("image, downsample, grid", [(MNIST_SPEC, 4, 7), (MNIST_SPEC, 2, 14),
                                                     (ImageSpec(3, 64, ("a", "b")), 4, 16),
                                                     (ImageSpec(3, 64, ("a", "b")), 8, 8)])
def test_latent_grid_is_the_image_size_over_downsample(image, downsample, grid):
    model = build(image=image, downsample=downsample, latent_channels=3)
    assert model.latent_shape == (3, grid, grid)
    z, _ = model.ae.encode(torch.rand(2, image.channels, image.size, image.size))
    assert z.shape == (2, 3, grid, grid)
    assert model.sample(2, steps=1).shape == (2, image.channels, image.size, image.size)


@pytest.mark.parametrize("size, overrides", [(30, {}), (12, {"downsample": 8}),
                                             (28, {"patch": 2})])
def test_sizes_the_autoencoder_cannot_take_are_one_line_config_errors(size, overrides):
    with pytest.raises(ConfigError, match=f"data.image_size {size}") as err:
        build(image=ImageSpec(1, size, ("a", "b")), **overrides)
    assert "latent_diffusion." in str(err.value) and "\n" not in str(err.value)


def test_unlabelled_images_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="latent_diffusion is conditional") as err:
        build(image=ImageSpec(3, 32, ()))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [{"downsample": 3}, {"ae_steps": 10, "max_steps": 10}])
def test_config_refuses_impossible_phases_and_downsampling(bad):
    with pytest.raises(ValidationError):
        latent_diffusion.Config(**{**TINY, **bad})


def test_figures_show_reconstructions_and_the_decoded_reverse_process(batch):
    model = build()
    model.train_step(*batch)
    figs = model.figures(*batch)
    assert set(figs) == {"reconstruction", "denoising"}
    [table] = figs["denoising"].axes
    assert len(table.get_yticks()) == 8  # 8 samples
    assert [t.get_text() for t in table.get_xticklabels()][-1] == "x_0"
    assert len(table.get_xticks()) == 10  # x_T and 9 kept steps


def test_figures_take_a_test_set_of_fewer_than_8_images(batch):
    x, y = batch
    model = build()
    model.train_step(x, y)
    figs = model.figures(x[:5], y[:5])
    [table] = figs["denoising"].axes
    assert len(table.get_yticks()) == 5


def test_registered_family_is_conditional_with_diffusion_knobs():
    model = families.build("latent_diffusion", latent_diffusion.Config(**TINY), CPU)
    assert model.conditional and model.timesteps == 20
    assert model.knobs == ("sampler", "steps", "eta", "guidance")
