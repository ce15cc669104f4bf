"""Denoising diffusion as pure functions: noise schedules (float64), the forward process, the DDPM
ancestral step, the DDIM step, and classifier-free guidance mixing.

Conventions: t runs from 0 (least noise) to T-1; `alpha_bar` is the (T,) float64 tensor of
cumulative products; t_prev = -1 stands for the clean image (alpha_bar = 1). Images live in
[-1, 1]. A step maps x_t to x_{t_prev} for any earlier t_prev, so the same functions sample on
the full T steps or on a respaced subset of them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


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


def timesteps(total: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down to 0, evenly spaced (all T when steps >= T)."""
    steps = min(steps, total)
    return torch.linspace(total - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): eps_u + w (eps_c - eps_u). w=0 is the
    unconditional model, w=1 the conditional one, w>1 pushes further toward the label."""
    return eps_uncond + scale * (eps_cond - eps_uncond)
