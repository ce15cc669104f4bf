"""Sample-quality metrics: an extractor turns each image set into features and logits once, and
every score is computed from those.

Two extractors: the pipeline's own classifier (the judge; always there) and Inception-V3 (the
reference network of FID/IS; only when its weights file is given). The Frechet distance, KID and
the Inception score follow torchmetrics' formulas and are tested against its values; precision/
recall (k-NN manifolds) and the class-histogram KL are tested against reference values.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trilemma import distributed
from trilemma.classifier import Judge
from trilemma.errors import DataError, brief
from trilemma.io import atomic_path

KID_SUBSET = 1000  # images per KID subset (fewer when a set is smaller); 100 subsets
PR_K = 3  # neighbours that set the radius of each point's ball in precision/recall
INCEPTION_FEATURES = ["2048", "logits_unbiased"]  # pool3 features for FID, logits for IS


@dataclass
class Embedded:
    """One image set as an extractor sees it: features (n,F) and class logits (n,C)."""

    features: torch.Tensor
    logits: torch.Tensor

    @property
    def predictions(self) -> np.ndarray:
        """The extractor's class for each image: (n,) int64."""
        return self.logits.argmax(1).numpy().astype(np.int64)

    def __len__(self) -> int:
        return len(self.features)

    def take(self, index: np.ndarray | torch.Tensor | slice) -> "Embedded":
        return Embedded(self.features[index], self.logits[index])


def _batches(images: np.ndarray | torch.Tensor, batch_size: int, device: torch.device):
    images = torch.as_tensor(images)
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size].to(device)  # (B,C,S,S)


@torch.no_grad()
def embed(judge: Judge, images: np.ndarray, device: torch.device,
          batch_size: int = 1000, shard: bool = False) -> Embedded:
    """The judge's penultimate features (the FID space) and logits of uint8 images (n,C,S,S),
    on the CPU in float64. shard=True (every torchrun rank must call it): each rank embeds a
    contiguous share and all of them get the whole."""
    if shard and distributed.active():
        part = embed(judge, images[distributed.contiguous_share(len(images))], device, batch_size)
        return Embedded(distributed.gather_rows(part.features), distributed.gather_rows(part.logits))
    judge.eval()
    features, logits = [], []
    for batch in _batches(images, batch_size, device):
        f = judge.features(batch.float() / 255)
        features.append(f.double().cpu())
        logits.append(judge.head[-1](f).double().cpu())
    return Embedded(torch.cat(features), torch.cat(logits))


def save_embedded(embedded: Embedded, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"features": embedded.features, "logits": embedded.logits}, tmp)


