"""The MLflow side of tracking: the store (which one, whether it takes writes, its experiment and
pipeline runs), the tracker process that logs a stage's run after the stage has ended (`python
-m trilemma.tracker MARKER`, started by `tracking.hand_over` with the run pickled on its stdin),
and `sync`, which logs what DVC skipped. MLflow itself is imported only inside `connect`.
Trackers of one store take turns under a file lock, so SQLite sees one writer (the lock does not
promise first-come order); each removes its marker when done, which `tracking.wait_for_trackers`
waits for."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from trilemma.tracking_files import Logged, report_files, reports_digest
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
TRACKER_LIMIT_S = 600  # a tracker still at work after this stops (a hung server or disk)
TRACKER_LOG = Path("logs") / "mlflow-tracker.log"  # MLflow's own output in trackers, under the repo


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_uri(root: Path) -> str:
    """The embedded store of the repository at `root` (DVC's working directory)."""
    return f"sqlite:///{root / 'mlflow.db'}"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(Path.cwd().resolve())


def check_store(uri: str) -> None:
    """RuntimeError, within LOCK_WAIT or PROBE_S seconds and without MLflow, when the store at
    `uri` cannot take this stage's run."""
    if uri.startswith("sqlite:///"):
        _check_sqlite_writable(uri)
    elif uri.startswith(("http://", "https://")):
        _check_server_answers(uri)


def spool(uri: str) -> Path:
    """The folder where the trackers of one store meet: its lock (one tracker writes at a time,
    in the order they get it) and a marker per handed-over run that is not in the store yet."""
    folder = Path(tempfile.gettempdir()) / (
        "trilemma-tracking-" + hashlib.sha256(uri.encode()).hexdigest()[:16])
    folder.mkdir(exist_ok=True)
    return folder


_terminal: list[TextIO] = []  # in a tracker: where its warnings go while MLflow's output is set aside


def warn(message: str) -> None:
    """One line on stderr, however long the underlying error text (nothing if nobody reads
    it any more: a tracker can outlive the pipe of its stage)."""
    line = " ".join(str(message).split("\n")[0].split())
    try:
        print(f"warning: {line}", file=_terminal[-1] if _terminal else sys.stderr, flush=True)
    except OSError:
        pass


@contextmanager
def mlflow_output_to(log: Path) -> Iterator[None]:
    """MLflow's own lines ("Created version 3 of model ...", its logging) into the file `log`
    (or nowhere, if it cannot be opened), not onto the terminal: a tracker works while the next
    stage prints, and its lines would read as that stage's. Our warnings still reach stderr."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "a", buffering=1)
    except OSError:
        out = open(os.devnull, "w")
    _terminal.append(sys.stderr)
    try:
        with out, redirect_stdout(out), redirect_stderr(out):
            yield
    finally:
        _terminal.pop()


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


def replay(journal: dict[str, Any], on_locked: Callable[[], None] = lambda: None) -> None:
    """Log the run written down in `journal` (see tracking.Run), waiting for this store's
    lock first (then `on_locked()`). The first failing call turns tracking off for the rest of
    the run, with one warning naming the stage; none for a failed stage, whose own error stays
    its last line."""
    name = journal["stage"] + (f":{journal['family']}" if journal["family"] else "")
    say = warn if journal["status"] == "FINISHED" else (lambda message: None)
    with open(spool(journal["uri"]) / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time
        on_locked()
        try:
            mlflow = connect(journal["uri"], journal["root"])
            _start(mlflow, journal["stage"], journal["family"], journal["profile"],
                   dvc_exp=journal["dvc_exp"], commit=journal.get("commit"),
                   start_ms=journal["start_ms"])
        except Exception as err:
            say(f"MLflow unavailable, {name} runs untracked: {err}")
            return
        for method, args, kwargs in journal["calls"]:
            try:
                if isinstance(method, str):
                    getattr(mlflow, method)(*args, **kwargs)
                else:
                    method(mlflow, *args, **kwargs)
            except Exception as err:  # tracking is best effort by design
                say(f"MLflow {getattr(method, '__name__', method)} failed, tracking off for "
                    f"{name}: {err}")
                break
        _finish(mlflow, journal["status"], journal["end_ms"])


def log_journal(journal: dict[str, Any], on_locked: Callable[[], None] = lambda: None) -> None:
    """Replay the run, then delete the file copies it logged; a failure is one warning."""
    try:
        replay(journal, on_locked)
    except Exception as err:  # tracking is best effort by design
        if journal["status"] == "FINISHED":
            warn(f"MLflow tracker failed: {err}")
    finally:
        for folder in journal["snapshots"]:
            shutil.rmtree(folder, ignore_errors=True)


def main(marker: str) -> None:
    """The tracker process: at low priority (it shares the CPU with the next stage), its pid in
    its marker (a killed tracker's marker is then passed over), the run from stdin, and at most
    TRACKER_LIMIT_S of logging once it holds the lock."""
    done = Path(marker)
    done.write_text(str(os.getpid()))

    def stop(signum, frame) -> None:  # a hung server or disk: give up, marker and all
        warn(f"MLflow tracker still at work after {TRACKER_LIMIT_S} s: its run stays unfinished")
        done.unlink(missing_ok=True)
        os._exit(1)

    signal.signal(signal.SIGALRM, stop)
    try:
        os.nice(19)
        journal = pickle.load(sys.stdin.buffer)
        with mlflow_output_to(Path(journal["root"]) / TRACKER_LOG):
            log_journal(journal, lambda: signal.alarm(TRACKER_LIMIT_S))
    except Exception as err:  # an unreadable journal: the stage's run is lost, say so
        warn(f"MLflow tracker failed: {err}")
    finally:
        done.unlink(missing_ok=True)


def connect(uri: str | None = None, root: str | None = None) -> Any:
    """mlflow, pointed at the store (default: the one of `root`, the stage's working directory,
    by default this one) and the experiment, with bounded HTTP settings."""
    root = Path(root) if root else Path.cwd().resolve()
    default = default_uri(root)
    uri = uri or tracking_uri()
    check_store(uri)
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


def _parent_run(client: Any, experiment_id: str, key: str, name: str, tags: dict[str, str],
                start_ms: int | None = None) -> str:
    """The id of the parent run of pipeline execution `key`, created by its first stage. Two
    stages creating it at once keep the older of the two."""

    def oldest() -> Any:
        found = client.search_runs([experiment_id], f"tags.{PIPELINE_TAG} = '{key}'",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        return found[0] if found else None

    if (found := oldest()) is not None:
        return found.info.run_id
    created = client.create_run(experiment_id, start_time=start_ms, run_name=name,
                                tags={**tags, PIPELINE_TAG: key})
    first = oldest()
    if first.info.run_id != created.info.run_id:
        client.delete_run(created.info.run_id)
    return first.info.run_id


def _start(mlflow: Any, stage: str, family: str | None, profile: str,
           tags: dict[str, str] | None = None, dvc_exp: str | None = None,
           commit: str | None = None, start_ms: int | None = None) -> None:
    """Start the (stage, family) run under its pipeline run, begun at `start_ms` (default now)."""
    dvc_exp = dvc_exp or os.environ.get("DVC_EXP_NAME", "workspace")
    commit = commit or git_commit()
    shared = {"profile": profile, "git_commit": commit, "dvc_exp": dvc_exp}
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = _parent_run(client, experiment_id, pipeline_key(dvc_exp, commit, profile),
                         f"pipeline {dvc_exp} {commit[:7]} {profile}", shared, start_ms)
    tags = {"stage": stage, "family": family or "-", **shared, PARENT_TAG: parent, **(tags or {})}
    if stage.startswith("evaluate"):
        tags[RUN_TYPE_TAG] = EVALUATION
    name = f"{stage}:{family}" if family else stage
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
    mlflow.start_run(run_id=run.info.run_id)


def _finish(mlflow: Any, status: str, end_ms: int | None = None) -> None:
    """End the stage's run at `end_ms` (default now); its parent takes the stage's status and
    end time, so that a pipeline run spans its stages and shows whether the latest one
    succeeded."""
    run = mlflow.active_run()
    if run is None:
        return
    parent = run.data.tags.get(PARENT_TAG)
    mlflow.end_run(status=status)
    client = mlflow.MlflowClient()
    if end_ms is not None:
        client.set_terminated(run.info.run_id, status, end_time=end_ms)
    if parent is not None:  # spans its stages, whichever tracker came last
        end = end_ms if end_ms is not None else int(time.time() * 1000)
        client.set_terminated(parent, status,
                              end_time=max(end, client.get_run(parent).info.end_time or 0))


def sync(stages: dict[tuple[str, str | None], Logged | Path],
         profile: str) -> list[tuple[str, str]]:
    """Log the metric files under reports/ of every stage whose current files are not in MLflow
    yet (DVC skipped it, or it ran with tracking off), from what `tracking_files.read_stages`
    read: one run each, tagged `synced`, nested under the pipeline run of this commit as the
    stages' own runs are. Running it again adds nothing. Returns (run name, what happened) per
    stage."""
    mlflow = connect()
    done = []
    for (stage, family), logged in stages.items():
        name = f"{stage}:{family}" if family else stage
        if isinstance(logged, Path):
            done.append((name, f"skipped: {logged} not found (stage not run yet)"))
            continue
        files = report_files(stage, family)
        digest = reports_digest(stage, family)
        if mlflow.search_runs(
                experiment_names=[EXPERIMENT], max_results=1, output_format="list",
                filter_string=f"tags.reports_digest = '{digest}' and attributes.status = 'FINISHED'"):
            done.append((name, "up to date"))
            continue
        _start(mlflow, stage, family, profile, {"synced": "true", "reports_digest": digest})
        metrics, tables = logged
        mlflow.log_metrics(metrics)
        for table, columns in tables.items():
            mlflow.log_table(data=columns, artifact_file=table)
        for path in sorted(next(iter(files)).parent.glob("*")):
            if path.is_file():
                mlflow.log_artifact(str(path))
        _finish(mlflow, "FINISHED")
        done.append((name, "logged"))
    return done


if __name__ == "__main__":
    main(sys.argv[1])
