"""Learning curves: at a few steps spread over training, the judge scores a cheap probe of the
model as it stands. `fit` calls a `Probe` between steps and keeps its time off the training clock;
the rows become reports/train/<family>/curve.csv.

A probe draws from a fixed generator seed and runs inside a forked RNG, so its scores are the
same on every rerun and training's own random stream is untouched: the trained model is the same
with probes on or off."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from trilemma import metrics
from trilemma.classifier import Judge
from trilemma.runtime import generator

# curve.csv's columns: where the model stands, then what the judge says of it
POSITION = ["step", "images_seen", "train_seconds"]
GENERATOR_SCORES = ["n", "fid_classifier", "precision", "recall", "label_accuracy"]
TRANSLATOR_SCORES = ["n", "psnr", "judge_accuracy"]


def _own_rng():
    """Random draws inside this block leave the global streams (CPU and GPUs) as they were."""
    return torch.random.fork_rng(devices=range(torch.cuda.device_count()))


def probe_steps(total: int, probes: int) -> list[int]:
    """`probes` optimisation steps spread evenly over `total`, the last at the end (fewer when
    training has fewer steps than probes)."""
    return sorted({max(1, round(k * total / probes)) for k in range(1, probes + 1)}) \
        if probes and total else []


class Probe:
    """A `trilemma.train.Probe`: at the steps in `at`, `score()` and a curve row. `on_row` sees
    each new row (MLflow); `seconds` is the time spent probing in this process."""

    def __init__(self, score: Callable[[], dict[str, float]], at: list[int], batch_size: int,
                 columns: list[str], on_row: Callable[[dict], None] | None = None):
        self.score, self.at, self.batch_size = score, set(at), batch_size
        self.columns, self.on_row = POSITION + columns, on_row
        self.rows: list[dict[str, float]] = []
        self.seconds = 0.0

    def due(self, step: int) -> bool:
        return step in self.at

    def __call__(self, step: int, train_seconds: float) -> None:
        t0 = time.perf_counter()
        with _own_rng():
            scores = self.score()
        row = {"step": step, "images_seen": step * self.batch_size,
               "train_seconds": round(train_seconds, 2),
               **{k: v if isinstance(v, int) else round(float(v), 6) for k, v in scores.items()}}
        self.rows.append(row)
        self.seconds += time.perf_counter() - t0
        if self.on_row is not None:
            self.on_row(row)


def generator_scores(model, judge: Judge, real: metrics.Embedded, n: int, seed: int,
                     device: torch.device, knobs: dict, batch_size: int = 500
                     ) -> Callable[[], dict[str, float]]:
    """The probe of a generator family: n samples from the seed's noise (balanced classes for a
    conditional family) at `knobs`; their FID against the `real` test embedding, precision and
    recall against a fixed real subset of the same size, and label accuracy if conditional."""
    labels = torch.arange(n) % model.image.num_classes if model.conditional else None
    same_size = real.take(torch.randperm(len(real), generator=generator(seed))[:n])

    def score() -> dict[str, float]:
        noise = generator(seed)
        images = torch.cat([model.sample(len(part), None if labels is None else labels[part],
                                         noise, **knobs).cpu()
                            for part in torch.arange(n).split(batch_size)])  # (n,C,S,S) uint8
        fake = metrics.embed(judge, images, device)
        precision, recall = metrics.precision_recall(same_size.features, fake.features)
        row = {"n": n, "fid_classifier": metrics.fid(real.features, fake.features),
               "precision": precision, "recall": recall}
        if labels is not None:
            row["label_accuracy"] = float((fake.predictions == labels.numpy()).mean())
        return row

    return score


def translator_scores(model, judge: Judge, x: torch.Tensor, labels: np.ndarray,
                      device: torch.device) -> Callable[[], dict[str, float]]:
    """The probe of an image-to-image family: its translations of the task inputs of fixed test
    images x (n,C,S,S) in [0,1]; PSNR against the targets and the judge's accuracy on them."""
    from trilemma import pixels
    from trilemma.i2i.scores import psnr

    inputs, target = model.task.pair(x)
    true = pixels.from_unit(target).float() / 255

    def score() -> dict[str, float]:
        # (n,C,S,S) uint8, as evaluate-i2i scores them
        out = pixels.from_unit(model.translate(inputs).cpu())
        embedded = metrics.embed(judge, out, device)
        return {"n": len(out), "psnr": float(psnr(out.float() / 255, true).mean()),
                "judge_accuracy": float((embedded.predictions == labels).mean())}

    return score


def sampling_knobs(model, sample_cfg, probe_steps: int) -> dict:
    """The sample stage's main settings of the knobs `model` takes, with a diffusion family's
    sampler cut to `probe_steps` DDIM steps: a probe must be cheap."""
    knobs = {knob: getattr(sample_cfg, knob) for knob in model.knobs}
    if "steps" in knobs:
        knobs.update(sampler="ddim", steps=probe_steps)
    return knobs


def _judge(device: torch.device, n_test: int) -> tuple[Judge, metrics.Embedded] | None:
    """The judge and its test-set embedding (train-classifier's files), or None when the data
    has no labels to train one on. A missing file is bad input (DataError naming it)."""
    from trilemma import paths
    from trilemma.classifier import load_judge
    from trilemma.errors import NoJudge

    try:
        with _own_rng():
            judge = load_judge(paths.CLASSIFIER, device)  # its init draws: not from training's
    except NoJudge:
        return None
    return judge, metrics.load_embedded(paths.TEST_EMBEDDING, n_test)


def generator_probe(model, p, images, device: torch.device, total: int, batch: int,
                    on_row: Callable[[dict], None] | None = None) -> Probe:
    """The probe of a generator family trained for `total` steps of `batch` images, with the
    params `p` (train.probes, probe_n, probe_steps; sample's knobs; seed). Without a judge the
    rows keep the position columns only."""
    at, score = probe_steps(total, p.train.probes), dict
    judged = _judge(device, len(images.x_test)) if at else None
    if judged is not None:
        judge, real = judged
        score = generator_scores(model, judge, real, min(p.train.probe_n, len(real)), p.seed,
                                 device, sampling_knobs(model, p.sample, p.train.probe_steps),
                                 p.sample.batch_size)
    return Probe(score, at, batch, GENERATOR_SCORES, on_row)


def translator_probe(model, p, images, device: torch.device, total: int, batch: int,
                     on_row: Callable[[dict], None] | None = None) -> Probe:
    """The probe of an image-to-image family: the first train.probe_n test images."""
    at, score = probe_steps(total, p.train.probes), dict
    judged = _judge(device, len(images.x_test)) if at else None
    if judged is not None:
        n = min(p.train.probe_n, len(images.x_test))
        x = torch.from_numpy(images.x_test[:n]).float() / 255  # (n,C,S,S)
        score = translator_scores(model, judged[0], x, images.y_test[:n], device)
    return Probe(score, at, batch, TRANSLATOR_SCORES, on_row)
