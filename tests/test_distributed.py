"""Data parallelism under torchrun (`trilemma.distributed`): N processes on one global batch must
compute what one process computes, up to floating-point summation order.

End to end, on the CPU with the gloo backend: `torchrun --nproc-per-node 2 --no-python trilemma
train vae` in one tiny repo and plain `trilemma train vae` in another (side by side), then the
saved models and the logged losses are compared; `trilemma sample vae` from one model file under
both launches must give the same images, and `trilemma evaluate vae` the same scores; a global
batch that does not split over the processes, and the single-process `download`, are refused
with one line.

In process (test_distributed_ranks.py): the identity in one process, and a spawned gloo group
training the diffusion family through `fit` on both ranks: the `ddpm` stage end to end would cost
two more torchrun starts (~30 CPU-s) for the same check.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_repo, write_params
from equivalence import DEADLINE, close, flat, scaled_diffs
from trilemma import paths

TRILEMMA = str(Path(sys.executable).parent / "trilemma")
# torchrun through the interpreter running the tests (no reliance on PATH); --standalone: a
# rendezvous on a free port of its own, so parallel test sessions do not collide
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--no-python", TRILEMMA]

# 512 images in global batches of 64 (conftest's TINY): 8 steps an epoch, each rank on 32 rows
SETTINGS = {"data.train_size": 512, "vae.epochs": 2}

# Two processes sum gradients (all-reduce) and loss means in another order than one process:
# float32 rounding, ~1e-7 relative per step, compounded over 16 Adam steps. Weights: max |diff|
# below 1e-5 (observed 6e-8; all VAE weights are below 1 in size), two orders of magnitude above
# that noise and two below what a wrong share or a per-rank noise draw gives (1e-3 to 2e-2).
WEIGHT_TOL = 1e-5
# Adam's moments are gradient statistics, and a gradient summed in another order moves by ~1e-6
# of its size: max |diff| below 1e-4 of the tensor's largest entry (observed 4e-6).
MOMENT_TOL = 1e-4


def env() -> dict[str, str]:
    out = {**os.environ, "TRILEMMA_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out.pop("MLFLOW_TRACKING_URI", None)  # each repo gets its own mlflow.db
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(name, None)  # the plain runs must be plain, whatever launched pytest
    return out


class Command:
    """A command started in `repo` in its own process group, stdout and stderr to files there."""

    def __init__(self, cmd: list[str], repo: Path, tag: str):
        self.cmd, self.repo = cmd, repo
        self.out, self.err = repo / f"{tag}.stdout", repo / f"{tag}.stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=repo, env=env(), stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        """Kill it, torchrun's workers included, if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{' '.join(self.cmd[-3:])} still running after {DEADLINE} s (a hung "
                        f"collective?)\n{self.text()}")

    def text(self) -> str:
        return f"--- stdout\n{self.out.read_text()}--- stderr\n{self.err.read_text()}"

    def ok(self) -> str:
        """Stdout of a command that must succeed."""
        rc = self.wait()
        assert rc == 0, f"{' '.join(self.cmd)} exited {rc}\n{self.text()}"
        assert "Traceback" not in self.err.read_text(), self.text()
        return self.out.read_text()


def new_repo(root: Path, npz: Path, overrides: dict | None = None) -> Path:
    repo = make_repo(root, npz)
    write_params(repo / "params.yaml", {**SETTINGS, **(overrides or {})})
    return repo


class Stages(NamedTuple):
    repos: dict[str, Path]  # "one" | "two": where the VAE was trained by one process, by two
    stdout: dict[str, str]  # their `trilemma train vae` output
    samples: dict[str, dict[str, np.ndarray]]  # samples/vae.npz drawn by one process, by two
    scores: dict[str, str]  # reports/eval/vae/metrics.json of those samples, scored by one, by two


