"""The judge's training schedule."""

from __future__ import annotations

import torch

from trilemma.classifier import ClassifierTrainee, planned_steps
from trilemma.config import ClassifierConfig
from trilemma.train import fit


def test_one_cycle_spans_exactly_the_steps_taken_under_max_steps(tmp_path):
    cfg = ClassifierConfig(epochs=3, batch_size=8, lr=0.01, width=4, features=8, max_steps=5)
    assert planned_steps(cfg, 64) == 5  # 3 epochs of 8 batches, cut at 5
    assert planned_steps(cfg.model_copy(update={"max_steps": None}), 64) == 24
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    trainee = ClassifierTrainee(cfg, torch.device("cpu"), len(x))
    fit(trainee, x, y, cfg, name="classifier", device=torch.device("cpu"), seed=0,
        checkpoint=tmp_path / "classifier.pt", fingerprint="test")
    # the cycle spans the steps taken: 5, not the 24 of three full epochs
    assert trainee.schedule.last_epoch == trainee.schedule.total_steps == 5
