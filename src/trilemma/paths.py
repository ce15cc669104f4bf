"""Where each stage reads and writes, relative to the repository root (DVC's working directory)."""

from __future__ import annotations

from pathlib import Path

DATA = Path("data/images.npz")
CLASSIFIER = Path("models/classifier.pt")
TEST_EMBEDDING = Path("models/test_embedding.pt")  # the judge's view of the test set, once
CLASSIFIER_REPORTS = Path("reports/classifier")
REAL_METRICS = Path("reports/eval/real/metrics.json")  # the real-data floor
CHECKPOINTS = Path("checkpoints")  # resumable training state; outside DVC outputs
REPORTS = Path("reports")


def model(family: str) -> Path:
    return Path("models") / f"{family}.pt"


def train_reports(family: str) -> Path:
    return Path("reports/train") / family


def samples(family: str) -> Path:
    return Path("samples") / f"{family}.npz"


def sample_figures(family: str) -> Path:
    """grid.png, and interpolation.png / arithmetic.png for latent families."""
    return Path("reports/samples") / family


def eval_reports(family: str) -> Path:
    return Path("reports/eval") / family


def checkpoint(name: str) -> Path:
    return CHECKPOINTS / f"{name}.pt"


REFEREE = Path("models/referee.pt")  # the second classifier that scores steering
REFEREE_REPORTS = Path("reports/control/referee")  # beside the control stages' outputs


def control_reports(family: str) -> Path:
    """metrics.json, per_class.csv and the before/after figure of the control stage."""
    return Path("reports/control") / family
