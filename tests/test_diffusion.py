"""Denoising diffusion: the noise schedules against golden values and closed forms, the forward
process, DDPM and DDIM steps against each other and a perfect noise predictor, the U-Net, and the
`ddpm` / `cfg_diffusion` families' sampling loop, guidance, EMA and label dropout."""

from __future__ import annotations

import math

import pytest
import torch

from trilemma import diffusion, families
from trilemma.data import ImageSpec
from trilemma.nets.unet import UNet, timestep_embedding

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


def linear(T: int = 1000) -> torch.Tensor:
    return diffusion.alpha_bars(diffusion.linear_betas(T))


# --- schedules -------------------------------------------------------------------------------

def test_linear_schedule_runs_from_1e4_to_002_in_float64():
    betas = diffusion.linear_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.all(betas[1:] > betas[:-1])


def test_linear_alpha_bar_matches_golden_values():
    """Computed once with numpy: cumprod(1 - linspace(1e-4, 0.02, 1000)) in float64."""
    ab = linear()
    assert ab.dtype == torch.float64
    assert ab[0].item() == pytest.approx(0.9999, rel=1e-12)
    assert ab[499].item() == pytest.approx(0.07858724288177824, rel=1e-12)
    assert ab[999].item() == pytest.approx(4.035829765375676e-05, rel=1e-12)


def test_linear_schedule_scales_both_ends_by_1000_over_t():
    betas = diffusion.linear_betas(250)
    assert betas.shape == (250,)
    assert betas[0].item() == pytest.approx(4e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.08, rel=1e-12)
    assert diffusion.alpha_bars(betas)[-1].item() < 1e-3  # still almost pure noise at the end


@pytest.mark.parametrize("T", [2, 10, 19, 20])
def test_linear_schedule_stays_a_valid_process_for_every_accepted_t(T):
    families.REGISTRY["ddpm"].Config(**{**TINY, "timesteps": T})  # accepted
    betas = diffusion.linear_betas(T)
    ab = diffusion.alpha_bars(betas)
    assert torch.all((betas > 0) & (betas < 1))
    assert torch.all((ab > 0) & (ab <= 1))


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_cosine_alpha_bar_is_the_closed_form_where_betas_are_not_clipped(T):
    s = 0.008
    betas = diffusion.cosine_betas(T)
    ab = diffusion.alpha_bars(betas)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert torch.all(betas > 0) and torch.all(betas <= 0.999)
    assert torch.all(betas[:-1] < 0.999)  # only the last step is clipped
    assert betas[-1].item() == 0.999

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    # index t is step t+1 of the paper, whose alpha_bar is f((t+1)/T) / f(0)
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(ab[:-1], expected, rtol=1e-12, atol=1e-15)


def test_schedules_are_registered_by_name():
    assert diffusion.SCHEDULES["linear"] is diffusion.linear_betas
    assert diffusion.SCHEDULES["cosine"] is diffusion.cosine_betas


# --- forward process -------------------------------------------------------------------------

def test_q_sample_mixes_signal_and_noise_by_alpha_bar():
    ab = linear()
    g = gen(0)
    x0, noise = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    for t in (0, 499, 999):
        out = diffusion.q_sample(x0, torch.full((3,), t), noise, ab)
        a = ab[t].item()
        torch.testing.assert_close(out, math.sqrt(a) * x0 + math.sqrt(1 - a) * noise)
        assert out.dtype == x0.dtype


def test_q_sample_uses_each_examples_own_t():
    ab = linear()
    g = gen(1)
    x0, noise = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)
    t = torch.tensor([999, 0, 250, 700])
    out = diffusion.q_sample(x0, t, noise, ab)
    for i, ti in enumerate(t.tolist()):
        alone = diffusion.q_sample(x0[i:i + 1], torch.tensor([ti]), noise[i:i + 1], ab)
        torch.testing.assert_close(out[i:i + 1], alone)
    at_zero = diffusion.q_sample(x0[:1], torch.tensor([0]), noise[:1], ab)
    assert not torch.allclose(out[:1], at_zero)  # not the batch's first t for every example


