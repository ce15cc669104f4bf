"""MLflow tracking as the stages use it: bounded when the server is unreachable (without any
test-only MLflow settings), never imported by a stage (a tracker process logs its run after it),
one parent run per pipeline execution, the experiment made a model-training one, losses by
optimisation step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from conftest import ROOT
from pipeline.cli import app
from trilemma import tracker, tracking, tracking_view

BOUND_S = 10  # what an unreachable MLflow may cost a stage, at most


@pytest.fixture
def no_mlflow_overrides(monkeypatch):
    """The project's own HTTP bounds, not the environment's: none of MLflow's request settings."""
    for name in [n for n in os.environ if n.startswith("MLFLOW_HTTP_REQUEST_")]:
        monkeypatch.delenv(name)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def silent_server():
    """A loopback listener that accepts connections (the kernel does, from its backlog) and
    never answers a byte: the URL of it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def train_untracked(monkeypatch, root, uri: str) -> tuple[float, list[str]]:
    """`trilemma train vae` with MLflow at `uri`: the seconds its main thread waited for MLflow
    (in Run.close, timed around the real method: the stage's own work varies with the machine's
    load, this does not) and its warning lines."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    waited = []

    def timed(method):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                waited.append(time.perf_counter() - t0)
        return run

    monkeypatch.setattr(tracking.Run, "close", timed(tracking.Run.close))
    result = CliRunner().invoke(app, ["train", "vae"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert (root / "models" / "vae.pt").is_file()
    assert len(waited) == 1, waited  # the stage did end its run
    return sum(waited), [line for line in result.output.splitlines()
                         if line.startswith("warning:")]


def test_a_closed_port_costs_a_stage_seconds_and_one_warning(tiny_repo, monkeypatch,
                                                            no_mlflow_overrides):
    seconds, warnings = train_untracked(monkeypatch, tiny_repo,
                                        f"http://127.0.0.1:{closed_port()}")
    assert len(warnings) == 1 and "MLflow unavailable" in warnings[0], warnings
    assert seconds < BOUND_S, f"{seconds:.1f} s"


def test_a_server_that_never_answers_costs_a_stage_seconds_and_one_warning(
        tiny_repo, monkeypatch, no_mlflow_overrides, silent_server):
    seconds, warnings = train_untracked(monkeypatch, tiny_repo, silent_server)
    assert len(warnings) == 1 and "does not answer" in warnings[0], warnings
    assert seconds < BOUND_S, f"{seconds:.1f} s"


IMPORT_WATCH = textwrap.dedent("""
    import sys, threading
    importers = set()

    class Watch:  # notes which thread asks for mlflow, then lets the import go on
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow":
                importers.add(threading.current_thread().name)

    sys.meta_path.insert(0, Watch())
    from pipeline.cli import app
    try:
        app(["train", "vae"])
    except SystemExit as end:
        assert end.code == 0, end.code
    print("importers:", sorted(importers))
""")


def test_a_stage_never_imports_mlflow_and_its_tracker_logs_the_run(tiny_repo):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", IMPORT_WATCH], cwd=tiny_repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "importers: []\n" in result.stdout, result.stdout + result.stderr[-3000:]
    client, _, runs = runs_of(tiny_repo)  # the tracker's stderr was the pipe: it is done
    (train,) = [r for r in runs if r.info.run_name == "train:vae"]
    assert train.info.status == "FINISHED" and "kl" in train.data.metrics
    assert train.info.end_time - train.info.start_time > 0  # the stage's times, not the tracker's
    assert [int(v.version) for v in client.search_model_versions("name = 'trilemma-vae'")] == [1]
    # MLflow's own lines went to the tracker's log, not onto the terminal of the next command
    assert "trilemma-vae" not in result.stdout + result.stderr
    assert "Created version '1' of model 'trilemma-vae'" in \
        (tiny_repo / tracker.TRACKER_LOG).read_text()


def runs_of(root):
    from mlflow import MlflowClient

    tracking.wait_for_trackers(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("trilemma")
    return client, experiment, client.search_runs([experiment.experiment_id])


def test_stage_runs_of_one_execution_share_a_parent_that_spans_them(tiny_repo, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "seed1")
    for stage in ("train", "sample"):
        with tracking.stage_run(stage, "vae", "quick") as run:
            run.log_metrics({"x": 1.0})
    monkeypatch.setenv("DVC_EXP_NAME", "seed2")  # another experiment: another parent
    with tracking.stage_run("train", "vae", "quick"):
        pass
    client, experiment, runs = runs_of(tiny_repo)
    assert experiment.tags[tracker.KIND_TAG] == "custom_model_development"
    assert tracking_view.VIEW_TAG in experiment.tags  # a new store gets the view at once
    parents = {r.data.tags["dvc_exp"]: r for r in runs if tracker.PIPELINE_TAG in r.data.tags}
    assert sorted(parents) == ["seed1", "seed2"]
    children = {}
    for run in runs:
        if tracker.PIPELINE_TAG not in run.data.tags:
            children.setdefault(run.data.tags[tracker.PARENT_TAG], []).append(run.info.run_name)
    assert sorted(children[parents["seed1"].info.run_id]) == ["sample:vae", "train:vae"]
    assert children[parents["seed2"].info.run_id] == ["train:vae"]
    seed1 = parents["seed1"].info
    assert seed1.status == "FINISHED" and seed1.run_name.startswith("pipeline seed1 ")
    last_child_end = max(r.info.end_time for r in runs
                         if r.data.tags.get(tracker.PARENT_TAG) == seed1.run_id)
    assert seed1.end_time >= last_child_end


def test_an_existing_experiment_gets_the_kind_and_the_scores_view_once(tiny_repo, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    made = client.create_experiment("trilemma")  # as stores made before the kind and the view
    assert tracking_view.stored_experiment(tiny_repo / "mlflow.db") == (made, False)
    with tracking.stage_run("train", "vae", "quick"):
        pass
    _, experiment, _ = runs_of(tiny_repo)
    assert experiment.tags[tracker.KIND_TAG] == "custom_model_development"
    envelope = json.loads(experiment.tags[tracking_view.VIEW_TAG])
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == "attributes.run_name LIKE 'evaluate:%'"
    charted = [c["metricKey"] for c in state["compareRunCharts"] if not c["deleted"]]
    assert charted[:2] == ["fid_classifier", "kid_classifier"] and len(charted) == 10, charted
    assert not [m for m in charted if m.startswith("class_histogram")], charted
    assert tracking_view.stored_experiment(tiny_repo / "mlflow.db") == (made, True)
    tracking_view.main([str(tiny_repo / "mlflow.db"), "5000"])  # what `make mlflow-ui` prints
    assert capsys.readouterr().out.endswith(f"{tracking_view.link(made)}\n")
    with tracking.stage_run("sample", "vae", "quick"):  # the view is written once, not rewritten
        pass
    assert runs_of(tiny_repo)[1].tags[tracking_view.VIEW_TAG] == experiment.tags[
        tracking_view.VIEW_TAG]


def test_losses_are_logged_by_optimisation_step_under_their_own_names(tiny_repo):
    trace = [{"step": 5, "epoch": 0.5, "loss": 2.0, "kl": 0.5},
             {"step": 10, "epoch": 1.0, "loss": 1.0, "kl": 0.25}]
    with tracking.stage_run("train", "vae", "quick") as run:
        run.log_training({"epoch": 1, "seconds": 3.0, "loss": 1.5, "kl": 0.4}, trace)
        trace.append({"step": 15, "epoch": 1.5, "loss": 0.5, "kl": 0.125})
        run.log_training({"epoch": 2, "seconds": 2.0, "loss": 0.5, "kl": 0.1}, trace)
    client, _, runs = runs_of(tiny_repo)
    (train,) = [r for r in runs if r.info.run_name == "train:vae"]
    history = {name: sorted((m.step, m.value)
                            for m in client.get_metric_history(train.info.run_id, name))
               for name in train.data.metrics}
    assert history["loss"] == [(5, 2.0), (10, 1.0), (15, 0.5)]
    assert history["kl"] == [(5, 0.5), (10, 0.25), (15, 0.125)]
    assert history["epoch_seconds"] == [(10, 3.0), (15, 2.0)]
    assert not [name for name in history if name.startswith("step_")]


def test_the_http_bounds_are_settings_mlflow_accepts(monkeypatch):
    """MLflow reads each with its own type (the backoff factor is an int): a value it cannot
    convert fails every request to a server."""
    from mlflow import environment_variables

    for name, value in tracker.HTTP_LIMITS.items():
        monkeypatch.setenv(name, value)
        assert str(getattr(environment_variables, name).get()) in (value, f"{value}.0"), name


def test_a_run_the_caller_has_open_stays_out_of_the_stages_run(tiny_repo):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    mlflow.set_experiment("notebook")
    with mlflow.start_run(run_name="notebook") as mine:
        with tracking.stage_run("sample", "vae", "quick") as run:
            run.log_metrics({"samples_per_second": 3.0})
        assert mlflow.active_run().info.run_id == mine.info.run_id
    _, _, runs = runs_of(tiny_repo)
    (stage,) = [r for r in runs if r.info.run_name == "sample:vae"]
    assert stage.info.status == "FINISHED" and stage.data.metrics == {"samples_per_second": 3.0}
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_a_journal_that_cannot_be_pickled_starts_no_tracker_and_leaves_no_marker(tiny_repo):
    uri = f"sqlite:///{tiny_repo / 'mlflow.db'}"
    with pytest.raises(Exception, match="pickle"):
        tracking.hand_over({"uri": uri, "calls": [(lambda mlflow: None, (), {})]})
    assert not list(tracker.spool(uri).glob("*.pending"))


def test_waiting_passes_over_the_marker_of_a_tracker_that_was_killed(tiny_repo):
    uri = f"sqlite:///{tiny_repo / 'mlflow.db'}"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    marker = tracker.spool(uri) / "0-killed.pending"
    marker.write_text(gone)  # its pid is no process now
    t0 = time.monotonic()
    tracking.wait_for_trackers(uri, timeout=30)
    assert time.monotonic() - t0 < 5
    marker.unlink()


def test_a_trackers_warnings_reach_the_terminal_and_mlflows_own_lines_do_not(tmp_path):
    """The tracker process sets MLflow's output aside (logs/mlflow-tracker.log); its own
    warning, here that the server does not answer, still prints where the stage printed."""
    import pickle

    journal = {"stage": "train", "family": "vae", "profile": "quick", "root": str(tmp_path),
               "uri": f"http://127.0.0.1:{closed_port()}", "dvc_exp": "workspace",
               "start_ms": 0, "end_ms": 1, "status": "FINISHED", "calls": [], "snapshots": []}
    marker = tmp_path / "run.pending"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-m", "trilemma.tracker", str(marker)],
                          input=pickle.dumps(journal), capture_output=True, env=env,
                          timeout=120, cwd=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 0 and done.stdout == b"", err
    assert err.startswith("warning: MLflow unavailable, train:vae runs untracked: ")
    assert err.count("\n") == 1, err
    assert "warning" not in (tmp_path / tracker.TRACKER_LOG).read_text()
    assert not marker.exists()
