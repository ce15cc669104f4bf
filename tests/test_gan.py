"""The GAN game (losses, conditioning, critic schedule, sampling mode), DCGAN's initialisation and
how the training loop averages and guards the losses a GAN reports."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trilemma import families
from trilemma.config import TrainConfig
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import TrainingDiverged
from trilemma.gan_losses import gradient_penalty
from trilemma.nets import dcgan as dcgan_nets
from trilemma.train import fit

CPU = torch.device("cpu")
TINY = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8, "latent_dim": 4}


def build(name: str, seed: int = 0, image: ImageSpec = MNIST_SPEC, **overrides):
    torch.manual_seed(seed)
    return families.build(name, families.REGISTRY[name].Config(**{**TINY, **overrides}), CPU,
                          image)


def fake_batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n,1,28,28) in [0,1] and digits y (n,), random: the game's mechanics need no real data."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def generator_params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.g.parameters()]


# --- gradient penalty ------------------------------------------------------------------------

class LinearCritic(nn.Module):
    """f(x) = sum over (C,H,W) of w * x: its gradient is w at every point."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (self.w * x).sum(dim=(1, 2, 3))  # (B,)


def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared():
    w = torch.full((2, 3, 3), 0.5)  # ||w|| = 0.5 * sqrt(18)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    penalty = gradient_penalty(LinearCritic(w), real, fake)
    expected = (0.5 * math.sqrt(18) - 1) ** 2
    assert penalty.item() == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_trains_the_critic_through_its_gradient():
    """The penalty must be differentiable in the critic's weights (a double backward)."""
    w = torch.full((1, 2, 2), 1.0)  # ||w|| = 2
    critic = LinearCritic(w.clone())
    penalty = gradient_penalty(critic, torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2))
    penalty.backward()
    norm = w.norm()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.w.grad, 2 * (norm - 1) * w / norm)


# --- conditioning ----------------------------------------------------------------------------

def test_conditional_generator_input_appends_the_one_hot_digit():
    model = build("cgan")
    z, labels = torch.randn(5, 4), torch.tensor([0, 3, 9, 3, 7])
    g_in = model._g_input(z, labels)
    assert g_in.shape == (5, 4 + 10)
    torch.testing.assert_close(g_in[:, :4], z)
    torch.testing.assert_close(g_in[:, 4:], F.one_hot(labels, 10).float())


def test_conditional_discriminator_input_adds_ten_constant_label_channels():
    model = build("cgan")
    x, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 9, 3, 7])
    d_in = model._d_input(x, labels)
    assert d_in.shape == (5, 11, 28, 28)
    torch.testing.assert_close(d_in[:, :1], x)
    maps = d_in[:, 1:]
    assert torch.equal(maps, maps[:, :, :1, :1].expand_as(maps))  # constant over each map
    torch.testing.assert_close(maps[:, :, 0, 0], F.one_hot(labels, 10).float())


def test_conditioning_is_as_wide_as_the_number_of_classes():
    model = build("cgan", image=ImageSpec(3, 32, ("cat", "dog", "bird")))
    labels = torch.tensor([2, 0, 1])
    assert model._g_input(torch.randn(3, 4), labels).shape == (3, 4 + 3)
    x = torch.rand(3, 3, 32, 32)
    d_in = model._d_input(x, labels)
    assert d_in.shape == (3, 3 + 3, 32, 32)
    torch.testing.assert_close(d_in[:, 3:, 5, 7], F.one_hot(labels, 3).float())
    # the default labels cycle through the three classes
    assert model.generate(torch.randn(4, 4)).shape == (4, 3, 32, 32)


def test_unconditional_game_passes_inputs_unchanged():
    model = build("dcgan")
    z, x = torch.randn(5, 4), torch.rand(5, 1, 28, 28)
    assert model._g_input(z, None) is z
    assert model._d_input(x, None) is x


def test_conditional_train_step_runs_with_its_batch_labels():
    model = build("cgan")
    losses = model.train_step(*fake_batch())
    assert all(torch.isfinite(v) for v in losses.values())


# --- critic schedule -------------------------------------------------------------------------

def test_wgan_gp_updates_the_generator_every_n_critic_steps_only():
    model = build("wgan_gp", n_critic=3)
    stepped, reported = [], []
    for step in range(8):
        before = generator_params(model)
        logs = model.train_step(*fake_batch(seed=step))
        after = generator_params(model)
        if any(not torch.equal(a, b) for a, b in zip(before, after)):
            stepped.append(step)
        if "g_loss" in logs:
            reported.append(step)
        assert {"d_loss", "wasserstein", "gradient_penalty"} <= logs.keys()
    assert stepped == [0, 3, 6]
    assert reported == [0, 3, 6]
    assert model.steps == 8


