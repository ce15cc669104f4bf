"""Params that parse but must not run: YAML that is ambiguous (a key twice, a key that is not a
name), that never ends (a FIFO, /dev/zero, recursive anchors, alias bombs), and values pydantic
would take silently (true for a number, inf, a seed numpy cannot use, a family steered twice).
Each is one `error:` line naming the file and the key, exit 2, no traceback, nothing written."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from badinput import fails, invoke, params_raw, refused, snapshot, unchanged
from conftest import write_params

def tiny_yaml(without: str | None = None) -> str:
    """The tiny params as YAML text (`without` that section), to which the text cases append."""
    import yaml

    raw = params_raw()
    raw.pop(without, None)
    return yaml.safe_dump(raw, sort_keys=False)


VALUE_CASES = [
    # id, overrides (dotted keys), command, names the error line must hold
    ("seed-beyond-32-bit", {"seed": 2**32}, ["train", "vae"], ["seed", "4294967294"]),
    ("epochs-true", {"vae.epochs": True}, ["train", "vae"], ["vae.epochs", "true/false"]),
    ("batch-size-false", {"classifier.batch_size": False}, ["train-classifier"],
     ["classifier.batch_size", "true/false"]),
    ("width-list-with-true", {"ddpm.widths": [True, 16]}, ["train", "ddpm"], ["ddpm.widths"]),
    ("lr-inf", {"vae.lr": float("inf")}, ["train", "vae"], ["vae.lr", "finite"]),
    ("lr-nan", {"vae.lr": float("nan")}, ["train", "vae"], ["vae.lr", "finite"]),
    ("guidance-inf", {"sample.guidance": float("inf")}, ["sample", "vae"],
     ["sample.guidance", "finite"]),
    ("guidance-sweep-inf", {"sample.guidance_sweep": [1.0, float("inf")]}, ["sample", "vae"],
     ["sample.guidance_sweep", "finite"]),
    ("control-family-twice", {"control.families": ["vae", "vae"]}, ["train", "vae"],
     ["control.families", "twice"]),
    ("bootstrap-beyond-bound", {"evaluate.bootstrap": 10**9}, ["evaluate", "vae"],
     ["evaluate.bootstrap", "10000"]),
    ("checkpoint-seconds-zero", {"train.checkpoint_seconds": 0}, ["train", "vae"],
     ["train.checkpoint_seconds"]),
    ("guidance-scales-empty", {"control.guidance_scales": []}, ["control", "ddpm"],
     ["control.guidance_scales", "at least one"]),
]


@pytest.mark.parametrize("overrides, command, names", [c[1:] for c in VALUE_CASES],
                         ids=[c[0] for c in VALUE_CASES])
def test_value_pydantic_would_accept_is_refused(repo, overrides, command, names):
    write_params(repo / "params.yaml", overrides)
    refused(repo, command, "params.yaml", *names)


ALIAS_BOMB = "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" for i in range(1, 10))

VAE_TWICE = "vae:\n  epochs: 1\n  lr: 0.001\n  width: 8\n  latent_dim: 2\n  batch_size: 64\n"

TEXT_CASES = [
    # id, the section left out of the tiny params, YAML appended in its place, names
    ("duplicate-top-level-key", None, "seed: 1\n", ["params.yaml", "'seed'", "twice"]),
    ("duplicate-nested-key", "vae", VAE_TWICE + "  epochs: 3\n",
     ["params.yaml", "'epochs'", "twice"]),
    ("yaml-1.1-boolean-key", None, "on: push\n", ["params.yaml", "True", "not a name"]),
    ("number-key", None, "1: x\n", ["params.yaml", "1", "not a name"]),
    ("recursive-anchor", None, "loop: &loop [*loop]\n", ["params.yaml", "alias"]),
    ("alias-bomb", None, "b0: &b0 [x, x, x, x, x, x, x, x, x]\n" + ALIAS_BOMB,
     ["params.yaml", "aliases"]),
    ("nested-too-deep", None, "deep: " + "[" * 3000 + "]" * 3000 + "\n",
     ["params.yaml", "nested"]),
]


@pytest.mark.parametrize("without, extra, names", [c[1:] for c in TEXT_CASES],
                         ids=[c[0] for c in TEXT_CASES])
def test_ambiguous_or_endless_yaml_is_refused(repo, without, extra, names):
    (repo / "params.yaml").write_text(tiny_yaml(without) + extra)
    refused(repo, ["train", "vae"], *names)


def test_params_path_that_is_a_fifo_is_refused_without_blocking(repo):
    fifo = repo / "params.fifo"
    os.mkfifo(fifo)
    before = snapshot(repo)
    done = threading.Event()

    def unblock():  # if the stage opened the FIFO for reading, a writer lets it go on
        if not done.wait(20):
            with open(fifo, "w") as fh:
                fh.write("profile: quick\n")

    threading.Thread(target=unblock, daemon=True).start()
    result = invoke("train", "vae", "--params", str(fifo))
    done.set()
    fails(result, "params.fifo", "not a regular file")
    unchanged(repo, before)


def test_params_path_dev_zero_is_refused(repo):
    refused(repo, ["train", "vae", "--params", "/dev/zero"], "/dev/zero", "not a regular file")


def test_params_file_too_large_is_refused(repo):
    (repo / "big.yaml").write_text(tiny_yaml() + "# padding\n" * 200_000)
    refused(repo, ["train", "vae", "--params", "big.yaml"], "big.yaml", "bytes")


def test_a_params_file_from_elsewhere_logs_the_stage_in_the_project_it_ran_in(repo, tmp_path):
    """The stage log is the working folder's, where the outputs go, wherever the params file
    lies: the report adds up that log (in another folder it would count other projects' runs)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    shutil.copy(repo / "params.yaml", scratch / "tiny.yaml")
    log = repo / "logs" / "stages.jsonl"
    logged = log.read_text().count('"sample"') if log.exists() else 0
    result = invoke("sample", "vae", "--params", str(scratch / "tiny.yaml"))
    assert result.exit_code == 0, result.output
    assert log.read_text().count('"sample"') == logged + 1
    assert not (scratch / "logs").exists()


def test_stage_run_from_another_folder_writes_no_logs_there(repo, tmp_path, monkeypatch):
    """Started outside any project, the stage log goes beside the params file that ran, never
    into the working folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = repo / "logs" / "stages.jsonl"
    logged = log.read_text().count('"evaluate"') if log.exists() else 0
    monkeypatch.chdir(elsewhere)
    fails(invoke("train", "vae"), "params.yaml", "no such params file")
    assert not (elsewhere / "logs").exists()
    fails(invoke("evaluate", "vae", "--params", str(repo / "params.yaml")), "data/images.npz")
    assert not (elsewhere / "logs").exists()
    assert log.read_text().count('"evaluate"') == logged + 1


def test_project_params_file_reads_strictly():
    """The project's own params.yaml passes the strict reader (no duplicate or non-name key)."""
    from trilemma.config import load_params

    load_params(Path(__file__).resolve().parents[1] / "params.yaml")