@pytest.fixture(scope="module")
def stages(tmp_path_factory, mnist_npz) -> Stages:
    """The VAE trained by one process and by two, at the same time, each in its own repo (own
    mlflow.db). As soon as the one-process model is written, samples are drawn from it by one
    process (in its repo) and by two (in a fresh repo holding a copy of that model file), while
    the 2-process training may still run: start-up, mostly imports, is most of every command's
    cost, and overlaps."""
    repos = {mode: new_repo(tmp_path_factory.mktemp(f"vae_{mode}"), mnist_npz)
             for mode in ("one", "two")}
    sample_repos = {"one": repos["one"],
                    "two": new_repo(tmp_path_factory.mktemp("sample_two"), mnist_npz)}
    started: list[Command] = []
    try:
        training = {"one": Command([TRILEMMA, "train", "vae"], repos["one"], "train"),
                    "two": Command([*TORCHRUN, "train", "vae"], repos["two"], "train"),
                    "judge": Command([TRILEMMA, "train-classifier"], repos["one"], "judge")}
        started += training.values()
        stdout = {"one": training["one"].ok()}
        (sample_repos["two"] / "models").mkdir()
        shutil.copy(repos["one"] / paths.model("vae"), sample_repos["two"] / paths.model("vae"))
        sampling = [Command([TRILEMMA, "sample", "vae"], sample_repos["one"], "sample"),
                    Command([*TORCHRUN, "sample", "vae"], sample_repos["two"], "sample")]
        started += sampling
        stdout["two"] = training["two"].ok()
        for command in sampling:
            command.ok()
        training["judge"].ok()  # one judge scores both sample files
        for path in (paths.CLASSIFIER, paths.TEST_EMBEDDING):
            shutil.copy(repos["one"] / path, sample_repos["two"] / path)
        scoring = [Command([TRILEMMA, "evaluate", "vae"], sample_repos["one"], "evaluate"),
                   Command([*TORCHRUN, "evaluate", "vae"], sample_repos["two"], "evaluate")]
        started += scoring
        for command in scoring:
            command.ok()
    finally:  # a failed command fails the fixture: the others must not run on
        for command in started:
            command.stop()
    samples = {}
    for mode, repo in sample_repos.items():
        with np.load(repo / paths.samples("vae")) as npz:
            samples[mode] = dict(npz)
    scores = {mode: (repo / paths.eval_reports("vae") / "metrics.json").read_text()
              for mode, repo in sample_repos.items()}
    return Stages(repos, stdout, samples, scores)


def test_two_processes_score_the_samples_as_one(stages):
    """Each rank embeds a share of the images with the judge, rank 0 gathers and scores them: the
    same metrics.json, byte for byte (the scores are rounded to 6 decimals)."""
    assert json.loads(stages.scores["two"])["fid_classifier"] is not None
    assert stages.scores["two"] == stages.scores["one"]


def test_two_processes_train_the_vae_of_one(stages):
    # the runs really were 2 processes and 1: an equivalence that held because torchrun
    # silently ran one process would prove nothing
    timing = {mode: json.loads((repo / paths.train_reports("vae") / "timing.json").read_text())
              for mode, repo in stages.repos.items()}
    assert (timing["one"]["processes"], timing["two"]["processes"]) == (1, 2)
    one, two = (torch.load(stages.repos[mode] / paths.model("vae"), weights_only=True)
                for mode in ("one", "two"))
    diffs = scaled_diffs(one, two)
    steps = {k: v for k, v in diffs.items() if k.startswith("state.opt.") and k.endswith(".step")}
    moments = {k: v for k, v in diffs.items() if k.startswith("state.opt.") and k not in steps}
    weights = {k: v for k, v in diffs.items() if not k.startswith("state.opt.")}
    assert len(weights) >= 8 and len(moments) == 2 * len(weights)  # Adam: exp_avg, exp_avg_sq
    assert set(steps.values()) == {0.0}  # Adam's step counts, float tensors: equal
    print(f"vae: weights max diff {max(weights.values()):.3g}, "
          f"Adam moments max scaled diff {max(moments.values()):.3g}")
    # all weights are below 1 in size: scaled differences are absolute ones
    assert max(one_w.abs().max().item() for k, one_w in flat(one).items() if k in weights) < 1
    far = {k: v for k, v in weights.items() if not v < WEIGHT_TOL}
    assert not far, f"weights of 2 processes differ from 1 beyond {WEIGHT_TOL}: {far}"
    far = {k: v for k, v in moments.items() if not v < MOMENT_TOL}
    assert not far, f"Adam moments of 2 processes differ from 1 beyond {MOMENT_TOL}: {far}"


