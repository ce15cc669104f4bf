"""Start-up: the `trilemma` command imports only the stage it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import STAGES

PROBE = """
import sys
import typer.main
from pipeline.cli import app
typer.main.get_command(app).get_command(None, {command!r})
heavy = [m for m in ("torch", "mlflow", "matplotlib.pyplot", "torchmetrics") if m in sys.modules]
print(",".join(heavy))
"""


def imported_by(command: str) -> list[str]:
    """The heavy modules that building `command` imports, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(command=command)], check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    return [m for m in out.split(",") if m]


def test_listing_the_commands_imports_no_stage():
    assert imported_by("no-such-command") == []


@pytest.mark.parametrize("command", ["download", "report", "sync-mlflow"])
def test_light_commands_never_import_torch(command):
    assert "torch" not in imported_by(command)


@pytest.mark.parametrize("command", sorted(STAGES))
def test_no_command_imports_pyplot_mlflow_or_torchmetrics_to_start(command):
    # each is imported where it is used: figures when they are drawn, MLflow on the thread that
    # logs, torchmetrics while images are embedded
    assert not {"matplotlib.pyplot", "mlflow", "torchmetrics"} & set(imported_by(command))


def test_every_stage_module_resolves():
    import importlib

    for target in STAGES.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


OPTIMISER_PROBE = """
import sys, torch
from trilemma.optim import adam
net = torch.nn.Linear(4, 4)
opt = adam(net.parameters(), 1e-3)
schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=4)
for _ in range(2):
    opt.zero_grad()
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    schedule.step()
opt.load_state_dict(opt.state_dict())
print("torch._dynamo" in sys.modules)
"""


def test_training_steps_never_import_the_compiler():
    out = subprocess.run([sys.executable, "-c", OPTIMISER_PROBE], check=True, capture_output=True,
                         text=True, timeout=120).stdout.strip()
    assert out == "False"


def test_adam_steps_exactly_as_torch_adamw():
    import torch

    from trilemma.optim import adam

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = adam(ours.parameters(), 1e-2, (0.5, 0.99), weight_decay=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, betas=(0.5, 0.99),
                                   weight_decay=1e-4, fused=True)
    for _ in range(10):
        x = torch.randn(4, 8)
        for net, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
