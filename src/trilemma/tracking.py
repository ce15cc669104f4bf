"""Tracking as a stage sees it: the stage writes its MLflow run down as it works and hands it
to a tracker process when it ends (`trilemma.tracker`), which logs it while DVC moves on. A stage
never imports MLflow nor waits for it: MLflow's import and store set-up (about 2 CPU-seconds)
run beside DVC's own work between stages. Tracking never fails a stage: an unreachable store
costs one warning and the stage runs untracked.

Default store: sqlite:///<repo>/mlflow.db with artifacts in <repo>/mlartifacts (the repo is the
working directory, where DVC runs stages); $MLFLOW_TRACKING_URI points elsewhere, e.g. a server.
Every stage run is nested under one parent run per pipeline execution (DVC experiment, commit,
profile), so the UI groups, compares and deletes whole pipeline runs. `wait_for_trackers`
waits until every handed-over run is in the store (`sync-mlflow` and the tests call it).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from trilemma.io import is_number
from trilemma.tracker import (TRACKER_LIMIT_S, check_store, git_commit, log_journal, spool,
                              tracking_uri, warn)
from trilemma.tracking_files import reports_digest, stage_metrics, tables

_started: list[subprocess.Popen] = []  # the trackers this process started


class Run:
    """One stage's MLflow run, written down while the stage works: the calls in order, with
    copies of the files to log (stages rewrite files before a tracker gets to them). Meanwhile
    a thread checks, without MLflow, that the store takes writes; `close` hands the run to a
    tracker process, or, when the store is unavailable, warns once and drops it."""

    def __init__(self, stage: str, family: str | None, profile: str):
        self.header = {"stage": stage, "family": family, "profile": profile,
                       "uri": tracking_uri(), "root": str(Path.cwd().resolve()),
                       "dvc_exp": os.environ.get("DVC_EXP_NAME", "workspace"),
                       "start_ms": int(time.time() * 1000)}
        self.calls: list[tuple[Any, tuple, dict]] = []
        self.snapshots: list[Path] = []  # copies of logged files; the tracker deletes them
        self._trace_logged = 0  # points of the training curve logged so far (log_training)
        self._unavailable: str | None = None
        self._check = threading.Thread(target=self._check_store, name="mlflow-check", daemon=True)
        self._check.start()

    def _check_store(self) -> None:
        try:
            check_store(self.header["uri"])
            self.header["commit"] = git_commit()
        except Exception as err:
            self._unavailable = str(err)

    def _call(self, method: str | Callable, *args: Any, **kwargs: Any) -> None:
        """Write down mlflow.<method>(*args, **kwargs), or method(mlflow, *args, **kwargs) for a
        module-level function (the tracker imports it by name)."""
        self.calls.append((method, args, kwargs))

    def close(self, status: str) -> None:
        """Hand the run, ended with `status`, to a tracker process; do not wait for it. A
        process that has imported MLflow already (a notebook, the tests) logs the run itself,
        as a tracker would: a tracker would only import MLflow a second time."""
        self.header.update(status=status, end_ms=int(time.time() * 1000))
        self._check.join()  # bounded: LOCK_WAIT for SQLite, PROBE_S for a server
        if self._unavailable is not None:
            warn(f"MLflow unavailable, this stage runs untracked: {self._unavailable}")
            return self._drop_snapshots()
        journal = {**self.header, "calls": self.calls, "snapshots": self.snapshots}
        if "mlflow" in sys.modules:  # on a thread of its own, as MLflow's active run is per
            logger = threading.Thread(target=log_journal, args=(journal,), name="mlflow")
            logger.start()  # thread: a run the caller has open stays out of it
            return logger.join()
        try:
            hand_over(journal)
        except Exception as err:  # tracking is best effort by design
            warn(f"MLflow tracker did not start, this stage runs untracked: {err}")
            self._drop_snapshots()

    def _drop_snapshots(self) -> None:
        for folder in self.snapshots:
            shutil.rmtree(folder, ignore_errors=True)

    def call(self, function: Callable[..., None], *args: Any, snapshot: Path | None = None) -> None:
        """`function(mlflow, *args)` in the tracker, in order with the other calls (e.g. logging
        a model); `snapshot`, a folder of file copies it reads, is deleted after the run."""
        self._call(function, *args)
        if snapshot is not None:
            self.snapshots.append(Path(snapshot))

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", {k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Numbers of `metrics` (others are skipped) at x = `step`: training curves, the
        learning-curve probes and losses, pass the optimisation step. Stamped with the time of
        this call, not of the tracker's."""
        numeric = {k: float(v) for k, v in metrics.items() if is_number(v)}
        self._call("log_metrics", numeric, step=step, timestamp=int(time.time() * 1000))

    def log_training(self, row: dict[str, Any], trace: list[dict[str, Any]]) -> None:
        """After an epoch (`row`, the loop's summary of it): the points of `trace`, the training
        curve, that are not logged yet, each loss under its own name at x = the point's
        optimisation step (one chart per loss), and the epoch's seconds at its last step."""
        for point in trace[self._trace_logged:]:
            self.log_metrics({k: v for k, v in point.items() if k not in ("step", "epoch")},
                             step=int(point["step"]))
        self._trace_logged = len(trace)
        last = int(trace[-1]["step"]) if trace else int(row["epoch"])
        self.log_metrics({"epoch": row["epoch"], "epoch_seconds": row.get("seconds")}, step=last)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Logs the file as it is now: a copy is taken, since stages rewrite files (grid.png
        after every epoch) before the tracker gets to them."""
        snapshot = Path(tempfile.mkdtemp(prefix="trilemma-artifact-"))
        copy = shutil.copy2(path, snapshot / Path(path).name)
        self.snapshots.append(snapshot)
        self._call("log_artifact", str(copy), artifact_path=artifact_path)

    def log_reports(self, stage: str, family: str | None) -> None:
        """The stage's summary scores as metrics, its per-class CSVs as tables, tagged with the
        digest of its metric files and tables: what `sync` compares to tell that these reports are in
        MLflow already. Call it after the files are written."""
        self.log_metrics(stage_metrics(stage, family))
        for name, columns in tables(stage, family).items():
            self._call("log_table", data=columns, artifact_file=name)
        self._call("set_tag", "reports_digest", reports_digest(stage, family))


@contextmanager
def stage_run(stage: str, family: str | None, profile: str) -> Iterator[Run]:
    """One MLflow run for one (stage, family), ended with the stage's status."""
    run = Run(stage, family, profile)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run.close(status)