def test_two_processes_log_the_losses_of_one(stages):
    reports = {mode: repo / paths.train_reports("vae") for mode, repo in stages.repos.items()}
    metrics = {mode: json.loads((path / "metrics.json").read_text())
               for mode, path in reports.items()}
    assert metrics["one"].keys() == metrics["two"].keys()
    final = [k for k in metrics["one"] if k.startswith("final_")]
    assert final and metrics["one"]["epochs"] == metrics["two"]["epochs"] == 2
    far = {k: (metrics["one"][k], metrics["two"][k]) for k in final
           if not close(metrics["one"][k], metrics["two"][k])}
    assert not far, f"metrics.json: {far}"
    for name in ("loss.csv", "loss_steps.csv"):
        one = pd.read_csv(reports["one"] / name).drop(columns="seconds", errors="ignore")
        two = pd.read_csv(reports["two"] / name).drop(columns="seconds", errors="ignore")
        assert list(one.columns) == list(two.columns) and one.shape == two.shape and len(one), name
        far = [(column, i, one[column][i], two[column][i]) for column in one.columns
               for i in range(len(one)) if not close(one[column][i], two[column][i])]
        assert not far, f"{name}: {far[:5]}"
    # rank 0 alone prints progress: one line per epoch, not one per process
    for mode, stdout in stages.stdout.items():
        assert len(re.findall(r"^vae epoch \d+/2 ", stdout, flags=re.M)) == 2, f"{mode}:\n{stdout}"


def test_two_processes_draw_the_samples_of_one(stages):
    one, two = stages.samples["one"], stages.samples["two"]
    assert one.keys() == two.keys()
    assert int(one["processes"]) == 1 and int(two["processes"]) == 2
    # tiny settings: sample.n 64 in batches of 32, so each rank draws one batch of its own
    assert one["images"].shape[0] == 64 and one["images"].dtype == np.uint8
    assert np.array_equal(one["images"], two["images"])  # the same noise per batch: exact
    assert one["sweep_images"].size and np.array_equal(one["sweep_images"], two["sweep_images"])
    assert list(one["sweep_label"]) == list(two["sweep_label"])


class Refused(NamedTuple):
    repo: Path
    rc: int  # torchrun's
    output: str  # torchrun's stdout and stderr
    ranks: list[str]  # each rank's own stderr (torchrun's log dir)


@pytest.fixture(scope="module")
def refused(tmp_path_factory, mnist_npz) -> dict[str, Refused]:
    """Commands torchrun must not run, both at once: "batch", `train vae` with a global batch of
    63; "download"."""
    cases = {"batch": ({"vae.batch_size": 63, "vae.epochs": 1}, ["train", "vae"]),
             "download": ({}, ["download"])}
    commands, out = {}, {}
    try:
        for name, (overrides, args) in cases.items():
            repo = new_repo(tmp_path_factory.mktemp(f"refused_{name}"), mnist_npz, overrides)
            logs = repo / "torchrun-logs"  # --redirects 3: each rank's stdout and stderr there
            cmd = [*TORCHRUN[:-2], "--log-dir", str(logs), "--redirects", "3", *TORCHRUN[-2:],
                   *args]
            commands[name] = Command(cmd, repo, "refused")
        for name, command in commands.items():
            rc = command.wait()
            ranks = sorted((command.repo / "torchrun-logs").rglob("stderr.log"))
            assert len(ranks) == 2, f"{ranks}\n{command.text()}"
            out[name] = Refused(command.repo, rc, command.text(),
                                [path.read_text() for path in ranks])
    finally:
        for command in commands.values():
            command.stop()
    return out


def assert_refused(case: Refused, expected: str) -> None:
    """Each rank that got as far as its error printed it as one line, without a traceback, and
    exited with code 2. torchrun itself exits 1 whenever a worker fails, with its own report
    (and its own traceback) naming each worker's exit code."""
    assert case.rc != 0, case.output
    errors = []
    for text in case.ranks:  # a rank may print nothing: torchrun stops it when the other fails
        assert "Traceback" not in text, text
        mine = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(mine) <= 1, text
        errors += mine
    assert errors, f"no rank printed an error line\n{case.output}"
    for line in errors:
        assert re.search(expected, line), line
    assert re.search(r"exitcode\s*:\s*2\b", case.output), case.output


def test_global_batch_that_does_not_split_over_the_processes_is_refused(refused):
    assert_refused(refused["batch"], r"^error: vae\.batch_size: 63 .*2 processes")
    assert not (refused["batch"].repo / paths.model("vae")).exists()


def test_download_under_torchrun_is_refused(refused):
    case = refused["download"]
    assert_refused(case, r"^error: download runs as one process.*without torchrun")
    data = case.repo / paths.DATA
    assert data.is_symlink() and not (case.repo / "mlflow.db").exists()  # nothing done
