"""Every adversarial loss and regulariser of the GAN and image-to-image families, written once.

A loss is a pair of functions of the discriminator's raw scores (logits): `discriminator(real,
fake)` (what D minimises) and `generator(fake)` (what G minimises, on scores of fakes that carry
G's graph). Regularisers take what they need (the critic and its inputs, or scores and the inputs
they came from):

- non-saturating: BCE with logits, D pushes real to 1 and fake to 0, G maximises log D(G(z))
  (Goodfellow et al., 2014; DCGAN, StyleGAN, pix2pix, SRGAN)
- wasserstein: the critic's E[D(fake)] - E[D(real)], G's -E[D(G(z))] (Arjovsky et al., 2017)
- hinge: E[relu(1 - D(real))] + E[relu(1 + D(fake))], G's -E[D(G(z))] (Lim & Ye, 2017; SAGAN)
- least-squares: (D(real) - 1)^2 and D(fake)^2, G's (D(G(z)) - 1)^2 (Mao et al., 2017; CycleGAN)
- gradient_penalty (WGAN-GP, Gulrajani et al., 2017), r1 (Mescheder et al., 2018) and drift
  (ProGAN, Karras et al., 2018)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from trilemma import distributed

Scores = torch.Tensor  # (B,) or patch scores (B,1,H,W): the discriminator's raw outputs


def _bce(scores: Scores, target: float) -> torch.Tensor:
    """Mean BCE with logits of every score against a constant target (1 real, 0 fake)."""
    ones_or_zeros = torch.ones_like(scores) if target == 1 else torch.zeros_like(scores)
    return F.binary_cross_entropy_with_logits(scores, ones_or_zeros)


def nonsaturating_d(real: Scores, fake: Scores) -> torch.Tensor:
    return _bce(real, 1) + _bce(fake, 0)


def nonsaturating_g(fake: Scores) -> torch.Tensor:
    return _bce(fake, 1)


def wasserstein_d(real: Scores, fake: Scores) -> torch.Tensor:
    return fake.mean() - real.mean()


def critic_g(fake: Scores) -> torch.Tensor:
    """G's loss under a critic that is not a probability (wasserstein, hinge): raise its score."""
    return -fake.mean()


def hinge_d(real: Scores, fake: Scores) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def _squared_error(scores: Scores, target: float) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, target))


def least_squares_d(real: Scores, fake: Scores) -> torch.Tensor:
    return _squared_error(real, 1.0) + _squared_error(fake, 0.0)


def least_squares_g(fake: Scores) -> torch.Tensor:
    return _squared_error(fake, 1.0)


@dataclass(frozen=True)
class Loss:
    discriminator: Callable[[Scores, Scores], torch.Tensor]  # (real, fake) -> D's loss
    generator: Callable[[Scores], torch.Tensor]  # fake -> G's loss
    probabilities: bool  # scores are logits of "real": log sigmoid means, not a distance


LOSSES = {
    "non-saturating": Loss(nonsaturating_d, nonsaturating_g, True),
    "wasserstein": Loss(wasserstein_d, critic_g, False),
    "hinge": Loss(hinge_d, critic_g, False),
    "least-squares": Loss(least_squares_d, least_squares_g, False),
}


def score_logs(loss: Loss, real: Scores, fake: Scores) -> dict[str, torch.Tensor]:
    """What to log of D's scores: the mean probability of "real" given to real and to fake
    images for a logistic D; the score gap (a Wasserstein estimate for a critic) otherwise."""
    if loss.probabilities:
        return {"d_real": torch.sigmoid(real).mean(), "d_fake": torch.sigmoid(fake).mean()}
    return {"wasserstein": real.mean() - fake.mean()}


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor) -> torch.Tensor:
    """E[(||grad critic(x_hat)||_2 - 1)^2] at random points x_hat between real and fake samples:
    keeps the critic near 1-Lipschitz, as the Wasserstein distance's dual form requires."""
    eps = distributed.rand(len(real), 1, 1, 1, device=real.device)  # (B,1,1,1)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def r1(real_scores: Scores, real: torch.Tensor) -> torch.Tensor:
    """E||grad_x D(x)||^2 at real images x (which must require grad before D sees them): D's
    slope at the data, penalised so that it does not overshoot around it."""
    (grad,) = torch.autograd.grad(real_scores.sum(), real, create_graph=True)
    return grad.square().sum((1, 2, 3)).mean()


def drift(real_scores: Scores) -> torch.Tensor:
    """E[D(real)^2]: keeps a critic's scores near 0 (ProGAN's eps_drift term), so an unbounded
    Wasserstein critic cannot drift away while it is updated as often as the generator."""
    return real_scores.square().mean()
