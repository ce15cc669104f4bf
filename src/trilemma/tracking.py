"""The one place that talks to MLflow. Tracking never fails a stage: problems become one warning.

Default store: sqlite:///<repo>/mlflow.db with artifacts in <repo>/mlartifacts (the repo is the
working directory, where DVC runs stages); $MLFLOW_TRACKING_URI points elsewhere, e.g. a server.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

EXPERIMENT = "trilemma"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """An MLflow run fed by one background thread: the stage queues its calls and goes on, so
    MLflow's start-up (about 3.5 s of imports and store set-up on a CPU) overlaps the stage's work
    instead of delaying it. The calls run in order; at the first failure tracking turns itself
    off with one warning. `close` waits for the queue to drain."""

    def __init__(self, start: Callable[[], Any] | None):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(start,), name="mlflow", daemon=True)
        self._thread.start()

    def _work(self, start: Callable[[], Any] | None) -> None:
        mlflow = None
        if start is not None:
            try:
                mlflow = start()
            except Exception as err:
                warn(f"MLflow unavailable, this stage runs untracked: {err}")
        self._started.set()
        while (call := self._calls.get()) is not None:
            method, args, kwargs, cleanup = call
            try:
                if mlflow is not None and callable(method):  # see `call`
                    method(mlflow, *args, **kwargs)
                elif mlflow is not None:
                    getattr(mlflow, method)(*args, **kwargs)
            except Exception as err:  # tracking is best effort by design
                name = getattr(method, "__name__", method)
                warn(f"MLflow {name} failed, tracking off for this stage: {err}")
                mlflow = None
            finally:
                if cleanup is not None:
                    cleanup()

    def _call(self, method: str, *args: Any, cleanup: Callable[[], None] | None = None,
              **kwargs: Any) -> None:
        self._calls.put((method, args, kwargs, cleanup))

    def wait_started(self) -> None:
        """Block until MLflow's start-up is over: call it before timing anything, so that the
        start-up does not compete with the timed work for the CPU."""
        self._started.wait()

    def close(self, status: str) -> None:
        self._call("end_run", status=status)
        self._calls.put(None)
        self._thread.join()

    def call(self, function: Callable[..., None], *args: Any,
             cleanup: Callable[[], None] | None = None) -> None:
        """`function(mlflow, *args)` on the thread, in order with the other calls (e.g. logging
        a model); then `cleanup()`, whatever happened."""
        self._call(function, *args, cleanup=cleanup)

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", {k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._call("log_metrics", numeric, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Logs the file as it is now: a copy is queued, since stages rewrite files (grid.png
        after every epoch) before the thread gets to them."""
        snapshot = Path(tempfile.mkdtemp(prefix="trilemma-artifact-"))
        copy = shutil.copy2(path, snapshot / Path(path).name)
        self._call("log_artifact", str(copy), artifact_path=artifact_path,
                   cleanup=lambda: shutil.rmtree(snapshot, ignore_errors=True))

    def log_reports(self, stage: str, family: str | None) -> None:
        """The stage's metric files as metrics, tagged with their digest: what `sync` compares
        to tell that these reports are in MLflow already. Call it after the files are written."""
        files = report_files(stage, family)
        self.log_metrics(file_metrics(files))
        self._call("set_tag", "reports_digest", reports_digest(files))


def warn(message: str) -> None:
    """One line on stderr, however long the underlying error text."""
    line = " ".join(str(message).split("\n")[0].split())
    print(f"warning: {line}", file=sys.stderr, flush=True)


LOCK_WAIT = 2.0  # seconds to wait for a locked SQLite store before running untracked


