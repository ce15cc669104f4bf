"""The one place that talks to MLflow. Tracking never fails a stage and never holds it up for
more than a few seconds: problems become one warning and the stage goes on untracked.

Default store: sqlite:///<repo>/mlflow.db with artifacts in <repo>/mlartifacts (the repo is the
working directory, where DVC runs stages); $MLFLOW_TRACKING_URI points elsewhere, e.g. a server.
Every stage run is nested under one parent run per pipeline execution (DVC experiment, commit,
profile), so the UI groups, compares and deletes whole pipeline runs.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from trilemma.tracking_files import (report_files, reports_digest, stage_metrics, synced_stages,
                                     tables)
from trilemma.tracking_view import VIEW_TAG, view_tag_value

EXPERIMENT = "trilemma"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # the UI opens on runs
PARENT_TAG = "mlflow.parentRunId"
PIPELINE_TAG = "pipeline_run"  # on a parent run: the execution it groups (see pipeline_key)
# on evaluate runs: the UI unfolds their pipeline run on a browser's first visit, so that the
# scores view's charts have runs to show (a folded group charts nothing)
RUN_TYPE_TAG, EVALUATION = "mlflow.runType", "evaluation"

# MLflow's own defaults retry for minutes (7 retries with backoff, 120 s per request): a stage
# would wait ~4 min on a closed port and far longer on a server that never answers. These bound
# one failing call to about 2 * 5 s; a variable set in the environment wins.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
PROBE_S = 3.0  # a server must answer its first request within this, or the stage runs untracked
LOCK_WAIT = 2.0  # seconds to wait for a locked SQLite store before running untracked
STALL_S = 60.0  # last resort for what the bounds above miss (a hung disk): stop waiting


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Run:
    """An MLflow run fed by one background thread: the stage queues its calls and goes on, so
    MLflow's import and start-up happen on that thread only and overlap the stage's work. The
    calls run in order; at the first failure tracking turns itself off with one warning.
    `close` waits for the queue to drain (gives up if one call hangs for STALL_S)."""

    def __init__(self, start: Callable[[], Any] | None):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._started = threading.Event()
        self._trace_logged = 0  # points of the training curve logged so far (log_training)
        self._busy_since: float | None = time.monotonic()  # when the running call began
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
        self._busy_since = None
        while (call := self._calls.get()) is not None:
            self._busy_since = time.monotonic()
            name, function, args, kwargs, cleanup = call
            try:
                if mlflow is not None:
                    function(mlflow, *args, **kwargs)
            except Exception as err:  # tracking is best effort by design
                warn(f"MLflow {name} failed, tracking off for this stage: {err}")
                mlflow = None
            finally:
                self._busy_since = None
                if cleanup is not None:
                    cleanup()

    def _call(self, method: str | Callable, *args: Any,
              cleanup: Callable[[], None] | None = None, **kwargs: Any) -> None:
        """Queue mlflow.<method>(*args, **kwargs), or method(mlflow, *args, **kwargs)."""
        if isinstance(method, str):
            name, function = method, (lambda mlflow, *a, **k: getattr(mlflow, method)(*a, **k))
        else:
            name, function = method.__name__.strip("_"), method
        self._calls.put((name, function, args, kwargs, cleanup))

    def wait_started(self) -> None:
        """Block until MLflow's start-up is over: call it before timing anything, so that the
        start-up does not compete with the timed work for the CPU."""
        self._started.wait()

    def close(self, status: str) -> None:
        self._call(_finish, status)
        self._calls.put(None)
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
            since = self._busy_since
            if since is not None and time.monotonic() - since > STALL_S:
                warn(f"MLflow has not answered for {STALL_S:.0f} s: this stage stops waiting "
                     "and its run stays unfinished")
                return

    def call(self, function: Callable[..., None], *args: Any,
             cleanup: Callable[[], None] | None = None) -> None:
        """`function(mlflow, *args)` on the thread, in order with the other calls (e.g. logging
        a model); then `cleanup()`, whatever happened."""
        self._call(function, *args, cleanup=cleanup)

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("log_params", {k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Numbers of `metrics` (others are skipped) at x = `step`: training curves, the
        learning-curve probes and losses, pass the optimisation step."""
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._call("log_metrics", numeric, step=step)

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
        """Logs the file as it is now: a copy is queued, since stages rewrite files (grid.png
        after every epoch) before the thread gets to them."""
        snapshot = Path(tempfile.mkdtemp(prefix="trilemma-artifact-"))
        copy = shutil.copy2(path, snapshot / Path(path).name)
        self._call("log_artifact", str(copy), artifact_path=artifact_path,
                   cleanup=lambda: shutil.rmtree(snapshot, ignore_errors=True))

    def log_reports(self, stage: str, family: str | None) -> None:
        """The stage's summary scores as metrics, its per-class CSVs as tables, tagged with the
        digest of its metric files: what `sync` compares to tell that these reports are in
        MLflow already. Call it after the files are written."""
        files = report_files(stage, family)
        self.log_metrics(stage_metrics(stage, family))
        for name, columns in tables(stage, family).items():
            self._call("log_table", data=columns, artifact_file=name)
        self._call("set_tag", "reports_digest", reports_digest(files))


