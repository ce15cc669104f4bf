"""Checkpoint/resume of `trilemma train` as a user meets it: a real process killed with SIGKILL
mid-run and started again must end with the same model, metrics and loss curve as a run that was
never interrupted; a corrupt checkpoint is ignored; checkpoints/ stays outside DVC and git.

Every training run here is a `trilemma train <family>` subprocess in its own tiny repo. The
uninterrupted reference runs start in the background when the module's first training test
begins, so they overlap with the kill-and-resume runs (start-up is most of each run's cost)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from conftest import make_repo, write_params
from trilemma import paths

REPO = Path(__file__).resolve().parents[1]
TRILEMMA = str(Path(sys.executable).parent / "trilemma")
DEADLINE = 300  # seconds: generous, the CPU is shared with other jobs

# One epoch of about 1-2 s on an idle 2-core CPU; the kill lands after epoch 1 of 3, so at least
# two epochs of margin separate "checkpoint seen" from "model written".
SETTINGS: dict[str, dict[str, Any]] = {
    "vae": {"data.train_size": 2000, "vae.epochs": 3},
    # diffusion: the U-Net, its EMA, Adam and a step counter all live in the checkpoint
    "ddpm": {"data.train_size": 1024, "ddpm.epochs": 3, "ddpm.max_steps": None},
}


def env() -> dict[str, str]:
    out = {**os.environ, "TRILEMMA_DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out.pop("MLFLOW_TRACKING_URI", None)  # each repo gets its own mlflow.db
    return out


class Run:
    """`trilemma train <family>` started in `repo`, stdout and stderr to files there."""

    def __init__(self, repo: Path, family: str, tag: str):
        self.repo, self.family = repo, family
        self.out, self.err = repo / f"{tag}.stdout", repo / f"{tag}.stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([TRILEMMA, "train", family], cwd=repo, env=env(),
                                         stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return f"--- stdout\n{self.out.read_text()}--- stderr\n{self.err.read_text()}"

    def wait(self, timeout: float = DEADLINE) -> str:
        """Stdout of a run that must succeed."""
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"trilemma train {self.family} exited {rc}\n{self.text()}"
        return self.out.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def new_repo(root: Path, npz: Path, family: str) -> Path:
    repo = make_repo(root, npz)
    write_params(repo / "params.yaml", SETTINGS[family])
    return repo


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists of a saved model as {'state.vae.encoder.0.weight': tensor, ...}."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def assert_same_training(a: Path, b: Path, family: str) -> None:
    """Same weights (and optimiser/EMA state), same final metrics, same loss curve."""
    model_a = flat(torch.load(a / paths.model(family), weights_only=True))
    model_b = flat(torch.load(b / paths.model(family), weights_only=True))
    assert model_a.keys() == model_b.keys()
    assert any(isinstance(v, torch.Tensor) for v in model_a.values())
    differ = [key for key, value in model_a.items()
              if not (torch.equal(value, model_b[key]) if isinstance(value, torch.Tensor)
                      else value == model_b[key])]
    assert not differ, f"{family}: saved model differs in {differ[:5]} ({len(differ)} entries)"

    reports_a, reports_b = a / paths.train_reports(family), b / paths.train_reports(family)
    metrics_a = json.loads((reports_a / "metrics.json").read_text())
    metrics_b = json.loads((reports_b / "metrics.json").read_text())
    final = sorted(k for k in metrics_a if k.startswith("final_"))
    assert final and final == sorted(k for k in metrics_b if k.startswith("final_"))
    assert {k: metrics_a[k] for k in final} == {k: metrics_b[k] for k in final}
    assert metrics_a["epochs"] == metrics_b["epochs"] == SETTINGS[family][f"{family}.epochs"]

    for name in ("loss.csv", "loss_steps.csv"):
        curve_a = pd.read_csv(reports_a / name).drop(columns="seconds", errors="ignore")
        curve_b = pd.read_csv(reports_b / name).drop(columns="seconds", errors="ignore")
        pd.testing.assert_frame_equal(curve_a, curve_b, check_exact=True)
    assert len(pd.read_csv(reports_a / "loss.csv")) == SETTINGS[family][f"{family}.epochs"]


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, mnist_npz):
    """Started together, in the background: per family an uninterrupted run; for the vae also a
    run that finds garbage where its checkpoint would be."""
    runs: dict[str, Run] = {}
    try:
        for family in SETTINGS:
            repo = new_repo(tmp_path_factory.mktemp(f"clean_{family}"), mnist_npz, family)
            runs[family] = Run(repo, family, "clean")
        repo = new_repo(tmp_path_factory.mktemp("corrupt_vae"), mnist_npz, "vae")
        ckpt = repo / paths.checkpoint("vae")
        ckpt.parent.mkdir()
        # the start of a zip (torch's format) cut short, then junk: a truncated, corrupt file
        ckpt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
        runs["corrupt_vae"] = Run(repo, "vae", "corrupt")
        yield runs
    finally:
        for run in runs.values():
            run.stop()


def test_checkpoints_are_no_dvc_output_and_are_git_ignored():
    assert paths.CHECKPOINTS == Path("checkpoints")
    assert paths.checkpoint("vae").parent == paths.CHECKPOINTS
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = []
    for name, stage in stages.items():
        body = stage.get("do", stage)  # foreach stages keep theirs under `do`
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind, []):
                outs.extend(entry if isinstance(entry, dict) else [entry])
    assert "models/${item}.pt" in outs  # the parse found the train stage's outputs
    assert not [out for out in outs if str(out).lstrip("./").startswith("checkpoints")]
    # a checkpoint left by a killed run must not make `git status` dirty or be committed
    ignored = subprocess.run(["git", "check-ignore", "-q", "checkpoints/x.pt"], cwd=REPO)
    assert ignored.returncode == 0


@pytest.mark.parametrize("family", list(SETTINGS))
def test_killed_run_resumes_to_the_uninterrupted_result(family, reference_runs, tmp_path,
                                                        mnist_npz):
    repo = new_repo(tmp_path, mnist_npz, family)
    ckpt, model = repo / paths.checkpoint(family), repo / paths.model(family)

    first = Run(repo, family, "killed")
    try:
        deadline = time.monotonic() + DEADLINE
        # atomic_path writes a temporary file and renames it: once the name exists it is complete
        while not ckpt.exists():
            assert first.proc.poll() is None, f"ended before any checkpoint\n{first.text()}"
            assert time.monotonic() < deadline, f"no checkpoint after {DEADLINE} s\n{first.text()}"
            time.sleep(0.02)
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=60) == -signal.SIGKILL, first.text()
    finally:
        first.stop()
    assert not model.exists(), f"finished before it could be killed\n{first.text()}"
    assert ckpt.exists()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    epoch = state["epoch"]
    assert 1 <= epoch < SETTINGS[family][f"{family}.epochs"]
    assert [row["epoch"] for row in state["history"]] == list(range(1, epoch + 1))

    out = Run(repo, family, "resumed").wait()
    assert f"{family}: resuming after epoch {epoch} from" in out, out
    assert f"{family} epoch 1/" not in out  # the epochs already done were not trained again
    assert not ckpt.exists()  # deleted once the model is written
    assert model.exists()

    clean = reference_runs[family]
    clean_out = clean.wait()
    assert "resuming" not in clean_out
    assert_same_training(repo, clean.repo, family)


def test_corrupt_checkpoint_is_ignored_and_training_starts_over(reference_runs):
    corrupt, clean = reference_runs["corrupt_vae"], reference_runs["vae"]
    out = corrupt.wait()
    assert "ignoring unreadable checkpoint checkpoints/vae.pt" in out, out
    assert "resuming" not in out
    assert "vae epoch 1/" in out
    assert not (corrupt.repo / paths.checkpoint("vae")).exists()
    clean.wait()
    assert_same_training(corrupt.repo, clean.repo, "vae")
