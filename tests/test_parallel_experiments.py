"""Parallel experiments, end to end: two `dvc exp run --queue` experiments with different seeds,
run by `dvc queue start -j 2`, every stage logging to one `mlflow server` on loopback through
MLFLOW_TRACKING_URI. Tiny settings and one family (vae) keep it near a minute and a half
on a 2-core CPU.

Checks: both experiments succeed and `dvc exp show` lines up their (different) metrics, which
`trilemma seed-spread` tabulates; the server holds one FINISHED run per (stage, family) for each
experiment, tagged with its DVC experiment name and the baseline commit, with the same numbers as the experiment's metric files; and no local
SQLite store appeared in the repository or in the queue's temporary workspaces.
Also that every run lands in the one 'trilemma' MLflow experiment, although both experiments'
first stages race to create it on the fresh server.

Skipped only where the `mlflow` CLI or `git` cannot be found.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_params
from mlflow_server import start_server, stop, wait_healthy
from test_e2e import copy_repo

from trilemma import tracking

BIN = Path(sys.executable).parent
PATH = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
MLFLOW = shutil.which("mlflow", path=PATH)
GIT = shutil.which("git", path=PATH)
pytestmark = [
    pytest.mark.skipif(MLFLOW is None, reason="the `mlflow` CLI is not on PATH (nor in the venv)"),
    pytest.mark.skipif(GIT is None, reason="`git` not found: `dvc exp run --queue` needs a git repo"),
]

FAMILIES = ["vae"]  # the queue and the server are what is tested: one family is enough
SEEDS = {"seed1": 1, "seed2": 2}  # DVC experiment name -> its seed
STAGES = ["download", "train-classifier", *[f"{stage}:{family}" for family in FAMILIES
                                            for stage in ("train", "sample", "evaluate")], "report"]
METRIC = "fid_classifier"
QUEUE_S = 900  # both took 80 s on an idle 2-core machine; on a loaded one the 420 s before ran out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free loopback port with its own SQLite store and proxied artifacts:
    (base URL, process, log path). It comes up (~10 s of imports) while the repo is prepared;
    `wait_healthy` is called before the queue starts. Always stopped at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    log = root / "server.log"
    process, base = start_server(f"sqlite:///{root / 'server.db'}", root, log,
                                 artifacts=root / "artifacts")
    try:
        yield base, process, log
    finally:
        stop(process)


def command(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True,
            timeout: float = 120) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def local_stores(root: Path) -> list[str]:
    """MLflow's embedded store anywhere under the repo, the queue's workspaces included. os.walk
    skips folders that vanish while it looks (DVC makes and removes its workspaces meanwhile);
    Path.rglob raised FileNotFoundError on one."""
    found = []
    for folder, subfolders, files in os.walk(root):
        found += [os.path.join(folder, name) for name in (*subfolders, *files)
                  if name in ("mlflow.db", "mlartifacts")]
    return sorted(str(Path(p).relative_to(root)) for p in found)


def queue_states(root: Path, env: dict[str, str]) -> dict[str, str]:
    """`dvc queue status` as {experiment name: Queued | Running | Success | Failed}."""
    states = {}
    for line in command(["dvc", "queue", "status"], root, env).splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in SEEDS:
            states[words[1]] = words[-1]
    return states


@pytest.fixture(scope="module")
def queued(tmp_path_factory, server):
    """A git repo copy with tiny params, two queued experiments run by two workers against the
    server: a dict with the repo root, the env, the baseline commit, each experiment's
    `dvc queue logs`, and every local store seen while they ran."""
    base, process, log = server
    root = copy_repo(tmp_path_factory.mktemp("queue-repo"))
    (root / ".dvc/.gitignore").write_text("/config.local\n/tmp\n/cache\n")  # as `dvc init` writes
    write_params(root / "params.yaml", {"families": FAMILIES, "i2i_families": [],
                                         "control.families": []})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update({"PATH": PATH, "MLFLOW_TRACKING_URI": base, "TRILEMMA_DEVICE": "cpu",
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "OMP_NUM_THREADS": "1"})  # two jobs on two cores: one thread each
    for cmd in (["init", "-q"], ["config", "user.name", "trilemma test"],
                ["config", "user.email", "test@trilemma.invalid"], ["add", "-A"],
                ["commit", "-q", "-m", "baseline"]):
        command([GIT, *cmd], root, env)
    tracked = command([GIT, "ls-files"], root, env).split()
    assert "params.yaml" in tracked and not any(p.startswith(("data/", "models/")) for p in tracked)
    baseline = command([GIT, "rev-parse", "--short=12", "HEAD"], root, env).strip()

    for name, seed in SEEDS.items():
        command(["dvc", "exp", "run", "--queue", "-S", f"seed={seed}", "-n", name], root, env)
    wait_healthy(process, base, log)
    started = time.monotonic()
    seen_stores: set[str] = set()
    try:
        # output to a file, not a pipe: the workers it spawns inherit the descriptors and keep
        # a pipe open until the experiments end, which `capture_output` would wait for
        with open(root.parent / "queue-start.log", "w") as out:
            done = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=120)
        assert done.returncode == 0, (root.parent / "queue-start.log").read_text()
        # cheap polling: the experiments' git refs appear as they succeed; `dvc queue status`
        # (a second of CPU each) only every 15 s, to notice a failure early
        states: dict[str, str] = {}
        last_status = time.monotonic()
        while True:
            seen_stores.update(local_stores(root))
            refs = command([GIT, "for-each-ref", "--format=%(refname)", "refs/exps"], root, env)
            done = set(SEEDS) <= {ref.rsplit("/", 1)[-1] for ref in refs.split()}
            if done or time.monotonic() - last_status > 15:
                states = queue_states(root, env)
                last_status = time.monotonic()
                if all(states.get(name) in ("Success", "Failed") for name in SEEDS):
                    break
            if time.monotonic() - started > QUEUE_S:
                break
            time.sleep(1)
        tracking.wait_for_trackers(base)  # the last stages' runs are on the server
        seen_stores.update(local_stores(root))
        logs = {name: command(["dvc", "queue", "logs", name], root, env, check=False)
                for name in SEEDS}
        failed = {name: state for name, state in states.items() if state != "Success"}
        assert set(states) == set(SEEDS) and not failed, (
            f"queue states after {time.monotonic() - started:.0f} s: {states}\n" + "\n".join(
                f"--- dvc queue logs {name} ---\n{logs[name][-6000:]}" for name in SEEDS))
        print(f"both experiments done in {time.monotonic() - started:.0f} s")
        yield {"root": root, "env": env, "baseline": baseline, "logs": logs,
               "seen_stores": sorted(seen_stores), "base": base}
    finally:
        # idle workers exit by themselves after a while; a failure may leave one busy
        command(["dvc", "queue", "stop", "--kill"], root, env, check=False, timeout=60)


@pytest.fixture(scope="module")
def shown(queued) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: {metrics file: its data}}."""
    out = command(["dvc", "exp", "show", "--json"], queued["root"], queued["env"])
    found = {}
    for baseline in json.loads(out):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") in SEEDS:
                    metrics = (rev.get("data") or {}).get("metrics") or {}
                    found[rev["name"]] = {path: entry.get("data") for path, entry in metrics.items()}
    return found