def test_q_sample_of_a_zero_image_has_variance_one_minus_alpha_bar():
    ab = linear()
    noise = torch.randn(200_000, 1, 1, 1, generator=gen(2), dtype=torch.float64)
    x0 = torch.zeros_like(noise)
    for t in (0, 100, 999):
        out = diffusion.q_sample(x0, torch.full((len(x0),), t), noise, ab)
        assert out.mean().item() == pytest.approx(0.0, abs=0.01)
        assert out.var().item() == pytest.approx(1 - ab[t].item(), rel=0.02)


def test_t_minus_one_is_the_clean_image():
    ab = linear()
    x0, noise = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    torch.testing.assert_close(diffusion.q_sample(x0, torch.tensor([-1, -1]), noise, ab), x0)


# --- DDPM and DDIM steps ---------------------------------------------------------------------

STEPS = [(0, -1), (1, 0), (10, 9), (500, 499), (999, 998), (999, 949)]  # last: a respaced step


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t, t_prev", STEPS)
def test_ddim_with_eta_one_is_the_ddpm_ancestral_step(schedule, clip, t, t_prev):
    ab = diffusion.alpha_bars(diffusion.SCHEDULES[schedule](1000))
    g = gen(t)
    shape = (4, 1, 6, 6)
    x_t, eps, z = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    ddpm = diffusion.ddpm_step(x_t, eps, t, t_prev, ab, z, clip=clip)
    ddim = diffusion.ddim_step(x_t, eps, t, t_prev, ab, eta=1.0, noise=z, clip=clip)
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-10)


