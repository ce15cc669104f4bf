"""Controllable generation without retraining: a classifier's gradient steers an unconditional
generator toward a requested class. Pure functions of networks handed in; no layers here.

- Latent steering (unconditional GANs, the VAE): gradient ascent on log p(c | decode(z)) with
  respect to the latent z, plus the prior's negative log-density prior_weight * |z|^2 / 2, which
  keeps z where the generator was trained. With prior_weight 1 the objective is the log
  posterior log p(z | c) up to a constant, so the result is the MAP latent for class c.
- Classifier guidance (an unconditional diffusion model): each noise prediction is shifted so
  that the predicted clean image x0_hat moves `scale` along grad log p(c | x0_hat).

The classifier must be in eval mode (BatchNorm statistics fixed, no dropout): otherwise an
image's gradient depends on the rest of its batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trilemma import diffusion
from trilemma.optim import adam

Decode = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # z (n,L) -> (n,C,S,S) [0,1]
Guide = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x_t, eps, t) -> eps


def log_prob(classifier: nn.Module, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target | image) under `classifier` for float images (n,C,S,S) in [0,1]: (n,)."""
    return F.log_softmax(classifier(images).float(), dim=1).gather(1, target[:, None])[:, 0]


def steering_loss(decode: Decode, classifier: nn.Module, z: torch.Tensor, target: torch.Tensor,
                  prior_weight: float) -> torch.Tensor:
    """Per latent (n,): -log p(target | decode(z)) + prior_weight * |z|^2 / 2."""
    return -log_prob(classifier, decode(z, None), target) + prior_weight * z.square().sum(1) / 2


def steer(decode: Decode, classifier: nn.Module, z0: torch.Tensor, target: torch.Tensor,
          steps: int, lr: float, prior_weight: float) -> torch.Tensor:
    """Latents (n,L) moved from z0 toward class `target` (n,) by `steps` Adam steps on
    `steering_loss`. Each latent's loss depends on that latent alone (eval-mode networks), so
    one optimiser on the summed loss moves every latent as if it were steered by itself."""
    z = z0.detach().clone().to(target.device).requires_grad_(True)
    opt = adam([z], lr)  # Adam, without the compiler import torch.optim's own step brings
    for _ in range(steps):
        loss = steering_loss(decode, classifier, z, target, prior_weight).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward(inputs=[z])  # the latent's gradient only: the networks stay untouched
        opt.step()
    return z.detach()


def x0_guide(classifier: nn.Module, alpha_bar: torch.Tensor, labels: torch.Tensor,
             scale: float) -> Guide:
    """A `guide` for `diffusion.sample_loop` (through `Diffusion.denoise`): classifier guidance
    with a clean-image classifier on the predicted x0 (the judge never saw noisy images, so it is
    asked about x0_hat instead). The loop hands it the noise prediction whatever the network
    predicts (eps or v).

    The gradient is taken with eps held constant, not through the U-Net: then
    d x0_hat / d x_t = 1 / sqrt(ab_t), no backward pass through the U-Net is needed (it costs
    about twice its forward pass at every step), and the shift is expressed on x0_hat directly:
    x0_hat += scale * grad_x0 log p(y | x0_hat), the noise re-derived from it. Measured on x0 the
    push has the same size at every t; Dhariwal & Nichol's x_t-space formula with constant eps
    would scale it by (1 - ab_t) / ab_t, about 10^4 at the first step. scale 0 returns eps
    itself, so unguided sampling is reproduced exactly. x_t (n,C,S,S) lives in [-1,1]."""

    def guide(x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        if scale == 0:
            return eps
        ab = alpha_bar[t].to(x_t)  # () in the images' dtype
        with torch.enable_grad():  # the sampling loop runs under no_grad
            x0 = diffusion.predict_x0(x_t, eps, ab).clamp(-1, 1).detach().requires_grad_(True)
            total = log_prob(classifier, (x0 + 1) / 2, labels.to(x_t.device)).sum()
            (grad,) = torch.autograd.grad(total, x0)  # (n,C,S,S), per image: eval-mode classifier
        # x0 + scale*grad is the image whose eps is eps - sqrt(ab/(1-ab)) * scale * grad
        return eps - (ab / (1 - ab)).sqrt() * scale * grad

    return guide