def _check_sqlite_writable(uri: str) -> None:
    """Fail within LOCK_WAIT seconds if another process holds the SQLite store locked (MLflow
    itself retries for about 40 s before giving up)."""
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return
    con = sqlite3.connect(path, timeout=LOCK_WAIT, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # takes the write lock, or raises "database is locked"
        con.execute("ROLLBACK")
    except sqlite3.OperationalError as err:
        raise RuntimeError(f"{path}: {err}") from None
    finally:
        con.close()


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def synced_stages(families: list[str], i2i: list[str] = (),
                  control: list[str] = ()) -> list[tuple[str, str | None]]:
    """(stage, family) of every stage that writes metric files, in pipeline order."""
    return ([("train-classifier", None)] + [("train", f) for f in families]
            + [("evaluate", f) for f in families] + [("train-i2i", f) for f in i2i]
            + [("evaluate-i2i", f) for f in i2i]
            + ([("train-referee", None)] if control else []) + [("control", f) for f in control])


def report_files(stage: str, family: str | None) -> dict[Path, str]:
    """The JSON metric files a stage writes under reports/, each with the prefix its metric names
    get in MLflow."""
    from trilemma import paths

    if stage == "train-classifier":
        folder = paths.CLASSIFIER_REPORTS
        return {folder / "metrics.json": "", folder / "timing.json": "",
                paths.REAL_METRICS: "floor_"}
    if stage == "train-referee":
        folder = paths.REFEREE_REPORTS
    else:
        folder = {"train": paths.train_reports, "evaluate": paths.eval_reports,
                  "train-i2i": paths.train_reports, "evaluate-i2i": paths.eval_reports,
                  "control": paths.control_reports}[stage](family)
    return {folder / "metrics.json": "", folder / "timing.json": ""}


def file_metrics(files: dict[Path, str]) -> dict[str, float]:
    """The numbers in JSON metric files, nested keys joined by dots (class_histogram.3)."""
    import json

    found: dict[str, Any] = {}
    for path, prefix in files.items():
        found.update({prefix + k: v for k, v in flatten(json.loads(path.read_text())).items()})
    return {k: float(v) for k, v in found.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def reports_digest(files: dict[Path, str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _connect() -> Any:
    """mlflow, pointed at the store and the experiment."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its store set-up chatter

    root = Path.cwd().resolve()
    default = f"sqlite:///{root / 'mlflow.db'}"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default
    if uri.startswith("sqlite:///"):
        _check_sqlite_writable(uri)
    mlflow.set_tracking_uri(uri)  # every time: the setting is global to the process
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        from mlflow.exceptions import MlflowException

        # our embedded store keeps artifacts beside it; another store decides for itself
        location = (root / "mlartifacts").as_uri() if uri == default else None
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=location)
        except MlflowException as error:  # parallel runs on one server: another one created it
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return mlflow


def _start(stage: str, family: str | None, profile: str, tags: dict[str, str] | None = None) -> Any:
    mlflow = _connect()
    tags = {"stage": stage, "family": family or "-", "profile": profile, "git_commit": git_commit(),
            "dvc_exp": os.environ.get("DVC_EXP_NAME", "workspace"), **(tags or {})}
    name = f"{stage}:{family}" if family else stage
    mlflow.start_run(run_name=name, tags=tags)
    return mlflow


@contextmanager
def stage_run(stage: str, family: str | None, profile: str) -> Iterator[Run]:
    """One MLflow run for one (stage, family), ended with the stage's status."""
    run = Run(lambda: _start(stage, family, profile))
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run.close(status)


def sync(families: list[str], profile: str, i2i: list[str] = (),
         control: list[str] = ()) -> list[tuple[str, str]]:
    """Log the metric files under reports/ of every stage whose current files are not in MLflow
    yet (DVC skipped it, or it ran with tracking off): one run each, tagged `synced`. Running it
    again adds nothing. Returns (run name, what happened) per stage."""
    mlflow = _connect()
    done = []
    for stage, family in synced_stages(families, i2i, control):
        name = f"{stage}:{family}" if family else stage
        files = report_files(stage, family)
        missing = [str(p) for p in files if not p.exists()]
        if missing:
            done.append((name, f"skipped: {missing[0]} not found (stage not run yet)"))
            continue
        digest = reports_digest(files)
        if mlflow.search_runs(
                experiment_names=[EXPERIMENT], max_results=1, output_format="list",
                filter_string=f"tags.reports_digest = '{digest}' and attributes.status = 'FINISHED'"):
            done.append((name, "up to date"))
            continue
        _start(stage, family, profile, {"synced": "true", "reports_digest": digest})
        mlflow.log_metrics(file_metrics(files))
        for path in sorted(next(iter(files)).parent.glob("*")):
            if path.is_file():
                mlflow.log_artifact(str(path))
        mlflow.end_run()
        done.append((name, "logged"))
    return done
