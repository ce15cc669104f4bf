"""The `trilemma` commands' options and their refusals on a tiny repo, through Typer's CliRunner:
--help, --dry-run, and one `error:` line with exit code 2 for a missing or bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from badinput import error_lines, invoke
from conftest import write_params
from pipeline.common import STAGE_LOG

STAGES = [
    ("download", ["download"]),
    ("train-classifier", ["train-classifier"]),
    ("train", ["train", "vae"]),
    ("sample", ["sample", "vae"]),
    ("evaluate", ["evaluate", "vae"]),
    ("report", ["report"]),
]



def write_samples(path, images, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, images_per_second=np.float64(100.0), seconds=np.float64(1.0),
             device=np.str_("cpu"), **extra)


def test_help_of_app_and_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for _, args in STAGES:
        assert args[0] in result.output
        assert invoke(args[0], "--help").exit_code == 0, args[0]


@pytest.mark.parametrize("stage, args", STAGES, ids=[s for s, _ in STAGES])
def test_dry_run_prints_resolved_settings_and_writes_nothing(tiny_repo, stage, args):
    before = sorted(p.relative_to(tiny_repo) for p in tiny_repo.rglob("*"))
    result = invoke(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output)
    after = sorted(p.relative_to(tiny_repo) for p in tiny_repo.rglob("*"))
    assert after == before
    if stage == "train":
        assert settings["vae"]["epochs"] == 1 and settings["vae"]["latent_dim"] == 2
        assert settings["device"] == "cpu"
    if stage == "train-classifier":
        assert settings["classifier"]["width"] == 8
    if stage == "download":
        assert settings["data"]["offline"] is True


def test_evaluate_without_classifier_exits_2_naming_it(tiny_repo):
    write_samples(tiny_repo / "samples" / "vae.npz", np.zeros((64, 1, 28, 28), np.uint8))
    result = invoke("evaluate", "vae")
    assert result.exit_code == 2
    assert len(error_lines(result.output)) == 1 and "models/classifier.pt" in error_lines(result.output)[0]
    assert "Traceback" not in result.output
    (logged,) = [json.loads(line) for line in (tiny_repo / STAGE_LOG).read_text().splitlines()]
    assert (logged["stage"], logged["family"], logged["status"]) == ("evaluate", "vae", "error")


@pytest.mark.parametrize("images", [np.zeros((64, 1, 28, 28), np.float32),
                                   np.zeros((64, 28, 28), np.uint8)], ids=["float", "3d"])
def test_evaluate_rejects_malformed_samples_naming_the_file(tiny_repo, images):
    write_samples(tiny_repo / "samples" / "vae.npz", images)
    result = invoke("evaluate", "vae")
    assert result.exit_code == 2
    assert len(error_lines(result.output)) == 1 and "samples/vae.npz" in error_lines(result.output)[0]
    assert "Traceback" not in result.output


def test_evaluate_rejects_unreadable_samples_file(tiny_repo):
    path = tiny_repo / "samples" / "vae.npz"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 not really a zip")
    result = invoke("evaluate", "vae")
    assert result.exit_code == 2 and "samples/vae.npz" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
def test_unknown_family_exits_2_naming_it(tiny_repo, command):
    result = invoke(command, "nosuch")
    assert result.exit_code == 2
    assert len(error_lines(result.output)) == 1 and "nosuch" in error_lines(result.output)[0]
    assert "Traceback" not in result.output


def test_train_without_data_says_run_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml")
    result = invoke("train", "vae")
    assert result.exit_code == 2 and "trilemma download" in result.output


@pytest.mark.parametrize("args, says", [
    (["train", "--bogus"], "trilemma train: No such option: --bogus (see 'trilemma train --help')"),
    (["sample"], "trilemma sample: Missing argument 'family'. (see 'trilemma sample --help')"),
    (["nosuch"], "trilemma: No such command 'nosuch'. (see 'trilemma --help')"),
    (["generate", "ddpm", "-n", "abc"], "trilemma generate: Invalid value for '-n' / '--n': "),
    (["train", "--params"], "trilemma train: Option '--params' requires an argument. "
                            "(see 'trilemma train --help')"),
    # an error of the stage itself naming an argument with a line break in it: still one line
    (["train", "vae", "--params", "two\nlines.yaml"], "two lines.yaml: no such params file"),
])
def test_a_bad_command_line_is_one_error_line_with_exit_code_2(tmp_path, args, says):
    """The console script, not CliRunner: Typer's boxed usage panel becomes one line there."""
    exe = Path(sys.executable).with_name("trilemma")
    result = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=tmp_path,
                            timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {says}") and result.stderr.count("\n") == 1


def test_the_console_script_keeps_help_and_a_bare_call_shows_it(tmp_path):
    exe = Path(sys.executable).with_name("trilemma")
    bare = subprocess.run([str(exe)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    helped = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert bare.returncode == 2 and "Usage: trilemma [OPTIONS] COMMAND" in bare.stdout
    assert bare.stderr == ""
    assert helped.returncode == 0 and "Usage: trilemma train [OPTIONS]" in helped.stdout