def warn(message: str) -> None:
    """One line on stderr, however long the underlying error text."""
    line = " ".join(str(message).split("\n")[0].split())
    print(f"warning: {line}", file=sys.stderr, flush=True)


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


def _check_server_answers(uri: str) -> None:
    """Fail within PROBE_S seconds if the tracking server at `uri` does not answer (a closed
    port fails at once, a listener that never answers after PROBE_S); before importing mlflow,
    so that an unreachable server costs nothing more."""
    import ssl
    import urllib.error
    import urllib.request

    # a server mlflow is told to trust without checking its certificate: so does the probe
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    context = ssl._create_unverified_context() if insecure else None
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_S,
                               context=context).close()
    except urllib.error.HTTPError:
        return  # it answered, if not at /health (a proxy in front of it)
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise RuntimeError(f"{uri} does not answer ({reason})") from None


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


def _connect() -> Any:
    """mlflow, pointed at the store and the experiment, with bounded HTTP settings."""
    root = Path.cwd().resolve()
    default = f"sqlite:///{root / 'mlflow.db'}"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default
    if uri.startswith("sqlite:///"):
        _check_sqlite_writable(uri)
    elif uri.startswith(("http://", "https://")):
        _check_server_answers(uri)
    for name, value in {"MLFLOW_DISABLE_TELEMETRY": "true", **HTTP_LIMITS}.items():
        os.environ.setdefault(name, value)  # read by mlflow at every request
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its store set-up chatter
    mlflow.set_tracking_uri(uri)  # every time: the setting is global to the process
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        from mlflow.exceptions import MlflowException

        # our embedded store keeps artifacts beside it; another store decides for itself
        location = (root / "mlartifacts").as_uri() if uri == default else None
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=location,
                                     tags={KIND_TAG: KIND, VIEW_TAG: view_tag_value()})
        except MlflowException as error:  # parallel runs on one server: another one created it
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if KIND_TAG not in experiment.tags:  # a store made before: its UI opened on GenAI traces
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
    if VIEW_TAG not in experiment.tags:  # a store made before the scores view (tracking_view)
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, VIEW_TAG,
                                                 view_tag_value())
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return mlflow


def pipeline_key(dvc_exp: str, commit: str, profile: str) -> str:
    """What one pipeline execution's stages share: the DVC experiment (`workspace` for a plain
    `dvc repro`), the commit and the profile. Only filter-safe characters."""
    return "".join(c if c.isalnum() or c in "-_.@:" else "_"
                   for c in f"{dvc_exp}@{commit}:{profile}")


def _parent_run(mlflow: Any, key: str, name: str, tags: dict[str, str]) -> str:
    """The id of the parent run of pipeline execution `key`, created by its first stage. Two
    stages creating it at once keep the older of the two."""
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id

    def oldest() -> Any:
        found = client.search_runs([experiment_id], f"tags.{PIPELINE_TAG} = '{key}'",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        return found[0] if found else None

    if (found := oldest()) is not None:
        return found.info.run_id
    created = client.create_run(experiment_id, run_name=name, tags={**tags, PIPELINE_TAG: key})
    first = oldest()
    if first.info.run_id != created.info.run_id:
        client.delete_run(created.info.run_id)
    return first.info.run_id


def _start(stage: str, family: str | None, profile: str, tags: dict[str, str] | None = None) -> Any:
    mlflow = _connect()
    dvc_exp, commit = os.environ.get("DVC_EXP_NAME", "workspace"), git_commit()
    shared = {"profile": profile, "git_commit": commit, "dvc_exp": dvc_exp}
    parent = _parent_run(mlflow, pipeline_key(dvc_exp, commit, profile),
                         f"pipeline {dvc_exp} {commit[:7]} {profile}", shared)
    tags = {"stage": stage, "family": family or "-", **shared, PARENT_TAG: parent, **(tags or {})}
    if stage.startswith("evaluate"):
        tags[RUN_TYPE_TAG] = EVALUATION
    name = f"{stage}:{family}" if family else stage
    mlflow.start_run(run_name=name, tags=tags)
    return mlflow


def _finish(mlflow: Any, status: str) -> None:
    """End the stage's run; its parent takes the stage's status and end time, so that a
    pipeline run spans its stages and shows whether the latest one succeeded."""
    run = mlflow.active_run()
    parent = run.data.tags.get(PARENT_TAG) if run is not None else None
    mlflow.end_run(status=status)
    if parent is not None:
        mlflow.MlflowClient().set_terminated(parent, status)


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
    yet (DVC skipped it, or it ran with tracking off): one run each, tagged `synced`, nested
    under the pipeline run of this commit as the stages' own runs are. Running it again adds
    nothing. Returns (run name, what happened) per stage."""
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
        mlflow.log_metrics(stage_metrics(stage, family))
        for table, columns in tables(stage, family).items():
            mlflow.log_table(data=columns, artifact_file=table)
        for path in sorted(next(iter(files)).parent.glob("*")):
            if path.is_file():
                mlflow.log_artifact(str(path))
        _finish(mlflow, "FINISHED")
        done.append((name, "logged"))
    return done
