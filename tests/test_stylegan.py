"""StyleGAN: style mixing, truncation toward w_avg, noise inputs, the differentiable decoder."""

from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import pytest
import torch

from trilemma import families, pixels
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import ConfigError
from trilemma.families import stylegan

CPU = torch.device("cpu")
TINY = dict(epochs=1, batch_size=8, lr=1e-3, width=8, latent_dim=4, w_dim=16, mapping_layers=2)


def build(seed: int = 0, image: ImageSpec = MNIST_SPEC, **overrides) -> stylegan.StyleGAN:
    torch.manual_seed(seed)
    return stylegan.build(stylegan.Config(**{**TINY, **overrides}), CPU, image)


def latents(n: int, seed: int, dim: int = 4) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def batch(mnist):
    x = torch.from_numpy(mnist.x_train[:8]).float() / 255  # (8,1,28,28)
    return x.contiguous(memory_format=torch.channels_last), torch.from_numpy(mnist.y_train[:8])


@pytest.fixture
def trained(batch):
    """A model after a few steps: w_avg has moved away from its zero start."""
    model = build()
    for _ in range(3):
        model.train_step(*batch)
    return model


def with_noise_strength(model: stylegan.StyleGAN, value: float) -> stylegan.StyleGAN:
    with torch.no_grad():
        for layer in model.g.synthesis.layers:
            layer.noise_strength.fill_(value)
    return model


def test_crossover_picks_which_layers_take_the_second_latent():
    g = build().g
    a, b = latents(3, 0), latents(3, 1)
    layers = g.num_styles
    with torch.no_grad():
        alone_a, alone_b = g(a), g(b)
        assert torch.equal(g(a, b, torch.full((3,), layers)), alone_a)  # crossover past the end
        assert torch.equal(g(a, b, torch.zeros(3, dtype=torch.long)), alone_b)  # from layer 0
        mixed = g(a, b, torch.tensor([1, 2, layers - 1]))
    for row in range(3):
        assert not torch.equal(mixed[row], alone_a[row])
        assert not torch.equal(mixed[row], alone_b[row])


def test_train_step_mixes_styles_with_probability_mixing_prob(batch):
    seen = []
    for prob in (0.0, 1.0):
        model = build(mixing_prob=prob)
        hook = model.g.register_forward_pre_hook(lambda m, args: seen.append(args[2].clone()))
        model.train_step(*batch)
        hook.remove()
    layers = model.g.num_styles
    assert (seen[0] == layers).all()  # no layer takes the second latent
    assert ((seen[1] >= 1) & (seen[1] < layers)).all()  # a real crossover in every row


def test_mix_takes_coarse_layers_from_one_latent_and_fine_from_the_other():
    model = with_noise_strength(build(), 0.3)
    a1, a2, b1, b2 = (latents(2, s) for s in range(4))
    base = []  # the first (base-grid) layer's output: coarse styles only
    hook = model.g.synthesis.layers[0].register_forward_hook(lambda m, i, out: base.append(out))
    mixed = model.mix(a1, b1)
    same_coarse, same_fine = model.mix(a1, b2), model.mix(a2, b1)
    hook.remove()
    assert torch.equal(base[0], base[1]) and not torch.equal(base[0], base[2])
    assert not torch.equal(mixed, same_coarse) and not torch.equal(mixed, same_fine)
    assert torch.equal(model.mix(a1, a1), model.generate(a1))
    levels = model.g.synthesis.levels
    assert min(levels) == 0 and max(levels) == 2 and 0 < levels.count(2) < len(levels)


def test_truncation_zero_gives_the_average_w_image_for_every_latent(trained):
    w_avg = trained.g.w_avg
    assert w_avg.abs().sum() > 0
    images = trained.generate(latents(5, 0), truncation=0.0)
    assert all(torch.equal(images[0], image) for image in images[1:])
    ws = w_avg[None, None].expand(1, trained.g.num_styles, -1)
    expected = pixels.from_unit((trained.g.synthesis(ws) + 1) / 2)
    assert torch.equal(images[:1], expected)
    # `sample` draws fresh noise maps: its samples at psi 0 differ by the noise alone
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    noisy = with_noise_strength(trained, 0.3).sample(2, None, gen(), truncation=0.0)
    assert not torch.equal(noisy[0], noisy[1])
    quiet = with_noise_strength(trained, 0.0).sample(2, None, gen(), truncation=0.0)
    assert torch.equal(quiet[0], quiet[1])


