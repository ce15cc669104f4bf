"""Denoising diffusion as pure functions: noise schedules (float64), the forward process, what
the network predicts (eps or v) and its loss, the DDPM ancestral step, the DDIM step, the
timestep grids, classifier-free guidance mixing, and the one sampling loop built from them.

Conventions: t runs from 0 (least noise) to T-1; `alpha_bar` is the (T,) float64 tensor of
cumulative products; t_prev = -1 stands for the clean image (alpha_bar = 1). Images live in
[-1, 1]. A step maps x_t to x_{t_prev} for any earlier t_prev, so the same functions sample on
the full T steps or on a respaced subset of them. With a = sqrt(ab), s = sqrt(1 - ab):
x_t = a x0 + s eps, and v = a eps - s x0 (Salimans & Ho, 2022).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F

Prediction = Literal["eps", "v"]  # what the network outputs: the noise, or v = a eps - s x0
Spacing = Literal["linspace", "trailing"]  # how `timesteps` spreads a few steps over 0..T-1


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al. (2020): beta from 1e-4 to 0.02 over T=1000. For other T both ends scale by 1000/T
    (as in Nichol & Dhariwal's code), so alpha_bar at the last step stays near zero; clipped at
    0.999 so that T <= 20 still gives a valid process (beta < 1, alpha_bar > 0)."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T)+s)/(1+s) * pi/2);
    betas clipped at 0.999 so the last step does not divide by zero."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {"linear": linear_betas,
                                                       "cosine": cosine_betas}


def alpha_bars(betas: torch.Tensor) -> torch.Tensor:
    """(T,) float64: prod_{s<=t} (1 - beta_s), the share of signal variance left at step t."""
    return torch.cumprod(1 - betas.double(), dim=0)


def _at(alpha_bar: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at t (scalar or (B,)), 1 where t < 0, shaped (B,1,1,1) and typed like `like`."""
    t = torch.as_tensor(t, device=alpha_bar.device)
    value = torch.where(t >= 0, alpha_bar[t.clamp(min=0)], torch.ones((), dtype=alpha_bar.dtype,
                                                                     device=alpha_bar.device))
    return value.reshape(-1, *([1] * (like.dim() - 1))).to(like)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x0, (1 - ab_t) I), with the given noise (B,...)."""
    ab = _at(alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The clean image implied by a noise prediction: (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def v_target(x0: torch.Tensor, noise: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0: the v-prediction network's target."""
    return ab.sqrt() * noise - (1 - ab).sqrt() * x0


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The noise implied by a v prediction: sqrt(1 - ab) x_t + sqrt(ab) v."""
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The clean image implied by a v prediction: sqrt(ab) x_t - sqrt(1 - ab) v."""
    return ab.sqrt() * x_t - (1 - ab).sqrt() * v


def to_eps(output: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor,
           prediction: Prediction) -> torch.Tensor:
    """The network's output at x_t as a noise prediction, the samplers' and guidance's currency;
    an eps output is returned as it is."""
    return output if prediction == "eps" else eps_from_v(x_t, output, ab)


