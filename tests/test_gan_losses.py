"""The GAN losses and regularisers (golden values on known scores), the game with each loss, the
drift term of WGAN-GP, and the EMA of the generator that StyleGAN and ProGAN sample from."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from conftest import params_of, same_params
from trilemma import families, gan_losses
from trilemma.data import MNIST_SPEC
from trilemma.ema import EMA, warmed_up
from trilemma.gan import GAN
from trilemma.nets import dcgan as dcgan_nets

CPU = torch.device("cpu")
REAL, FAKE = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])  # D's scores


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


@pytest.mark.parametrize("name, d_loss, g_loss", [
    # -log sigmoid(real) - log(1 - sigmoid(fake)); G: -log sigmoid(fake)
    ("non-saturating", (softplus(-2) + softplus(1)) / 2 + (softplus(0.5) + softplus(-3)) / 2,
     (softplus(-0.5) + softplus(3)) / 2),
    ("wasserstein", -1.25 - 0.5, 1.25),
    ("hinge", (0 + 2) / 2 + (1.5 + 0) / 2, 1.25),  # relu(1 - real), relu(1 + fake)
    ("least-squares", (1 + 4) / 2 + (0.25 + 9) / 2, (0.25 + 16) / 2),
])
def test_each_loss_on_known_scores(name, d_loss, g_loss):
    loss = gan_losses.LOSSES[name]
    assert loss.discriminator(REAL, FAKE).item() == pytest.approx(d_loss, rel=1e-6)
    assert loss.generator(FAKE).item() == pytest.approx(g_loss, rel=1e-6)


def test_r1_of_a_linear_critic_is_its_squared_weight_norm_and_drift_the_mean_square():
    w = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])  # (1,2,2): ||w||^2 = 5.25
    real = torch.randn(3, 1, 2, 2).requires_grad_(True)
    scores = (w * real).sum((1, 2, 3))  # (3,)
    assert gan_losses.r1(scores, real).item() == pytest.approx(5.25)
    assert gan_losses.drift(REAL).item() == pytest.approx((4 + 1) / 2)


@pytest.mark.parametrize("loss", sorted(gan_losses.LOSSES))
def test_the_game_trains_with_every_loss(loss):
    torch.manual_seed(0)
    cfg = families.REGISTRY["dcgan"].Config(epochs=1, batch_size=8, lr=1e-3, width=8,
                                            latent_dim=4)
    model = GAN(cfg, dcgan_nets.Generator(4, 8, 1, 28), dcgan_nets.Discriminator(1, 8), CPU,
                MNIST_SPEC, loss=loss)
    before = params_of(model)
    logs = model.train_step(torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    assert all(torch.isfinite(v) for v in logs.values())
    after = params_of(model)
    for net in ("generator", "discriminator"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net))
    assert ("d_real" in logs) is gan_losses.LOSSES[loss].probabilities


def test_wgan_gp_drift_term_adds_eps_times_the_mean_squared_real_score():
    x, y = torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    logs = {}
    for eps in (0.0, 0.5):
        torch.manual_seed(0)
        cfg = families.REGISTRY["wgan_gp"].Config(epochs=1, batch_size=8, lr=1e-3, width=8,
                                                  latent_dim=4, n_critic=1, eps_drift=eps)
        logs[eps] = families.build("wgan_gp", cfg, CPU).train_step(x, y)
    assert "drift" not in logs[0.0] and logs[0.5]["drift"] > 0
    assert logs[0.5]["d_loss"].item() == pytest.approx(
        logs[0.0]["d_loss"].item() + 0.5 * logs[0.5]["drift"].item(), rel=1e-5)
    assert "g_loss" in logs[0.5]  # n_critic 1: the generator steps with the critic


# --- the EMA of the generator ------------------------------------------------------------------

def test_ema_warms_up_then_holds_its_decay():
    assert warmed_up(0.999, 0) == pytest.approx(0.1)
    assert warmed_up(0.999, 90) == pytest.approx(0.91)
    assert warmed_up(0.999, 100_000) == 0.999
    assert warmed_up(0.5, 100) == 0.5


def test_ema_update_moves_weights_by_one_minus_decay_and_copies_buffers():
    net = nn.BatchNorm1d(3)
    ema = EMA(net, 0.9)
    assert not any(p.requires_grad for p in ema.net.parameters()) and not ema.net.training
    with torch.no_grad():
        net.weight.fill_(2.0)  # from 1
        net.running_mean.fill_(7.0)
    ema.update(net, step=10_000)
    torch.testing.assert_close(ema.net.weight, torch.full((3,), 1.1))  # 1 + 0.1 * (2 - 1)
    torch.testing.assert_close(ema.net.running_mean, torch.full((3,), 7.0))


TINY_EMA = {"stylegan": dict(latent_dim=4, w_dim=16, mapping_layers=2, ema_decay=0.9),
            "progan": dict(latent_dim=4, width=4, max_width=16, resolution_steps=2, fade_steps=1,
                           ema_decay=0.9),
            # the plain GANs: unconditional, conditional, and a critic that steps twice per G step
            "mlp_gan": dict(latent_dim=4, ema_decay=0.9),
            "cgan": dict(latent_dim=4, ema_decay=0.9),
            "wgan_gp": dict(latent_dim=4, n_critic=2, ema_decay=0.9)}


def build_ema(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = families.REGISTRY[name].Config(**{"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8,
                                            **TINY_EMA[name], **overrides})
    return families.build(name, cfg, CPU)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 28, 28, generator=g), torch.zeros(8, dtype=torch.long)


@pytest.mark.parametrize("name", sorted(TINY_EMA))
def test_an_ema_decay_of_0_is_off_and_the_same_setting_as_null(name):
    """Both mean off; stored alike, a model or checkpoint made with one fits the other."""
    zero, null = build_ema(name, ema_decay=0), build_ema(name, ema_decay=None)
    assert zero.ema is None and null.ema is None
    assert zero.cfg.model_dump() == null.cfg.model_dump()


@pytest.mark.parametrize("name", sorted(TINY_EMA))
def test_ema_only_watches_training_and_is_what_samples_and_decodes(name):
    with_ema, without = build_ema(name), build_ema(name, ema_decay=None)
    for model in (with_ema, without):
        torch.manual_seed(3)  # the same draws in both runs
        for _ in range(5):
            model.train_step(*batch())
    assert same_params(params_of(with_ema), params_of(without))  # training is unchanged
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(with_ema.decode(z), without.decode(z))
    without.g.load_state_dict(with_ema.ema.net.state_dict())  # now G's weights are the EMA's
    torch.testing.assert_close(with_ema.decode(z), without.decode(z))
    draw = lambda m: m.sample(4, generator=torch.Generator().manual_seed(2))  # noqa: E731
    assert torch.equal(draw(with_ema), draw(without))


@pytest.mark.parametrize("name", sorted(TINY_EMA))
def test_ema_is_saved_and_a_resume_repeats_the_next_step_with_it(name):
    model = build_ema(name)
    for _ in range(3):
        model.train_step(*batch())
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    assert "generator_ema" in state
    model.train_step(*batch())
    resumed = build_ema(name, seed=1)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    resumed.train_step(*batch())
    assert same_params(params_of(resumed), params_of(model))
    assert same_params(resumed.ema.net.state_dict(), model.ema.net.state_dict())
