"""Sample-quality metrics measured with the pipeline's own classifier (the judge).

FID and the Inception-style score come from torchmetrics with the judge plugged in as the feature
extractor, so the Frechet distance and the KL math are torchmetrics' own.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore

from trilemma.classifier import Judge


class _JudgeFeatures(nn.Module):
    """uint8 images (B,1,28,28) -> judge features (B,F): the FID feature space."""

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge = judge
        self.num_features = judge.head[-1].in_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images.float() / 255)


class _JudgeLogits(_JudgeFeatures):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge(images.float() / 255)  # (B,10)


def _batches(images: np.ndarray | torch.Tensor, batch_size: int, device: torch.device):
    images = torch.as_tensor(images)
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size].reshape(-1, 1, 28, 28).to(device)


@torch.no_grad()
def fid(judge: Judge, real: np.ndarray, fake: np.ndarray, device: torch.device,
        batch_size: int = 1000) -> float:
    """Frechet distance between judge features of two uint8 image sets (n,[1,]28,28)."""
    judge.eval()
    metric = FrechetInceptionDistance(feature=_JudgeFeatures(judge)).to(device)
    for batch in _batches(real, batch_size, device):
        metric.update(batch, real=True)
    for batch in _batches(fake, batch_size, device):
        metric.update(batch, real=False)
    return float(metric.compute())


@torch.no_grad()
def inception_score(judge: Judge, images: np.ndarray, device: torch.device, seed: int,
                    batch_size: int = 1000, splits: int = 10) -> tuple[float, float]:
    """exp(E KL(p(y|x) || p(y))) with the judge's softmax: mean and std over `splits` splits.
    10 means confident, evenly spread digits; 1 means one class or no confidence."""
    judge.eval()
    with warnings.catch_warnings():  # its note on buffering every feature: ours are 10 numbers
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_JudgeLogits(judge), splits=splits).to(device)
    for batch in _batches(images, batch_size, device):
        metric.update(batch)
    state = torch.get_rng_state()
    torch.manual_seed(seed)  # torchmetrics shuffles before splitting: make that repeatable
    mean, std = metric.compute()
    torch.set_rng_state(state)
    return float(mean), float(std)


@torch.no_grad()
def predict(judge: Judge, images: np.ndarray, device: torch.device,
            batch_size: int = 1000) -> np.ndarray:
    """The judge's digit for each uint8 image: (n,) int64."""
    judge.eval()
    preds = [judge(b.float() / 255).argmax(1).cpu() for b in _batches(images, batch_size, device)]
    return torch.cat(preds).numpy().astype(np.int64)


def class_histogram(predictions: np.ndarray) -> np.ndarray:
    """Fraction of images per digit, (10,); uniform is 0.1 each."""
    return np.bincount(predictions, minlength=10) / max(len(predictions), 1)


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> list[dict]:
    """Rows digit, n, correct, accuracy."""
    rows = []
    for digit in range(10):
        mask = labels == digit
        n, correct = int(mask.sum()), int((predictions[mask] == digit).sum())
        rows.append({"digit": digit, "n": n, "correct": correct,
                     "accuracy": round(correct / n, 6) if n else float("nan")})
    return rows