def test_truncation_one_is_untruncated_and_smaller_psi_pulls_toward_the_average(trained):
    z = latents(6, 1)
    assert torch.equal(trained.generate(z, truncation=1.0), trained.generate(z))
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.equal(trained.sample(6, None, gen(), truncation=1.0),
                       trained.sample(6, None, gen()))
    average = trained.generate(z, truncation=0.0).float()
    far = (trained.generate(z, truncation=1.0).float() - average).abs().mean()
    near = (trained.generate(z, truncation=0.3).float() - average).abs().mean()
    assert near < far


def test_w_avg_follows_the_mean_w_in_training_and_is_restored(batch):
    model = build(w_avg_beta=0.5)
    assert torch.equal(model.g.w_avg, torch.zeros(16))
    rng = torch.get_rng_state()
    model.train_step(*batch)
    torch.set_rng_state(rng)
    z = torch.randn(8, 4)  # the step's first draw
    with torch.no_grad():
        expected = 0.5 * model.g.mapping(z).mean(0)  # lerp from 0 by 1 - beta, after the update
    torch.testing.assert_close(model.g.w_avg, expected)
    state = copy.deepcopy(model.state_dict())
    fresh = build(seed=1, w_avg_beta=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.g.w_avg, model.g.w_avg)
    z = latents(4, 3)
    assert torch.equal(fresh.generate(z, truncation=0.5), model.generate(z, truncation=0.5))


def test_noise_reaches_the_image_only_through_its_learned_strengths():
    model = build()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ws = model._ws(latents(3, 0))
    shapes = model.g.synthesis.noise_shapes()
    noise_a = [torch.randn(3, *s, generator=gen()) for s in shapes]
    noise_b = [torch.randn(3, *s) for s in shapes]
    with torch.no_grad():
        assert torch.equal(model._images(ws, noise_a), model._images(ws, noise_b))  # strengths 0
        with_noise_strength(model, 0.5)
        assert not torch.equal(model._images(ws, noise_a), model._images(ws, noise_b))
        assert torch.equal(model._images(ws, noise_a), model._images(ws, noise_a))


def test_decode_matches_generate_and_has_gradients_wrt_z(trained):
    with_noise_strength(trained, 0.2)  # the fixed noise maps take part in both
    z = latents(5, 4).requires_grad_(True)
    images = trained.decode(z)
    assert images.shape == (5, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert (images.detach() * 255 - trained.generate(z.detach()).float()).abs().max() <= 0.5 + 1e-4
    images.mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert isinstance(trained, families.LatentFamily)


def test_figures_are_the_style_mixing_grid_and_truncation_strip(trained, batch):
    figs = trained.figures(*batch)
    assert set(figs) == {"style_mixing", "truncation"}
    [mixing], [truncation] = figs["style_mixing"].axes, figs["truncation"].axes
    size = batch[0].shape[-1]
    # a row of column sources, then a row per row source: source + 6 mixes
    assert mixing.get_images()[0].get_array().shape[:2] == (6 * (size + 2) + 2, 7 * (size + 2) + 2)
    assert len(truncation.get_yticks()) == 6
    assert [t.get_text() for t in truncation.get_xticklabels()][::5] == ["psi 1.0", "psi 0.0"]
    for fig in figs.values():
        plt.close(fig)


@pytest.mark.parametrize("size", [7, 9])
def test_size_the_generator_cannot_upsample_to_is_a_config_error(size):
    with pytest.raises(ConfigError, match="data.image_size") as err:
        build(image=ImageSpec(1, size, ("a", "b")))
    assert "\n" not in str(err.value)


def test_discriminator_sees_the_spread_of_its_batch_only_with_minibatch_stddev():
    from trilemma.nets.stylegan import Discriminator

    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    varied = x.clone()
    varied[4:] = torch.rand(4, 1, 28, 28)  # same first half, different partners
    for group, depends in ((4, True), (1, False)):
        torch.manual_seed(0)
        d = Discriminator(1, 8, group=group)
        with torch.no_grad():
            same = torch.equal(d(x)[:4], d(varied)[:4])
        assert same is not depends
