"""The judge's training schedule, and the judge as the stages load it."""

from __future__ import annotations

import torch

from torch import nn

from trilemma.classifier import ClassifierTrainee, Judge, load_judge, planned_steps, save_judge
from trilemma.config import ClassifierConfig
from trilemma.data import MNIST_SPEC
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


def test_the_loaded_judge_has_its_batch_norms_folded_and_computes_the_same_function(tmp_path):
    torch.manual_seed(0)
    cfg = ClassifierConfig(epochs=1, batch_size=8, lr=0.01, width=8, features=16)
    trained = Judge(cfg.width, cfg.features)
    for module in trained.modules():  # statistics and affine terms far from the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.2, 3)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    save_judge(trained, cfg, MNIST_SPEC, tmp_path / "judge.pt")
    loaded = load_judge(tmp_path / "judge.pt", torch.device("cpu"))
    assert not [m for m in loaded.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        expected = trained.eval()(x)
        assert torch.allclose(loaded(x), expected, rtol=1e-5, atol=1e-5)
