"""Faults around a stage: a locked MLflow store must not fail it; a bad checkpoint, a full disk,
Ctrl-C or a kill must cost nothing already written, and say so in one line."""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from badinput import check_error, fails, invoke, snapshot, unchanged
from conftest import make_repo, write_params
from pipeline.cli import app
from trilemma import paths, tracker, tracking
from trilemma.io import atomic_dir, write_json


def test_locked_mlflow_store_gives_one_warning_and_the_stage_still_succeeds(tiny_repo):
    assert CliRunner().invoke(app, ["train", "vae"]).exit_code == 0  # creates mlflow.db
    holder = sqlite3.connect(tiny_repo / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: nobody else may
    try:
        (tiny_repo / "models" / "vae.pt").unlink()
        result = CliRunner().invoke(app, ["train", "vae"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "database is locked" in warnings[0], result.output
    assert "Traceback" not in result.output
    assert (tiny_repo / "models" / "vae.pt").is_file()


def test_a_free_sqlite_store_passes_the_lock_check(tmp_path):
    path = tmp_path / "mlflow.db"
    sqlite3.connect(path).close()
    tracker._check_sqlite_writable(f"sqlite:///{path}")  # no error
    tracker._check_sqlite_writable(f"sqlite:///{tmp_path / 'absent.db'}")  # created later


def test_warnings_are_one_line(capsys):
    tracking.warn("first line\nSQL: SELECT ...\n(Background: ...)")
    assert capsys.readouterr().err == "warning: first line\n"


# ---------------------------------------------------------------------------------------------
# checkpoints, interrupted writes, full disks, non-finite measurements


class _Planted:
    """Unpickling this creates `marker`: what a planted checkpoint could do with weights_only off."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("content", ["a-list", "planted-code"])
def test_checkpoint_that_is_no_training_state_is_ignored(repo, content):
    ckpt, marker = repo / paths.checkpoint("vae"), repo / "code-ran"
    ckpt.parent.mkdir(exist_ok=True)
    torch.save([1, 2, 3] if content == "a-list" else {"trainee": _Planted(marker)}, ckpt)
    result = CliRunner().invoke(app, ["train", "vae"])
    assert result.exit_code == 0, result.output
    assert "ignoring" in result.output and str(paths.checkpoint("vae")) in result.output
    assert not marker.exists()  # loaded with weights_only=True: nothing ran
    assert not ckpt.exists()  # replaced by a real one, deleted once the model was written


def test_full_disk_is_one_line_and_the_old_samples_stay(repo):
    """A file-size limit stands in for a full disk: writes past it fail with EFBIG (an OSError,
    like ENOSPC), not only PermissionError."""
    before = snapshot(repo)
    # the rerun writes files of the same sizes: the figures fit under the limit, the samples not
    limit = max(p.stat().st_size for p in (repo / "reports/samples/vae").iterdir()) + 1000
    assert limit < (repo / paths.samples("vae")).stat().st_size

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    exe = Path(sys.executable).with_name("trilemma")
    # MLflow at a store it refuses (the stage runs untracked, with a warning): what MLflow does
    # on a full disk is the MLflow tests' concern
    env = {**os.environ, "TRILEMMA_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": (repo.parent / "mlruns").as_uri()}
    proc = subprocess.run([str(exe), "sample", "vae"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=small_files)
    check_error(proc.stdout + proc.stderr, proc.stderr, proc.returncode, "samples/vae.npz",
                "cannot write")
    unchanged(repo, before)
    assert not list(repo.rglob(".*.tmp*")), "temporary files left behind"


def test_write_json_writes_null_for_non_finite_measurements(tmp_path):
    write_json(tmp_path / "m.json", {"fid": math.inf, "rows": [math.nan, 1.5], "n": 3})
    text = (tmp_path / "m.json").read_text()

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(text, parse_constant=refuse) == {"fid": None, "rows": [None, 1.5], "n": 3}


def test_folder_outputs_are_swapped_in_whole(tmp_path):
    out = tmp_path / "reports" / "eval" / "vae"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("old\n")
    (out / "per_class.csv").write_text("old\n")
    with pytest.raises(RuntimeError), atomic_dir(out) as staged:  # killed half-way
        (staged / "metrics.json").write_text("new\n")
        raise RuntimeError("stage died")
    assert {p.name: p.read_text() for p in out.iterdir()} == \
        {"metrics.json": "old\n", "per_class.csv": "old\n"}
    with atomic_dir(out) as staged:
        (staged / "metrics.json").write_text("new\n")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"metrics.json": "new\n"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["vae"]  # no temporary folder left


def test_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    out = tmp_path / "reports"
    out.mkdir()
    (out / f".metrics.json.tmp{dead}").write_text("half")
    (out / f".figures.tmp{dead}").mkdir()
    write_json(out / "metrics.json", {"a": 1})
    with atomic_dir(out / "figures"):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.json"]


def test_ctrl_c_in_training_says_where_it_resumes(tmp_path, mnist_npz):
    repo = make_repo(tmp_path, mnist_npz)
    write_params(repo / "params.yaml", {"data.train_size": 3000, "vae.epochs": 3})
    env = {**os.environ, "TRILEMMA_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # a shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that:
    # the command gets the default disposition back, as from a terminal
    proc = subprocess.Popen([str(Path(sys.executable).with_name("trilemma")), "train", "vae"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt, deadline = repo / paths.checkpoint("vae"), time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("interrupted: vae: training stopped; a rerun resumes from "
                           "checkpoints/vae.pt (after epoch 1"), err
    assert not (repo / paths.model("vae")).exists()


# ---------------------------------------------------------------------------------------------
# training stages: their report folders are swapped in whole


def _disk_fills_at(monkeypatch, name: str) -> None:
    """Writing the CSV file `name` fails as on a full disk; the files before it are written."""
    import pandas as pd

    to_csv = pd.DataFrame.to_csv

    def failing(frame, path, *args, **kwargs):
        if Path(path).name == name or Path(path).name.startswith(f".{name}.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return to_csv(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing)


def _under(files: dict[str, str], *folders: str) -> dict[str, str]:
    return {k: v for k, v in files.items() if k.startswith(folders)}


def test_train_failing_part_way_keeps_the_old_reports_and_a_rerun_needs_no_training(repo):
    before = _under(snapshot(repo), "reports/train/vae/")
    assert "reports/train/vae/loss.csv" in before and "reports/train/vae/grid.png" in before
    model = (repo / paths.model("vae")).stat()
    with pytest.MonkeyPatch.context() as mp:
        _disk_fills_at(mp, "loss_steps.csv")  # loss.csv is written just before it
        fails(invoke("train", "vae"), "reports/train/vae/loss_steps.csv", "cannot write")
    assert _under(snapshot(repo), "reports/train/vae/") == before
    # the model is written only once its reports are built: the old one stays beside them (a
    # rewrite replaces the file, even with the same bytes)
    assert (repo / paths.model("vae")).stat().st_ino == model.st_ino
    assert not list((repo / "reports").rglob(".*")), "temporary folder left behind"
    assert (repo / paths.checkpoint("vae")).is_file()  # kept: the reports are not in yet

    result = invoke("train", "vae")
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output  # the last one: nothing left to train
    after = _under(snapshot(repo), "reports/train/vae/")
    # the grid is drawn again from the resumed model: the same bytes as the first run's; only
    # time-bearing files (loss.csv keeps each epoch's seconds) differ
    varying = {"reports/train/vae/timing.json", "reports/train/vae/loss.csv"}
    assert {k: v for k, v in after.items() if k not in varying} == \
        {k: v for k, v in before.items() if k not in varying}
    assert not (repo / paths.checkpoint("vae")).exists()


def test_train_classifier_failing_part_way_keeps_the_old_reports_and_floor(repo, monkeypatch):
    folders = ("reports/classifier/", "reports/eval/real/")
    before = _under(snapshot(repo), *folders)
    assert "reports/eval/real/metrics.json" in before
    _disk_fills_at(monkeypatch, "history.csv")  # per_class.csv is written just before it
    fails(invoke("train-classifier"), "reports/classifier/history.csv", "cannot write")
    assert _under(snapshot(repo), *folders) == before
    assert not list((repo / "reports").rglob(".*")), "temporary folder left behind"


def test_training_stages_log_their_reports_to_mlflow_from_the_swapped_in_folders(
        trained, tmp_path, monkeypatch):
    """The shared trained repo ran train-classifier and train vae with MLflow on: what reached
    it is the files that were swapped in."""
    from mlflow import MlflowClient

    from trilemma.tracking_files import reports_digest

    client = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trilemma")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}

    def artifacts(run_id: str, path: str | None = None) -> list[str]:
        found = []
        for item in client.list_artifacts(run_id, path):
            found += artifacts(run_id, item.path) if item.is_dir else [item.path]
        return sorted(found)

    def logged(run_id: str, path: str) -> bytes:
        return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_bytes()

    def digest(stage: str, family: str | None) -> str:
        monkeypatch.chdir(trained)  # the digest covers the paths as the stage names them
        return reports_digest(stage, family)

    train, out = runs["train:vae"], trained / "reports" / "train" / "vae"
    assert artifacts(train.info.run_id) == ["grids/epoch_001/grid.png", "latent.png", "loss.csv"]
    assert logged(train.info.run_id, "grids/epoch_001/grid.png") == \
        (out / "grid.png").read_bytes()  # the epoch's grid, logged from the temporary folder
    assert logged(train.info.run_id, "latent.png") == (out / "latent.png").read_bytes()
    assert logged(train.info.run_id, "loss.csv") == (out / "loss.csv").read_bytes()
    assert train.data.tags["reports_digest"] == digest("train", "vae")
    clf, out = runs["train-classifier"], trained / "reports" / "classifier"
    assert artifacts(clf.info.run_id) == ["confusion.png", "history.csv", "per_class.csv",
                                          "per_class.json"]
    assert logged(clf.info.run_id, "history.csv") == (out / "history.csv").read_bytes()
    assert clf.data.tags["reports_digest"] == digest("train-classifier", None)
    assert "floor_fid_classifier" in clf.data.metrics
    assert not list((trained / "reports").rglob(".*")), "temporary folder left behind"
