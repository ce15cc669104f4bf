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
def fids(judge: Judge, real: np.ndarray, fakes: list[np.ndarray], device: torch.device,
         batch_size: int = 1000) -> list[float]:
    """Frechet distance between judge features of the uint8 images `real` (n,[1,]28,28) and of
    each set in `fakes`; the real features are computed once."""
    judge.eval()
    metric = FrechetInceptionDistance(feature=_JudgeFeatures(judge),
                                      reset_real_features=False).to(device)
    for batch in _batches(real, batch_size, device):
        metric.update(batch, real=True)
    scores = []
    for fake in fakes:
        metric.reset()  # forgets the previous fake set only
        for batch in _batches(fake, batch_size, device):
            metric.update(batch, real=False)
        scores.append(float(metric.compute()))
    return scores


def fid(judge: Judge, real: np.ndarray, fake: np.ndarray, device: torch.device,
        batch_size: int = 1000) -> float:
    """Frechet distance between judge features of two uint8 image sets (n,[1,]28,28)."""
    return fids(judge, real, [fake], device, batch_size)[0]


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


def judge_samples(judge: Judge, images: np.ndarray, labels: np.ndarray | None,
                  device: torch.device, seed: int, batch_size: int = 1000) -> dict:
    """Everything the judge says about one sample set except FID: IS, the class histogram, the
    rarest digit's share and, when the digits were requested (`labels`), the label accuracy."""
    predictions = predict(judge, images, device, batch_size)
    is_mean, is_std = inception_score(judge, images, device, seed, batch_size)
    histogram = class_histogram(predictions)
    scores = {"is_classifier": is_mean, "is_classifier_std": is_std,
              "min_class_fraction": float(histogram.min()), "histogram": histogram,
              "predictions": predictions}
    if labels is not None:
        scores["label_accuracy"] = float((predictions == labels).mean())
    return scores


def generated_per_class(predictions: np.ndarray, labels: np.ndarray | None = None) -> list[dict]:
    """Rows digit, generated (images the judge calls that digit), fraction; with requested
    `labels` also requested, correct and accuracy (of images asked to be that digit)."""
    counts = np.bincount(predictions, minlength=10)
    rows = [{"digit": d, "generated": int(c), "fraction": round(c / max(len(predictions), 1), 6)}
            for d, c in enumerate(counts)]
    if labels is not None:
        for row, acc in zip(rows, per_class_accuracy(labels, predictions)):
            row.update(requested=acc["n"], correct=acc["correct"], accuracy=acc["accuracy"])
    return rows


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> list[dict]:
    """Rows digit, n, correct, accuracy."""
    rows = []
    for digit in range(10):
        mask = labels == digit
        n, correct = int(mask.sum()), int((predictions[mask] == digit).sum())
        rows.append({"digit": digit, "n": n, "correct": correct,
                     "accuracy": round(correct / n, 6) if n else float("nan")})
    return rows