def test_clipping_changes_the_step_when_x0_leaves_the_data_range():
    """So that the clip=True case above compares something the clip=False case does not."""
    ab = linear()
    g = gen(0)
    x_t, eps, z = (torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = 3 * x_t
    assert not torch.allclose(diffusion.ddpm_step(x_t, eps, 10, 9, ab, z, clip=True),
                              diffusion.ddpm_step(x_t, eps, 10, 9, ab, z, clip=False))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_variance_of_consecutive_steps_is_the_beta_formula(schedule):
    betas = diffusion.SCHEDULES[schedule](1000)
    ab = diffusion.alpha_bars(betas)
    for t in (1, 2, 50, 500, 998, 999):
        expected = betas[t] * (1 - ab[t - 1]) / (1 - ab[t])
        assert diffusion.posterior_variance(ab, t, t - 1).item() == pytest.approx(
            expected.item(), rel=1e-10)
    assert diffusion.posterior_variance(ab, 0, -1).item() == 0.0  # nothing added to x_0


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_noise_scale_is_eta_times_the_posterior_std(eta):
    betas = diffusion.linear_betas(1000)
    ab = diffusion.alpha_bars(betas)
    g = gen(3)
    x_t, eps = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    for t in (1, 100, 999):
        with_noise = diffusion.ddim_step(x_t, eps, t, t - 1, ab, eta, torch.ones_like(x_t))
        without = diffusion.ddim_step(x_t, eps, t, t - 1, ab, eta, torch.zeros_like(x_t))
        sigma = with_noise - without  # (B,1,4,4), all sigma
        expected = eta ** 2 * betas[t] * (1 - ab[t - 1]) / (1 - ab[t])
        torch.testing.assert_close(sigma.square(), expected.expand_as(sigma), rtol=1e-9, atol=0)


def test_ddim_with_eta_zero_ignores_the_noise():
    ab = linear()
    g = gen(4)
    x_t, eps, z = (torch.randn(3, 1, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for t, t_prev in STEPS:
        assert torch.equal(diffusion.ddim_step(x_t, eps, t, t_prev, ab, 0.0, None),
                           diffusion.ddim_step(x_t, eps, t, t_prev, ab, 0.0, z))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("t, t_prev", STEPS)
def test_ddim_with_the_true_noise_lands_on_the_forward_process(schedule, t, t_prev):
    """eps_theta = the noise x_t was built with: x_{t_prev} = q_sample(x0, t_prev, same noise),
    and the last step (t_prev = -1) returns x0."""
    ab = diffusion.alpha_bars(diffusion.SCHEDULES[schedule](1000))
    g = gen(5)
    x0 = torch.rand(3, 1, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 5, 5, generator=g, dtype=torch.float64)
    x_t = diffusion.q_sample(x0, torch.full((3,), t), noise, ab)
    x_prev = diffusion.ddim_step(x_t, noise, t, t_prev, ab, eta=0.0, clip=False)
    expected = diffusion.q_sample(x0, torch.full((3,), t_prev), noise, ab)
    atol = 1e-10 if ab[t] > 1e-3 else 1e-8  # dividing by sqrt(alpha_bar) ~ 0.006 near the end
    torch.testing.assert_close(x_prev, expected, rtol=0, atol=atol)
    if t_prev == -1:
        torch.testing.assert_close(x_prev, x0, rtol=0, atol=1e-10)


def test_predict_x0_inverts_q_sample():
    ab = linear()
    g = gen(7)
    x0, noise = (torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    x_t = diffusion.q_sample(x0, torch.tensor([300, 300]), noise, ab)
    torch.testing.assert_close(diffusion.predict_x0(x_t, noise, ab[300]), x0)


# --- timesteps and guidance ------------------------------------------------------------------

def test_timesteps_descend_from_t_minus_one_to_zero_without_repeats():
    for total in (1, 2, 3, 7, 20, 999, 1000):
        for steps in (1, 2, 3, 5, 19, 20, 21, 50, 1000, 5000):
            ts = diffusion.timesteps(total, steps)
            assert len(ts) == min(steps, total)
            assert ts[0] == total - 1
            assert ts[-1] == (0 if len(ts) > 1 else total - 1)
            assert all(a > b for a, b in zip(ts, ts[1:]))  # descending, hence unique
            assert all(isinstance(t, int) for t in ts)
            for i, t in enumerate(ts[1:-1], start=1):  # the nearest step to even spacing
                assert abs(t - (total - 1) * (1 - i / (len(ts) - 1))) <= 0.5


def test_one_timestep_is_the_last_and_all_timesteps_are_every_step():
    assert diffusion.timesteps(1000, 1) == [999]
    assert diffusion.timesteps(20, 20) == list(range(19, -1, -1))
    assert diffusion.timesteps(6, 3) == [5, 2, 0]


def test_guided_eps_interpolates_and_extrapolates_between_the_two_predictions():
    g = gen(6)
    uncond, cond = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    torch.testing.assert_close(diffusion.guided_eps(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(diffusion.guided_eps(uncond, cond, 1.0), cond)
    torch.testing.assert_close(diffusion.guided_eps(uncond, cond, 2.0), 2 * cond - uncond)


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
    jiggle(model.ema)
    record = CallRecorder(model.ema)
    images = model.sample(5, generator=gen(0), steps=2)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.uint8
    assert len(record.calls) == 2
    assert [int(t[0]) for _, t, *_ in record.calls] == [19, 0]


@pytest.mark.parametrize("name", ["ddpm", "cfg_diffusion"])
def test_steps_ddpm_runs_the_ancestral_sampler_on_all_t_steps(name):
    model = build(name)
    jiggle(model.ema)
    record = CallRecorder(model.ema)
    images = model.sample(3, generator=gen(0), steps="ddpm")
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.uint8
    assert len(record.calls) == 20
    assert [int(t[0]) for _, t, *_ in record.calls] == list(range(19, -1, -1))
    # ancestral: noise enters on every step, so another generator seed gives other images
    assert not torch.equal(images, model.sample(3, generator=gen(1), steps="ddpm"))


def test_ddim_with_eta_zero_samples_the_same_images_from_the_same_start():
    model = build("ddpm")
    jiggle(model.ema)
    a = model.sample(3, generator=gen(0), steps=5)
    b = model.sample(3, generator=gen(0), steps=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("guidance, calls, batch", [(3.0, 4, 12), (0.0, 4, 6), (1.0, 4, 6)])
def test_guidance_runs_one_doubled_batch_or_a_single_pass(guidance, calls, batch):
    model = build("cfg_diffusion")
    jiggle(model.ema)
    record = CallRecorder(model.ema)
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
    jiggle(model.ema)
    record = CallRecorder(model.ema)
    images = model.sample(5, generator=gen(0), steps=2, guidance=3.0)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    for x, _, y in record.calls:
        assert x.shape == (10, 3, 16, 16)
        assert torch.equal(y, torch.cat([torch.arange(5) % 3, torch.full((5,), 3)]))


def test_ddpm_sampler_calls_its_net_without_labels():
    model = build("ddpm")
    record = CallRecorder(model.ema)
    model.sample(2, generator=gen(0), steps=3)
    assert record.batches == [2, 2, 2]
    assert all(len(args) == 2 for args in record.calls)  # (x, t): no label argument


def test_classifier_free_guidance_mixes_the_conditional_and_unconditional_predictions():
    model = build("cfg_diffusion")
    jiggle(model.ema)
    x = torch.randn(4, 1, 28, 28, generator=gen(0))
    labels = torch.tensor([1, 4, 7, 9])
    tt = torch.full((4,), 12)
    with torch.no_grad():
        uncond = model.ema(x, tt, torch.full((4,), 10))
        cond = model.ema(x, tt, labels)
        assert not torch.allclose(cond, uncond)  # the labels matter to this net
        torch.testing.assert_close(model._eps(x, 12, labels, 0.0), uncond)
        torch.testing.assert_close(model._eps(x, 12, labels, 1.0), cond)
        torch.testing.assert_close(model._eps(x, 12, labels, 3.0),
                                   diffusion.guided_eps(uncond, cond, 3.0))


def test_denoise_from_a_small_start_runs_its_steps_over_0_to_start():
    model = build("ddpm")
    jiggle(model.ema)
    record = CallRecorder(model.ema)
    x = torch.randn(3, 1, 28, 28, generator=gen(0))
    out, kept = model.denoise(x, start=5, steps=3)
    assert out.shape == (3, 1, 28, 28) and kept == []
    assert len(record.calls) == 3
    assert [int(t[0]) for _, t, *_ in record.calls] == [5, 2, 0]


# --- the families: training ------------------------------------------------------------------

def test_ema_follows_the_weights_with_the_warm_up_decay():
    model = build("ddpm", ema_decay=0.5)
    initial = [p.detach().clone() for p in model.ema.parameters()]
    expected = [p.clone() for p in initial]
    for step in range(4):
        model.train_step(*fake_batch(seed=step))
        decay = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25, 0.31: warm-up; never 0.5
        for e, p in zip(expected, model.net.parameters()):
            e.lerp_(p.detach(), 1 - decay)
    ema, net = list(model.ema.parameters()), list(model.net.parameters())
    for e, p in zip(expected, ema):
        torch.testing.assert_close(p, e)
    assert any(not torch.equal(a, b) for a, b in zip(ema, initial))
    assert any(not torch.allclose(a, b) for a, b in zip(ema, net))
    assert all(not p.requires_grad for p in ema) and not model.ema.training


def test_ema_decay_zero_keeps_the_ema_equal_to_the_weights():
    model = build("ddpm", ema_decay=0.0)
    for step in range(3):
        model.train_step(*fake_batch(seed=step))
        for a, b in zip(model.ema.parameters(), model.net.parameters()):
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