def hand_over(journal: dict[str, Any]) -> None:
    """Start a tracker process for the run in `journal` (pickled to its stdin) and return. It
    runs in its own session, so DVC neither waits for it nor stops it with the stage; its
    warnings go where the stage's output goes, MLflow's own lines to tracker.TRACKER_LOG."""
    blob = pickle.dumps(journal)  # before anything starts: an unpicklable call fails here
    marker = spool(journal["uri"]) / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.pending"
    marker.touch()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:  # in the temp folder: DVC's queue deletes an experiment's folder when it is done
        tracker = subprocess.Popen([sys.executable, "-m", "trilemma.tracker", str(marker)],
                                   stdin=subprocess.PIPE, start_new_session=True, env=env,
                                   cwd=tempfile.gettempdir())
        _started.append(tracker)
        with tracker.stdin:
            tracker.stdin.write(blob)
    except BaseException:
        marker.unlink(missing_ok=True)
        raise


def wait_for_trackers(uri: str | None = None, timeout: float = TRACKER_LIMIT_S + 30) -> None:
    """Block until the trackers this process started are done and every run any process handed
    over for the store at `uri` (default: this directory's) is in it; markers older than a
    tracker may live are left to their fate."""
    deadline = time.monotonic() + timeout
    for tracker in _started:
        try:
            tracker.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            return
    _started.clear()
    folder = spool(uri or tracking_uri())
    while time.monotonic() < deadline and any(_pending(m) for m in folder.glob("*.pending")):
        time.sleep(0.05)


def _pending(marker: Path) -> bool:
    """Whether the marker stands for a run still on its way: its tracker (the pid it wrote) is
    alive, or it has not started yet and the marker is young."""
    try:
        pid, age = marker.read_text().strip(), time.time() - marker.stat().st_mtime
    except OSError:  # removed meanwhile: done
        return False
    if not pid:
        return age < 60
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # alive, another user's
        pass
    return age < TRACKER_LIMIT_S * 3


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


