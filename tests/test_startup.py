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


def test_every_stage_module_resolves():
    import importlib

    for target in STAGES.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