def test_bce_game_updates_the_generator_every_step():
    model = build("dcgan")
    for step in range(3):
        before = generator_params(model)
        logs = model.train_step(*fake_batch(seed=step))
        assert "g_loss" in logs
        assert any(not torch.equal(a, b) for a, b in zip(before, generator_params(model)))


# --- sampling --------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_generate_leaves_the_generator_mode_as_it_found_it(training):
    model = build("dcgan")
    model.g.train(training)
    model.generate(torch.randn(4, 4))
    assert model.g.training is training
    assert all(m.training is training for m in model.g.modules())


def test_generated_image_does_not_depend_on_the_rest_of_its_batch():
    """BatchNorm must run on its running statistics while generating."""
    model = build("dcgan")
    model.train_step(*fake_batch())  # running statistics away from their initial values
    model.g.train()
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    alone, in_batch = model.generate(z[:1]).int(), model.generate(z)[:1].int()
    assert (alone - in_batch).abs().max() <= 1  # float rounding only; batch statistics move far more


# --- DCGAN initialisation --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dcgan", "wgan_gp", "cgan"])
def test_dcgan_init_draws_conv_weights_with_std_002_and_batchnorm_around_one(name):
    model = build(name, width=64, latent_dim=100)
    convs = [m for net in model.nets.values() for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for net in model.nets.values() for m in net.modules()
             if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(convs) == 4
    for conv in convs:
        assert conv.weight.std().item() == pytest.approx(0.02, abs=0.002)
        assert conv.weight.mean().abs().item() < 0.003
        assert conv.bias is None or torch.all(conv.bias == 0)
    assert len(norms) == 2  # the generator's; the WGAN critic has none
    for norm in norms:
        assert norm.weight.mean().item() == pytest.approx(1.0, abs=0.01)
        assert norm.weight.std().item() == pytest.approx(0.02, abs=0.005)  # drawn, not left at 1
        assert torch.all(norm.bias == 0)


def test_init_weights_leaves_other_layers_alone():
    linear = nn.Linear(10, 10)
    before = linear.weight.detach().clone()
    dcgan_nets.init_weights(linear)
    assert torch.equal(linear.weight, before)


# --- the training loop with GAN-style losses -------------------------------------------------

class EveryOtherStep:
    """A trainee reporting `every` (the step number) on every step and `even` on even steps only."""

    def __init__(self):
        self.net = nn.Linear(1, 1)
        self.nets = {"net": self.net}
        self.step = 0

    def train_step(self, x, y):
        logs = {"every": torch.tensor(float(self.step))}
        if self.step % 2 == 0:
            logs["even"] = torch.tensor(float(self.step))
        self.step += 1
        return logs

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = state["step"]


def test_fit_averages_a_loss_over_the_steps_that_reported_it(tmp_path):
    x, y = torch.zeros(64, 1, 28, 28, dtype=torch.uint8), torch.zeros(64, dtype=torch.int64)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3)  # 8 steps per epoch
    history = fit(EveryOtherStep(), x, y, cfg, name="toy", device=CPU, seed=0,
                  checkpoint=tmp_path / "ck.pt", fingerprint="fp")
    assert history[0]["every"] == pytest.approx(3.5)  # mean of 0..7
    assert history[0]["even"] == pytest.approx(3.0)  # mean of 0, 2, 4, 6 (not 12 / 8)
    assert history[1]["every"] == pytest.approx(11.5)  # counts restart each epoch
    assert history[1]["even"] == pytest.approx(11.0)


@pytest.mark.parametrize("name", ["dcgan", "wgan_gp"])
def test_fit_stops_on_a_gan_nan_loss_and_keeps_the_last_good_checkpoint(name, tmp_path):
    model = build(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=g)  # (N,C,S,S)
    y = torch.randint(0, 10, (32,), generator=g)
    checkpoint = tmp_path / "ck.pt"

    def poison(row):  # after epoch 1 is saved, the discriminator's output layer goes NaN
        with torch.no_grad():
            model.d.net[-1].weight.fill_(float("nan"))

    cfg = model.cfg.model_copy(update={"epochs": 3, "batch_size": 16})
    with pytest.raises(TrainingDiverged, match="epoch 2") as err:
        fit(model, x, y, cfg, name=name, device=CPU, seed=0, checkpoint=checkpoint,
            fingerprint="fp", on_epoch=poison)
    assert "d_loss" in str(err.value) and "kept" in str(err.value)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    assert all(torch.isfinite(v).all() for v in saved["trainee"]["discriminator"].values()
               if v.is_floating_point())