def load_embedded(path: Path, n: int) -> Embedded:
    """An embedding written by `save_embedded` (the classifier stage's of the test set), checked
    to hold n images; DataError naming the file otherwise."""
    again = "run `trilemma train-classifier` again"
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma train-classifier` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        embedded = Embedded(blob["features"], blob["logits"])
    except Exception as err:
        raise DataError(f"{path}: not a readable embedding ({brief(err)}); {again}") from None
    if not (len(embedded.features) == len(embedded.logits) == n):
        raise DataError(f"{path}: embeds {len(embedded.features)} images, the test set has {n}; "
                        f"{again}")
    return embedded


def load_inception(path: Path, device: torch.device) -> nn.Module:
    """Inception-V3 with the FID reference weights (torch-fidelity's / pytorch-fid's
    pt_inception-2015-12-05 file); DataError naming the file when it does not load."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:  # a plain state dict first: weights only, no pickled code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: not a readable Inception-V3 weights file ({brief(err)})") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise DataError(f"{path}: not an Inception-V3 state dict (no `fc.weight`); expected the "
                        "pt_inception-2015-12-05 weights of torch-fidelity / pytorch-fid")
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", INCEPTION_FEATURES,
                                          feature_extractor_weights_path=str(path))
    except RuntimeError as err:  # wrong keys or shapes
        raise DataError(f"{path}: does not fit Inception-V3 ({brief(err)})") from None
    return net.to(device).eval()


@torch.no_grad()
def embed_inception(net: nn.Module, images: np.ndarray, device: torch.device,
                    batch_size: int = 100) -> Embedded:
    """Inception pool3 features (n,2048) and logits (n,1008) of uint8 images (n,C,S,S): a grey
    channel is repeated three times; the network resizes to 299x299 as the reference does
    (TensorFlow-1 bilinear, no antialiasing)."""
    features, logits = [], []
    for batch in _batches(images, batch_size, device):
        f, lg = net(batch.expand(-1, 3, -1, -1))  # uint8 (B,3,S,S) -> (B,2048), (B,1008)
        features.append(f.double().cpu())
        logits.append(lg.double().cpu())
    return Embedded(torch.cat(features), torch.cat(logits))


# FID, KID and IS follow torchmetrics' formulas (tests/test_metrics_golden.py holds them to
# torchmetrics' values; FID takes its square root's trace another, equal way); written here because
# importing torchmetrics costs a stage 4-5 s of CPU (it loads torchvision, torch._dynamo and
# scipy.signal) for a few lines of arithmetic.
# Every metric is given whole feature sets, already gathered (`embed(shard=True)`).


def _mean_and_covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F,F) of features (n,F), in float64."""
    x = features.double()
    n = len(x)
    if n < 2:
        raise ValueError(f"FID needs at least 2 images in each set, got {n}")
    mean = x.sum(dim=0) / n
    cov = (x.t().mm(x) - n * torch.outer(mean, mean)) / (n - 1)
    return mean, cov


class _RealStatistics:
    """The real set's mean, covariance and the covariance's symmetric square root, computed once
    for every fake set scored against it."""

    def __init__(self, features: torch.Tensor):
        self.mean, self.cov = _mean_and_covariance(features)
        values, vectors = torch.linalg.eigh(self.cov)
        self.cov_root = (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _frechet(real: _RealStatistics, fake: tuple[torch.Tensor, torch.Tensor]) -> float:
    """|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2). With A = S_r^1/2 and B = S_r^1/2 S_f,
    S_r S_f = AB and the symmetric S_r^1/2 S_f S_r^1/2 = BA have the same eigenvalues (AB and BA
    share their characteristic polynomial, singular or not), so the trace of the square root is
    the sum of the square roots of BA's: a symmetric eigensolver, about 4x faster than the general
    one torchmetrics runs on S_r S_f (the bootstrap calls this 200 times per evaluation)."""
    mu_f, cov_f = fake
    values = torch.linalg.eigvalsh(real.cov_root @ cov_f @ real.cov_root)
    root_trace = values.clamp(min=0).sqrt().sum()
    return float((real.mean - mu_f).square().sum() + real.cov.trace() + cov_f.trace()
                 - 2 * root_trace)


def fids(real: torch.Tensor, fakes: Iterable[torch.Tensor]) -> list[float]:
    """Frechet distance between the features `real` (n,F) and each feature set in `fakes` (read
    one at a time); the real statistics are computed once."""
    real_stats = _RealStatistics(real)
    return [_frechet(real_stats, _mean_and_covariance(fake)) for fake in fakes]


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    return fids(real, [fake])[0]


def fid_bootstrap(real: torch.Tensor, fake: torch.Tensor, rounds: int, seed: int) -> dict:
    """How much FID moves with the generated sample: FID of `rounds` resamples (with
    replacement) of the fake features against the fixed real set. Returns their std and a 95 %
    interval around the point estimate (the FID of `fake` itself).

    A resample holds only ~63 % distinct points, so every resampled FID is biased upward (for
    the real-data floor, all of them lie above its own FID). The interval therefore keeps the
    resamples' spread but not their location: their 2.5 and 97.5 percentiles are shifted so that
    their median sits at the point estimate, which the interval then always contains."""
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randint(len(fake), (len(fake),), generator=g) for _ in range(rounds)]
    # the point estimate first; then one resample in memory at a time
    point, *rest = fids(real, itertools.chain([fake], (fake[p] for p in picks)))
    scores = np.array(rest)
    low, median, high = np.percentile(scores, [2.5, 50, 97.5])
    return {"std": float(scores.std(ddof=1)), "low": float(point - (median - low)),
            "high": float(point + (high - median)), "bias": float(median - point)}


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's kernel k(a, b) = (a.b / F + 1)^3 between rows of a (n,F) and b (m,F)."""
    return (a @ b.T * (1.0 / a.shape[1]) + 1.0) ** 3


def _subset_kernel_sums(a: torch.Tensor, b: torch.Tensor, in_a: torch.Tensor,
                        in_b: torch.Tensor, rows: int = 2048) -> torch.Tensor:
    """For each subset s: the sum of k(a_i, b_j) over i in subset s of a and j in subset s of
    b, from membership matrices in_a (S,n) and in_b (S,m) of 0/1. The kernel between all of a
    and b is computed once, `rows` rows of a at a time (memory), instead of once per subset."""
    picked = torch.zeros(len(in_a), len(b), dtype=a.dtype)  # (S,m): sum over i in s of k(a_i, .)
    for start in range(0, len(a), rows):
        picked += in_a[:, start:start + rows] @ _poly_kernel(a[start:start + rows], b)
    return (picked * in_b).sum(dim=1)


def _membership(picks: list[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
    """(S,n) with a 1 where subset s holds item i (no item twice in a subset)."""
    member = torch.zeros(len(picks), n, dtype=dtype)
    for s, pick in enumerate(picks):
        member[s, pick] = 1
    return member


def kid(real: torch.Tensor, fake: torch.Tensor, seed: int, subsets: int = 100) -> tuple[float, float]:
    """Kernel distance (cubic polynomial kernel MMD^2, unbiased; Binkowski et al.) averaged over
    `subsets` random subsets of min(KID_SUBSET, n) images: mean and (population) std over
    subsets. The subsets are torchmetrics' (a real one, then a fake one, from one generator);
    the fake-fake and real-fake kernel sums come from one kernel matrix each."""
    m = min(KID_SUBSET, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set; got {len(real)} and {len(fake)}")
    g = torch.Generator().manual_seed(seed)
    real_picks, fake_picks = [], []
    for _ in range(subsets):
        real_picks.append(torch.randperm(len(real), generator=g)[:m])
        fake_picks.append(torch.randperm(len(fake), generator=g)[:m])
    in_real, in_fake = (_membership(p, len(x), x.dtype)
                        for p, x in ((real_picks, real), (fake_picks, fake)))
    self_fake = (fake.square().sum(dim=1) / fake.shape[1] + 1.0) ** 3  # k(y_i, y_i)
    within_fake = _subset_kernel_sums(fake, fake, in_fake, in_fake) - in_fake @ self_fake
    across = _subset_kernel_sums(real, fake, in_real, in_fake)
    # real-real: per subset, as the real set is the larger one (a full kernel costs as much)
    within_real = torch.stack([(k := _poly_kernel(x, x)).sum() - k.diagonal().sum()
                               for x in (real[p] for p in real_picks)])
    scores = (within_real + within_fake) / (m * (m - 1)) - 2 * across / m**2
    return float(scores.mean()), float(scores.std(unbiased=False))


def inception_score(logits: torch.Tensor, seed: int, splits: int = 10) -> tuple[float, float]:
    """exp(E KL(p(y|x) || p(y))) from class logits (n,C): mean and std over `splits` splits of a
    seeded shuffle. With the judge, 10 means confident, evenly spread digits; 1 one class or no
    confidence."""
    shuffled = logits[torch.randperm(len(logits), generator=torch.Generator().manual_seed(seed))]
    per_split = []
    for log_p in shuffled.log_softmax(dim=1).chunk(splits, dim=0):
        p = log_p.exp()
        log_marginal = p.mean(dim=0, keepdim=True).log()
        per_split.append((p * (log_p - log_marginal)).sum(dim=1).mean().exp())
    scores = torch.stack(per_split)
    return float(scores.mean()), float(scores.std())


def _kth_neighbour_distance(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row: (n,)."""
    out = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x)  # (c,n), the point itself at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                     chunk: int = 1024) -> torch.Tensor:
    """For each point, whether it lies within radii[j] of some centre j: (n,) bool."""
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], centres)  # (c,m)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union
    of balls reaching every point's k-th nearest neighbour in its own set. Precision: share of fake
    points inside the real manifold (fidelity); recall: share of real points inside the fake
    manifold (coverage). Compare sets of equal size: the balls shrink as a set grows."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall needs more than k={k} points in each set")
    precision = _inside_any_ball(fake, real, _kth_neighbour_distance(real, k)).double().mean()
    recall = _inside_any_ball(real, fake, _kth_neighbour_distance(fake, k)).double().mean()
    return float(precision), float(recall)


def class_histogram(predictions: np.ndarray, classes: int) -> np.ndarray:
    """Fraction of images per class, (K,); uniform is 1/K each."""
    return np.bincount(predictions, minlength=classes) / max(len(predictions), 1)


def kl_to_uniform(histogram: np.ndarray) -> float:
    """KL(h || uniform) in nats = log C - H(h): 0 for evenly covered classes, log 10 = 2.303 when
    every image is one digit."""
    h = np.asarray(histogram, dtype=np.float64)
    nonzero = h[h > 0]
    return float(math.log(len(h)) + (nonzero * np.log(nonzero)).sum())


def score_set(real: Embedded, fake: Embedded, labels: np.ndarray | None, seed: int) -> dict:
    """Everything the judge says about one sample set `fake` against the real (test) set: FID,
    KID, IS, precision/recall against an equally large random real subset, the class histogram,
    the rarest class's share, its KL to uniform and, when the classes were requested (`labels`),
    the label accuracy."""
    g = torch.Generator().manual_seed(seed)
    same_size = real.take(torch.randperm(len(real), generator=g)[:len(fake)])
    kid_mean, kid_std = kid(real.features, fake.features, seed)
    is_mean, is_std = inception_score(fake.logits, seed)
    precision, recall = precision_recall(same_size.features, fake.features)
    predictions = fake.predictions
    histogram = class_histogram(predictions, fake.logits.shape[1])
    scores = {"n": len(fake), "fid_classifier": fid(real.features, fake.features),
              "kid_classifier": kid_mean, "kid_classifier_std": kid_std,
              "is_classifier": is_mean, "is_classifier_std": is_std,
              "precision": precision, "recall": recall,
              "min_class_fraction": float(histogram.min()),
              "class_kl_uniform": kl_to_uniform(histogram),
              "histogram": histogram, "predictions": predictions}
    if labels is not None:
        scores["label_accuracy"] = float((predictions == labels).mean())
    return scores


def generated_per_class(predictions: np.ndarray, classes: tuple[str, ...],
                        labels: np.ndarray | None = None) -> list[dict]:
    """Rows digit (the class index), class (its name), generated (images the judge calls that
    class), fraction; with requested `labels` also requested, correct and accuracy (of images
    asked to be that class)."""
    counts = np.bincount(predictions, minlength=len(classes))
    rows = [{"digit": d, "class": classes[d], "generated": int(c),
             "fraction": round(c / max(len(predictions), 1), 6)} for d, c in enumerate(counts)]
    if labels is not None:
        for row, acc in zip(rows, per_class_accuracy(labels, predictions, classes)):
            row.update(requested=acc["n"], correct=acc["correct"], accuracy=acc["accuracy"])
    return rows


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray,
                       classes: tuple[str, ...]) -> list[dict]:
    """Rows digit (the class index), class (its name), n, correct, accuracy."""
    rows = []
    for digit, name in enumerate(classes):
        mask = labels == digit
        n, correct = int(mask.sum()), int((predictions[mask] == digit).sum())
        rows.append({"digit": digit, "class": name, "n": n, "correct": correct,
                     "accuracy": round(correct / n, 6) if n else float("nan")})
    return rows


def inception(weights: Path | str | None, device: torch.device) -> tuple[nn.Module | None, str]:
    """The Inception network and a note on it, or None and the reason it is not there: no package
    ships its weights, so their absence is never a failure; "auto" downloads them once (see
    `inception_weights`). A file that is there but is not the weights is bad input (DataError):
    call this before long work."""
    if weights is None:
        return None, "no weights file given (evaluate.inception_weights is null)"
    if weights == "auto":
        from trilemma.inception_weights import fetch

        path, note = fetch()
        return (None, note) if path is None else (load_inception(path, device), note)
    if not Path(weights).exists():
        return None, f"weights file {weights} not found"
    return load_inception(Path(weights), device), f"weights {Path(weights).name}"


def inception_scores(net: nn.Module | None, note: str, real_images: np.ndarray,
                     fake_images: np.ndarray, device: torch.device, seed: int,
                     batch_size: int = 100) -> dict:
    """Inception-V3 FID of `fake_images` against `real_images` and IS of `fake_images` (uint8
    (n,C,S,S)); None for each when there is no network. `inception_note` says which."""
    if net is None:
        return {"fid_inception": None, "is_inception": None, "is_inception_std": None,
                "inception_note": note}
    real = embed_inception(net, real_images, device, batch_size)
    fake = embed_inception(net, fake_images, device, batch_size)
    is_mean, is_std = inception_score(fake.logits, seed)
    return {"fid_inception": fid(real.features, fake.features), "is_inception": is_mean,
            "is_inception_std": is_std, "inception_note": note}