@pytest.fixture(scope="module")
def runs(queued) -> list:
    """Every run on the server, whatever its experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=queued["base"])
    experiments = client.search_experiments()
    experiment_names = {e.experiment_id: e.name for e in experiments}
    found = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    for run in found:
        run.experiment_name = experiment_names[run.info.experiment_id]
    return found


def test_both_queued_experiments_succeed_with_their_own_metrics(queued, shown):
    assert set(shown) == set(SEEDS), f"dvc exp show lists {sorted(shown)}, not {sorted(SEEDS)}"
    for family in FAMILIES:
        path = f"reports/eval/{family}/metrics.json"
        values = {}
        for name in SEEDS:
            data = shown[name].get(path)
            assert data and isinstance(data.get(METRIC), float), (name, path, data)
            values[name] = data[METRIC]
        assert values["seed1"] != values["seed2"], f"{family}: same {METRIC} for both seeds {values}"
    for name, log in queued["logs"].items():
        assert "Running stage 'report'" in log, f"{name} did not reach the report stage:\n{log}"


def test_server_holds_every_stage_of_both_experiments(queued, shown, runs):
    parents = {r.data.tags["dvc_exp"]: r.info.run_id for r in runs if "pipeline_run" in r.data.tags}
    assert sorted(parents) == sorted(SEEDS), f"one parent run per experiment: {parents}"
    by_key = {}
    for run in (r for r in runs if "pipeline_run" not in r.data.tags):
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parents[tags["dvc_exp"]], (tags["dvc_exp"], tags)
        key = (tags.get("dvc_exp"), run.info.run_name)
        assert key not in by_key, f"two runs {key} on the server"
        by_key[key] = run
    expected = {(name, stage) for name in SEEDS for stage in STAGES}
    assert expected <= by_key.keys(), f"missing runs: {sorted(expected - by_key.keys())}"
    for (name, stage), run in sorted(by_key.items()):
        assert run.info.status == "FINISHED", (name, stage, run.info.status)
        tags = run.data.tags
        family = stage.split(":")[1] if ":" in stage else "-"
        assert (tags["stage"], tags["family"]) == (stage.split(":")[0], family), (name, stage, tags)
        assert tags["git_commit"] == queued["baseline"], (name, stage, tags["git_commit"])
        assert tags["profile"] == "quick"
    for name, seed in SEEDS.items():
        for family in FAMILIES:
            train = by_key[(name, f"train:{family}")]
            assert train.data.params.get("seed") == str(seed), (name, family, train.data.params)
            evaluate = by_key[(name, f"evaluate:{family}")]
            on_disk = shown[name][f"reports/eval/{family}/metrics.json"][METRIC]
            assert evaluate.data.metrics[METRIC] == pytest.approx(on_disk), (name, family)


def test_every_run_lands_in_the_trilemma_experiment(runs):
    """Both experiments' first stages start together on a fresh server and race to create the
    MLflow experiment; the loser must still log into it, not into 'Default'."""
    misplaced = sorted((r.data.tags.get("dvc_exp"), r.info.run_name, r.experiment_name)
                       for r in runs if r.experiment_name != "trilemma")
    assert not misplaced, (
        f"runs outside the 'trilemma' experiment: {misplaced}. A stage that lost the race to "
        "create the experiment (mlflow.set_experiment returns early on RESOURCE_ALREADY_EXISTS "
        "without making it active) logs into 'Default'")


def test_runs_went_to_the_server_not_a_local_store(queued):
    assert not queued["seen_stores"], f"local MLflow stores appeared: {queued['seen_stores']}"
    assert not local_stores(queued["root"])
    for name, log in queued["logs"].items():
        assert "warning: MLflow" not in log, f"{name} ran (partly) untracked:\n{log}"
        # which server holds the runs is checked on the server; MLflow's own "View run … at:
        # <server>" lines go to the tracker's log, not among the next stage's lines
        assert queued["base"] not in log and "View run" not in log, log


def test_seed_spread_reads_the_experiments_of_the_queue(queued, shown):
    """`trilemma seed-spread` in the repo runs `dvc exp show --json` itself and finds both seeds'
    runs (the workspace ran nothing); every value of its CSV is an experiment's metric."""
    out = command(["trilemma", "seed-spread"], queued["root"], queued["env"])
    assert "from 2 runs: seed1 (seed 1), seed2 (seed 2)" in out, out
    rows = list(csv.DictReader((queued["root"] / "reports/seeds/quick/spread.csv").open()))
    fids = {r["family"]: r for r in rows if r["metric"] == METRIC}
    assert sorted(fids) == sorted(FAMILIES)
    for family, row in fids.items():
        values = [shown[name][f"reports/eval/{family}/metrics.json"][METRIC] for name in SEEDS]
        assert [float(row["seed_1"]), float(row["seed_2"])] == pytest.approx(values, rel=1e-5)
        assert float(row["mean"]) == pytest.approx(sum(values) / 2, rel=1e-5)
    table = (queued["root"] / "reports/seeds/quick/spread.md").read_text()
    assert all(f"| {family} |" in table for family in FAMILIES), table
