"""Denoising diffusion as pure functions: the noise schedules against golden values and closed
forms, the forward process, eps/v/x0 conversions and the min-SNR loss weights against
hand-computed values, DDPM and DDIM steps against each other and a perfect predictor, the
timestep grids, the one sampling loop, and the DDIM step against diffusers' DDIMScheduler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trilemma import diffusion
from trilemma.denoising import DiffusionConfig


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    DiffusionConfig(epochs=1, batch_size=8, lr=1e-3, timesteps=T)  # accepted
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


# --- eps / v / x0 and the loss: golden values by hand -----------------------------------------
# ab = 0.64: a = sqrt(ab) = 0.8, s = sqrt(1 - ab) = 0.6; x0 = -0.5, eps = 2:
# x_t = 0.8 * -0.5 + 0.6 * 2 = 0.8 and v = 0.8 * 2 - 0.6 * -0.5 = 1.9
AB, X0, EPS, X_T, V = (torch.tensor(value, dtype=torch.float64)
                       for value in (0.64, -0.5, 2.0, 0.8, 1.9))


def test_v_target_is_a_eps_minus_s_x0_by_hand():
    torch.testing.assert_close(diffusion.v_target(X0, EPS, AB), V, rtol=0, atol=1e-12)
    torch.testing.assert_close(diffusion.q_sample(X0.reshape(1, 1), torch.tensor([0]),
                                                  EPS.reshape(1, 1), AB.reshape(1)),
                               X_T.reshape(1, 1), rtol=0, atol=1e-12)


def test_v_converts_to_the_noise_and_the_clean_image_by_hand():
    # eps = s x_t + a v = 0.48 + 1.52 = 2;  x0 = a x_t - s v = 0.64 - 1.14 = -0.5
    torch.testing.assert_close(diffusion.eps_from_v(X_T, V, AB), EPS, rtol=0, atol=1e-12)
    torch.testing.assert_close(diffusion.x0_from_v(X_T, V, AB), X0, rtol=0, atol=1e-12)
    # and the eps route agrees: x0 = (x_t - s eps) / a = (0.8 - 1.2) / 0.8
    torch.testing.assert_close(diffusion.predict_x0(X_T, EPS, AB), X0, rtol=0, atol=1e-12)


def test_to_eps_passes_an_eps_output_through_and_converts_a_v_output():
    out = torch.randn(2, 1, 3, 3, generator=gen(0))
    assert diffusion.to_eps(out, out * 0, AB.float(), "eps") is out
    torch.testing.assert_close(diffusion.to_eps(V, X_T, AB, "v"), EPS, rtol=0, atol=1e-12)


def test_min_snr_weights_by_hand():
    # SNR = ab / (1 - ab) = 1/9, 1, 4, 9; gamma 5. eps: min(SNR, 5) / SNR; v: min(SNR, 5) / (SNR + 1)
    ab = torch.tensor([0.1, 0.5, 0.8, 0.9], dtype=torch.float64)
    torch.testing.assert_close(diffusion.min_snr_weight(ab, 5.0, "eps"),
                               torch.tensor([1, 1, 1, 5 / 9], dtype=torch.float64))
    torch.testing.assert_close(diffusion.min_snr_weight(ab, 5.0, "v"),
                               torch.tensor([0.1, 0.5, 0.8, 0.5], dtype=torch.float64))


def test_denoising_loss_by_hand():
    # alpha_bar 0.9 and 0.5 (SNR 9, 1); x0 = 0, noise = 1, output = 0. eps targets 1: MSE 1, 1;
    # v targets a = sqrt(ab): MSE 0.9, 0.5. gamma 5 weighs eps 5/9, 1 and v 0.5, 0.5
    alpha_bar = torch.tensor([0.9, 0.5], dtype=torch.float64)
    t, x0 = torch.tensor([0, 1]), torch.zeros(2, 1, 2, 2)
    noise, out = torch.ones_like(x0), torch.zeros_like(x0)
    loss = lambda prediction, gamma: diffusion.denoising_loss(  # noqa: E731
        out, x0, noise, t, alpha_bar, prediction, gamma).item()
    assert loss("eps", None) == pytest.approx(1.0)
    assert loss("v", None) == pytest.approx(0.7)
    assert loss("eps", 5.0) == pytest.approx((5 / 9 + 1) / 2)
    assert loss("v", 5.0) == pytest.approx((0.9 * 0.5 + 0.5 * 0.5) / 2)


def test_unweighted_eps_loss_is_exactly_the_plain_mse():
    """The old objective stays bit for bit: no weighting means F.mse_loss itself."""
    g = gen(2)
    out, x0, noise = (torch.randn(4, 1, 5, 5, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 500, 999])
    assert torch.equal(diffusion.denoising_loss(out, x0, noise, t, linear(), "eps"),
                       F.mse_loss(out, noise))


# --- trailing timesteps and the sampling loop ------------------------------------------------

def test_trailing_grid_by_hand():
    # Lin et al. (2024): round(T - k T / steps) - 1 for k = 0 .. steps-1 (ties to even)
    assert diffusion.timesteps(1000, 10, "trailing") == list(range(999, 0, -100))
    assert diffusion.timesteps(20, 8, "trailing") == [19, 17, 14, 11, 9, 7, 4, 1]
    assert diffusion.timesteps(6, 3, "trailing") == [5, 3, 1]
    assert diffusion.timesteps(1000, 1, "trailing") == [999]
    assert diffusion.timesteps(20, 50, "trailing") == list(range(19, -1, -1))


def test_trailing_grid_descends_from_t_minus_one_without_repeats():
    for total in (1, 2, 3, 7, 20, 999, 1000):
        for steps in (1, 2, 3, 5, 19, 20, 21, 50, 1000, 5000):
            ts = diffusion.timesteps(total, steps, "trailing")
            assert len(ts) == min(steps, total) and ts[0] == total - 1 and ts[-1] >= 0
            assert all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_loop_with_a_perfect_predictor_returns_the_clean_image(prediction, spacing):
    """A network that knows x0 (its eps or v at every x_t): deterministic DDIM on any grid, from
    x_T = q_sample(x0, T-1, noise), ends on x0. The loop must read the output as `prediction`."""
    ab = diffusion.alpha_bars(diffusion.cosine_betas(1000))
    g = gen(8)
    x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)

    def oracle(x_t: torch.Tensor, t: int) -> torch.Tensor:
        a = ab[t]
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction == "eps" else diffusion.v_target(x0, eps, a)

    x_T = diffusion.q_sample(x0, torch.full((3,), 999), noise, ab)
    out = diffusion.sample_loop(x_T, oracle, ab, diffusion.timesteps(1000, 7, spacing),
                                prediction=prediction, clip=False)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


def test_loop_hands_the_guide_eps_and_the_callback_every_step():
    ab = linear(20)
    ts = diffusion.timesteps(20, 4, "trailing")  # [19, 14, 9, 4]
    v = torch.randn(2, 1, 3, 3, generator=gen(9))
    seen, steps = [], []

    def guide(x_t, eps, t):
        seen.append(t)
        torch.testing.assert_close(eps, diffusion.eps_from_v(x_t, v, ab[t].float()))
        return eps

    diffusion.sample_loop(torch.randn(2, 1, 3, 3, generator=gen(1)), lambda x, t: v, ab, ts,
                          prediction="v", guide=guide,
                          callback=lambda i, t_prev, x: steps.append((i, t_prev)))
    assert seen == ts
    assert steps == [(0, 14), (1, 9), (2, 4), (3, -1)]


# --- against diffusers' schedulers (the reference implementation a user would pick) --------------

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_equals_diffusers_ddim_scheduler(schedule, prediction, eta):
    """Every step of a 10-step trailing DDIM run, fed the same network output, the same x_t and the
    same noise, lands where diffusers' DDIMScheduler.step does (clipped x0 with the noise made
    consistent with it: its `use_clipped_model_output`; alpha_bar = 1 after the last step: its
    `set_alpha_to_one`). In float64 on both sides (diffusers keeps alpha_bar in float32, whose
    rounding the eta=1 step's sqrt(1 - ab_prev - sigma^2) magnifies near T)."""
    from diffusers import DDIMScheduler

    T, steps = 1000, 10
    betas = diffusion.SCHEDULES[schedule](T)
    alpha_bar = diffusion.alpha_bars(betas)
    theirs = DDIMScheduler(num_train_timesteps=T, trained_betas=betas.numpy(), clip_sample=True,
                           set_alpha_to_one=True, timestep_spacing="trailing",
                           prediction_type="epsilon" if prediction == "eps" else "v_prediction")
    theirs.set_timesteps(steps)
    theirs.alphas_cumprod = alpha_bar.clone()  # the same schedule, in float64
    ts = diffusion.timesteps(T, steps, "trailing")
    assert theirs.timesteps.tolist() == ts
    g = gen(1)
    x = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    for i, t in enumerate(ts):
        output = torch.randn(x.shape, generator=g, dtype=torch.float64)  # any prediction will do
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = diffusion.to_eps(output, x, diffusion._at(alpha_bar, t, x), prediction)
        ours = diffusion.ddim_step(x, eps, t, t_prev, alpha_bar, eta, noise, clip=True)
        ref = theirs.step(output, t, x, eta=eta, use_clipped_model_output=True,
                          variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9, msg=f"step {i} (t={t})")
        x = ref