def min_snr_weight(ab: torch.Tensor, gamma: float, prediction: Prediction) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., 2023) for alpha_bar values ab: the x0-error weight
    min(SNR, gamma) with SNR = ab / (1 - ab), divided by what the prediction's own MSE already
    weighs x0 errors by: SNR for eps, SNR + 1 for v."""
    snr = ab / (1 - ab)
    return snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)


def denoising_loss(output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   alpha_bar: torch.Tensor, prediction: Prediction,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """The training loss of a network's `output` (B,...) at x_t = q_sample(x0, t, noise): the MSE
    to its target (the noise, or v), each example weighted by min-SNR-gamma when gamma is set."""
    ab = _at(alpha_bar, t, x0)  # (B,1,...)
    target = noise if prediction == "eps" else v_target(x0, noise, ab)
    if min_snr_gamma is None:
        return F.mse_loss(output, target)
    weight = min_snr_weight(alpha_bar[t], min_snr_gamma, prediction)  # (B,) float64
    per_example = (output - target).square().flatten(1).mean(1)  # (B,)
    return (weight.to(per_example) * per_example).mean()


def _x0_and_eps(x_t, eps, ab, clip):
    """Predicted x0, clipped to the data range when asked, and the noise consistent with it."""
    x0 = predict_x0(x_t, eps, ab)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    return x0, eps


def posterior_variance(alpha_bar: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
    """Variance of q(x_{t_prev} | x_t, x_0): (1 - ab_prev)/(1 - ab_t) * (1 - ab_t/ab_prev)."""
    one = torch.ones((), dtype=alpha_bar.dtype)
    ab_t, ab_prev = alpha_bar[t], alpha_bar[t_prev] if t_prev >= 0 else one
    return (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, alpha_bar: torch.Tensor,
              noise: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """One ancestral step of Ho et al.: x_{t_prev} ~ q(x_{t_prev} | x_t, x0_hat), the posterior
    mean with its variance (no noise into the clean image)."""
    ab_t, ab_prev = _at(alpha_bar, t, x_t), _at(alpha_bar, t_prev, x_t)
    x0, _ = _x0_and_eps(x_t, eps, ab_t, clip)
    alpha = ab_t / ab_prev  # the product of (1 - beta) from t_prev+1 to t
    mean = (ab_prev.sqrt() * (1 - alpha) * x0 + alpha.sqrt() * (1 - ab_prev) * x_t) / (1 - ab_t)
    if t_prev < 0:
        return mean
    return mean + posterior_variance(alpha_bar, t, t_prev).sqrt().to(x_t) * noise


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, alpha_bar: torch.Tensor,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
    """One step of Song et al. (2021): x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps
    + s z with s = eta * sqrt(posterior variance). eta=0 is deterministic; eta=1 on every step
    is the DDPM ancestral step."""
    ab_t, ab_prev = _at(alpha_bar, t, x_t), _at(alpha_bar, t_prev, x_t)
    x0, eps = _x0_and_eps(x_t, eps, ab_t, clip)
    sigma = eta * posterior_variance(alpha_bar, t, t_prev).sqrt().to(x_t)
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0 and t_prev >= 0:
        x_prev = x_prev + sigma * noise
    return x_prev


def timesteps(total: int, steps: int, spacing: Spacing = "linspace") -> list[int]:
    """`steps` descending timesteps of 0..total-1 (all of them when steps >= total). "linspace":
    evenly spaced from total-1 down to 0, so the last network call works at almost no noise.
    "trailing" (Lin et al., 2024): total-1, then every total/steps down, ending at
    round(total/steps) - 1; the step after it lands on the clean image."""
    steps = min(steps, total)
    if spacing == "trailing":
        grid = total - torch.arange(steps, dtype=torch.float64) * (total / steps)
        return (grid.round().long() - 1).tolist()
    return torch.linspace(total - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): eps_u + w (eps_c - eps_u). w=0 is the
    unconditional model, w=1 the conditional one, w>1 pushes further toward the label. The same
    mix of two v predictions is the mix of their eps (eps is affine in v at a given x_t)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


Predict = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> the network's output
Guide = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x_t, eps, t) -> eps
Callback = Callable[[int, int, torch.Tensor], None]  # (i, t_prev, x_{t_prev}) after step i


def sample_loop(x: torch.Tensor, predict: Predict, alpha_bar: torch.Tensor, ts: list[int], *,
                prediction: Prediction = "eps", sampler: str = "ddim", eta: float = 0.0,
                clip: bool = True, generator: torch.Generator | None = None,
                guide: Guide | None = None, callback: Callback | None = None) -> torch.Tensor:
    """The reverse process from x = x_{ts[0]} (n,...) through the descending timesteps `ts` to
    the clean x_0, returned. At each t the network's output is turned into a noise prediction,
    which `guide` may shift (classifier guidance), then one DDPM (ancestral) or DDIM step goes to
    the next t, or to x_0 after the last. `clip` keeps the predicted x0 in [-1,1] (pixels, not
    latents). Noise is drawn from `generator` on the CPU; `callback` sees every new x."""
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = to_eps(predict(x, t), x, _at(alpha_bar, t, x), prediction)
        if guide is not None:
            eps = guide(x, eps, t)
        noise = None
        if (sampler == "ddpm" or eta > 0) and t_prev >= 0:
            noise = torch.randn(x.shape, generator=generator).to(x)
        if sampler == "ddpm":
            x = ddpm_step(x, eps, t, t_prev, alpha_bar, noise, clip)
        else:
            x = ddim_step(x, eps, t, t_prev, alpha_bar, eta, noise, clip)
        if callback is not None:
            callback(i, t_prev, x)
    return x
