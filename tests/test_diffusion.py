"""Denoising diffusion as families: the U-Net, and the `ddpm` / `cfg_diffusion` families'
sampling (timestep grids, guidance, predictions), EMA, training recipe and label dropout. The
pure functions are tested in test_diffusion_math.py."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_resume_repeats_the_next_step, params_of, same_params

from trilemma import diffusion, families, registry
from trilemma.data import ImageSpec
from trilemma.nets.unet import UNet, timestep_embedding
from trilemma.train import fit

CPU = torch.device("cpu")
TINY = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "widths": [8, 16], "patch": 2, "timesteps": 20}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return families.build(name, families.REGISTRY[name].Config(**{**TINY, **overrides}), CPU)


def fake_batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n,1,28,28) in [0,1] and digits y (n,): training mechanics need no real data."""
    g = gen(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def jiggle(net: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Add noise to every weight: the zero-initialised convolutions (each ResBlock's last, the
    head) otherwise hide the time and label embeddings and make every output zero."""
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p))


class CallRecorder:
    """A forward pre-hook keeping the (x, t, y) arguments of every call of a network."""

    def __init__(self, net: torch.nn.Module):
        self.calls: list[tuple] = []
        self.handle = net.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls.append(tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args))

    @property
    def batches(self) -> list[int]:
        return [len(x) for x, *_ in self.calls]


# --- U-Net -----------------------------------------------------------------------------------

@pytest.mark.parametrize("widths, patch", [([8, 16, 16], 1), ([8, 16], 2), ([4], 1),
                                           ([8, 8, 8, 8], 1), ([8, 8, 8, 8], 2)])
def test_unet_output_has_the_input_shape(widths, patch):
    torch.manual_seed(0)
    net = UNet(widths, patch=patch)
    jiggle(net)
    out = net(torch.randn(3, 1, 28, 28), torch.tensor([0, 5, 19]))
    assert out.shape == (3, 1, 28, 28)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("widths, patch", [([8, 16, 16], 1), ([8, 16], 2)])
def test_fresh_unet_predicts_zero_until_trained(widths, patch):
    torch.manual_seed(0)
    net = UNet(widths, patch=patch)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 7, 999])
    assert torch.equal(net(x, t), torch.zeros_like(x))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = (net(x, t) - torch.randn_like(x)).square().mean()
    loss.backward()
    opt.step()
    assert net(x, t).abs().max() > 0


def test_conditional_unet_output_depends_on_the_label_and_the_time():
    torch.manual_seed(0)
    net = UNet([8, 16], classes=10, patch=2).eval()
    assert net.label.num_embeddings == 11  # ten digits and "no label"
    jiggle(net)
    x = torch.randn(1, 1, 28, 28).expand(11, -1, -1, -1)
    out = net(x, torch.full((11,), 7), torch.arange(11))
    torch.testing.assert_close(net(x[:1], torch.tensor([7]), torch.tensor([3])), out[3:4])
    for i in range(11):
        for j in range(i):
            assert not torch.allclose(out[i], out[j])
    other_t = net(x[:1], torch.tensor([500]), torch.tensor([3]))
    assert not torch.allclose(other_t, out[3:4])


def test_unet_builds_and_runs_for_every_width_the_config_accepts():
    model = build("ddpm", widths=[5, 10])
    losses = model.train_step(*fake_batch())
    assert torch.isfinite(losses["loss"])


def test_timestep_embedding_is_cos_then_sin_of_t_times_frequencies():
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 16)
    assert emb.shape == (4, 16)
    assert emb.min() >= -1 and emb.max() <= 1
    assert torch.equal(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    # the first frequency is 1: cos(t) and sin(t); the others fall geometrically to 1/10000^(7/8)
    torch.testing.assert_close(emb[:, 0], t.float().cos())
    torch.testing.assert_close(emb[:, 8], t.float().sin())
    torch.testing.assert_close(emb[1, 7], torch.tensor(10000 ** (-7 / 8)).cos())
    assert len({tuple(row.tolist()) for row in emb}) == 4  # distinct steps, distinct embeddings


# --- the families: sampling loop -------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddpm", "cfg_diffusion"])
def test_ddim_sampler_on_two_steps_gives_uint8_images(name):
    model = build(name)
    jiggle(model.ema.net)
    record = CallRecorder(model.ema.net)
    images = model.sample(5, generator=gen(0), steps=2)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.uint8
    assert len(record.calls) == 2
    assert [int(t[0]) for _, t, *_ in record.calls] == [19, 0]


@pytest.mark.parametrize("name", ["ddpm", "cfg_diffusion"])
def test_steps_ddpm_runs_the_ancestral_sampler_on_all_t_steps(name):
    model = build(name)
    jiggle(model.ema.net)
    record = CallRecorder(model.ema.net)
    images = model.sample(3, generator=gen(0), steps="ddpm")
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.uint8
    assert len(record.calls) == 20
    assert [int(t[0]) for _, t, *_ in record.calls] == list(range(19, -1, -1))
    # ancestral: noise enters on every step, so another generator seed gives other images
    assert not torch.equal(images, model.sample(3, generator=gen(1), steps="ddpm"))


def test_ddim_with_eta_zero_samples_the_same_images_from_the_same_start():
    model = build("ddpm")
    jiggle(model.ema.net)
    a = model.sample(3, generator=gen(0), steps=5)
    b = model.sample(3, generator=gen(0), steps=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("guidance, calls, batch", [(3.0, 4, 12), (0.0, 4, 6), (1.0, 4, 6)])
def test_guidance_runs_one_doubled_batch_or_a_single_pass(guidance, calls, batch):
    model = build("cfg_diffusion")
    jiggle(model.ema.net)
    record = CallRecorder(model.ema.net)
    model.sample(6, generator=gen(0), steps=calls, guidance=guidance)
    assert record.batches == [batch] * calls
    labels = torch.arange(6) % 10  # the default digits
    for _, _, y in record.calls:
        if guidance == 3.0:
            assert torch.equal(y, torch.cat([labels, torch.full((6,), 10)]))
        elif guidance == 0.0:
            assert torch.equal(y, torch.full((6,), 10))
        else:
            assert torch.equal(y, labels)


def test_guidance_with_three_classes_cycles_them_and_uses_token_three_for_no_label():
    torch.manual_seed(0)
    image = ImageSpec(3, 16, ("a", "b", "c"))
    model = families.build("cfg_diffusion", families.REGISTRY["cfg_diffusion"].Config(**TINY), CPU,
                           image)
    assert model.net.label.num_embeddings == 4  # three classes and "no label"
    jiggle(model.ema.net)
    record = CallRecorder(model.ema.net)
    images = model.sample(5, generator=gen(0), steps=2, guidance=3.0)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    for x, _, y in record.calls:
        assert x.shape == (10, 3, 16, 16)
        assert torch.equal(y, torch.cat([torch.arange(5) % 3, torch.full((5,), 3)]))


def test_ddpm_sampler_calls_its_net_without_labels():
    model = build("ddpm")
    record = CallRecorder(model.ema.net)
    model.sample(2, generator=gen(0), steps=3)
    assert record.batches == [2, 2, 2]
    assert all(len(args) == 2 for args in record.calls)  # (x, t): no label argument


def test_classifier_free_guidance_mixes_the_conditional_and_unconditional_predictions():
    model = build("cfg_diffusion")
    jiggle(model.ema.net)
    x = torch.randn(4, 1, 28, 28, generator=gen(0))
    labels = torch.tensor([1, 4, 7, 9])
    tt = torch.full((4,), 12)
    with torch.no_grad():
        uncond = model.ema.net(x, tt, torch.full((4,), 10))
        cond = model.ema.net(x, tt, labels)
        assert not torch.allclose(cond, uncond)  # the labels matter to this net
        torch.testing.assert_close(model._output(x, 12, labels, 0.0), uncond)
        torch.testing.assert_close(model._output(x, 12, labels, 1.0), cond)
        torch.testing.assert_close(model._output(x, 12, labels, 3.0),
                                   diffusion.guided_eps(uncond, cond, 3.0))


def test_denoise_from_a_small_start_runs_its_steps_over_0_to_start():
    model = build("ddpm")
    jiggle(model.ema.net)
    record = CallRecorder(model.ema.net)
    x = torch.randn(3, 1, 28, 28, generator=gen(0))
    out, kept = model.denoise(x, start=5, steps=3)
    assert out.shape == (3, 1, 28, 28) and kept == []
    assert len(record.calls) == 3
    assert [int(t[0]) for _, t, *_ in record.calls] == [5, 2, 0]


# --- the families: training ------------------------------------------------------------------

def test_ema_follows_the_weights_with_the_warm_up_decay():
    model = build("ddpm", ema_decay=0.5)
    initial = [p.detach().clone() for p in model.ema.net.parameters()]
    expected = [p.clone() for p in initial]
    for step in range(4):
        model.train_step(*fake_batch(seed=step))
        decay = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25, 0.31: warm-up; never 0.5
        for e, p in zip(expected, model.net.parameters()):
            e.lerp_(p.detach(), 1 - decay)
    ema, net = list(model.ema.net.parameters()), list(model.net.parameters())
    for e, p in zip(expected, ema):
        torch.testing.assert_close(p, e)
    assert any(not torch.equal(a, b) for a, b in zip(ema, initial))
    assert any(not torch.allclose(a, b) for a, b in zip(ema, net))
    assert all(not p.requires_grad for p in ema) and not model.ema.net.training


def test_ema_decay_zero_keeps_the_ema_equal_to_the_weights():
    model = build("ddpm", ema_decay=0.0)
    for step in range(3):
        model.train_step(*fake_batch(seed=step))
        for a, b in zip(model.ema.net.parameters(), model.net.parameters()):
            assert torch.equal(a, b)
    assert model.steps == 3


def test_train_step_reports_a_finite_loss_and_moves_the_weights():
    model = build("ddpm")
    before = [p.detach().clone() for p in model.net.parameters()]
    losses = model.train_step(*fake_batch())
    assert set(losses) == {"loss"} and torch.isfinite(losses["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters()))


@pytest.mark.parametrize("dropout, expect", [(1.0, "none"), (0.0, "digits")])
def test_label_dropout_replaces_the_digit_by_the_no_label_token(dropout, expect):
    model = build("cfg_diffusion", label_dropout=dropout)
    record = CallRecorder(model.net)
    x, y = fake_batch(16)
    model.train_step(x, y)
    (_, t, labels), = record.calls
    assert t.shape == (16,) and t.min() >= 0 and t.max() < 20
    assert torch.equal(labels, torch.full((16,), 10) if expect == "none" else y)


def test_half_label_dropout_keeps_some_digits_and_drops_others():
    model = build("cfg_diffusion", label_dropout=0.5)
    record = CallRecorder(model.net)
    x, y = fake_batch(64)
    model.train_step(x, y)
    (_, _, labels), = record.calls
    dropped = labels == 10
    assert 10 < dropped.sum() < 54
    assert torch.equal(labels[~dropped], y[~dropped])


@pytest.mark.parametrize("name", ["ddpm", "cfg_diffusion"])
def test_figures_take_a_test_set_of_fewer_than_8_images(name):
    model = build(name)
    x, y = fake_batch(n=5)
    figs = model.figures(x, y)
    assert set(figs) == {"denoising", "reconstruction"}
    assert len(figs["denoising"].axes[0].get_yticks()) == 5


# --- the families: fast-learning recipe ------------------------------------------------------

RECIPE = {"schedule": "cosine", "prediction": "v", "min_snr_gamma": 5.0, "warmup_steps": 4,
          "beta2": 0.99, "spacing": "trailing"}


def test_trailing_spacing_puts_the_last_call_at_high_noise():
    model = build("ddpm", spacing="trailing")
    jiggle(model.ema.net)
    record = CallRecorder(model.ema.net)
    model.sample(2, generator=gen(0), steps=2)
    assert [int(t[0]) for _, t, *_ in record.calls] == [19, 9]  # linspace: [19, 0]


@pytest.mark.parametrize("name", ["ddpm", "cfg_diffusion"])
def test_v_prediction_samples_through_the_eps_it_implies(name):
    """The same net read as v gives other images than read as eps: the loop converts."""
    v_model, eps_model = build(name, prediction="v"), build(name)
    jiggle(v_model.ema.net), jiggle(eps_model.ema.net)
    assert same_params(params_of(v_model), params_of(eps_model))
    v_images = v_model.sample(3, generator=gen(0), steps=3)
    assert v_images.dtype == torch.uint8 and v_images.shape == (3, 1, 28, 28)
    assert not torch.equal(v_images, eps_model.sample(3, generator=gen(0), steps=3))


def test_warm_up_raises_the_learning_rate_linearly_and_adam_uses_beta2():
    model = build("ddpm", **RECIPE)
    assert model.opt.param_groups[0]["betas"] == (0.9, 0.99)
    rates = []
    for step in range(6):
        model.train_step(*fake_batch(seed=step))
        rates.append(model.opt.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3 * k / 4 for k in (1, 2, 3, 4, 4, 4)])


def test_cosine_schedule_warms_up_then_falls_along_a_half_cosine_to_zero():
    model = build("ddpm", **RECIPE, lr_schedule="cosine")
    model.plan(12)
    rates = []
    for step in range(12):
        model.train_step(*fake_batch(seed=step))
        rates.append(model.opt.param_groups[0]["lr"])
    # 4 warm-up steps, then 8 of cosine: progress k/8 at steps 4..11
    expected = [1e-3 * k / 4 for k in (1, 2, 3, 4)] + \
        [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert rates == pytest.approx(expected)
    assert rates[8] == pytest.approx(5e-4)  # half way through the cosine: half the lr
    model.steps = 12
    assert model.lr() == 0.0  # the last planned step has passed: nothing left to learn at


def test_fit_plans_the_cosine_over_the_steps_it_takes(tmp_path):
    """The cosine spans the steps `fit` takes (here 2 epochs of 3 batches: 6, not max_steps 50);
    latent diffusion's spans those after its autoencoder's."""
    x = torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(24) % 10
    for name, extra, span in (("ddpm", {}, 6), ("latent_diffusion", {"ae_steps": 2}, 4)):
        settings = {**registry.REGISTRY[name].tiny, **extra, "lr": 1e-3, "batch_size": 8,
                    "epochs": 2, "max_steps": 50, "lr_schedule": "cosine"}
        cfg = families.REGISTRY[name].Config(**settings)
        model = families.build(name, cfg, CPU)
        fit(model, x, y, cfg, name=name, device=CPU, seed=0,
            checkpoint=tmp_path / f"{name}.pt", fingerprint="f")
        diffusion = getattr(model, "diffusion", model)
        assert diffusion.lr_steps == span and diffusion.steps == span


def test_cosine_schedule_needs_the_runs_length():
    model = build("ddpm", lr_schedule="cosine")
    with pytest.raises(RuntimeError, match="plan"):
        model.train_step(*fake_batch())


def test_cosine_recipe_resumes_exactly():
    def planned(seed):
        model = build("ddpm", seed, **RECIPE, lr_schedule="cosine")
        model.plan(6)
        return model

    assert_resume_repeats_the_next_step(planned, fake_batch(), steps=5)


def test_recipe_trains_with_a_finite_loss_and_resumes_exactly():
    losses = build("cfg_diffusion", **RECIPE).train_step(*fake_batch())
    assert torch.isfinite(losses["loss"])
    assert_resume_repeats_the_next_step(lambda seed: build("cfg_diffusion", seed, **RECIPE),
                                        fake_batch(), steps=2)
