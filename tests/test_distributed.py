"""Data parallelism under torchrun (`trilemma.distributed`): N processes on one global batch must
compute what one process computes, up to floating-point summation order.

End to end, on the CPU with the gloo backend: `torchrun --nproc-per-node 2 --no-python trilemma
train vae` in one tiny repo and plain `trilemma train vae` in another (side by side), then the
saved models and the logged losses are compared; `trilemma sample vae` from one model file under
both launches must give the same images, and `trilemma evaluate vae` the same scores; a global
batch that does not split over the processes, and the single-process `download`, are refused
with one line.

In-process: every function of `distributed` is the identity in one process. A real 2-process
gloo group (spawned here, no torchrun, no CLI) checks the share/draw contract the equivalence
rests on, and trains the diffusion family through `fit` on both ranks against one process: the
`ddpm` stage end to end would cost two more torchrun starts (~30 CPU-s) for the same check.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from conftest import base_params, make_repo, with_overrides, write_params
from test_resume import flat  # nested model file -> {"state.vae.encoder.0.weight": tensor, ...}
from trilemma import distributed, families, i2i, paths
from trilemma.config import parse_params
from trilemma.errors import ConfigError
from trilemma.runtime import seed_everything
from trilemma.train import fit

TRILEMMA = str(Path(sys.executable).parent / "trilemma")
# torchrun through the interpreter running the tests (no reliance on PATH); --standalone: a
# rendezvous on a free port of its own, so parallel test sessions do not collide
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--no-python", TRILEMMA]
DEADLINE = 180  # seconds per command: a hung collective fails the test instead of blocking CI
CPU = torch.device("cpu")

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
# The diffusion U-Net is compared by its outputs (see its test): max |diff| below 1e-4 of their
# largest entry (observed 1.3e-6); the same noise drawn on both ranks moves them by 8e-2.
OUTPUT_TOL = 1e-4
# loss.csv holds 6 significant digits (%.6g), metrics.json 6 decimals: one step of that rounding
# (up to 1e-5 relative, 1e-6 absolute) on top of the summation-order noise
LOSS_REL, LOSS_ABS = 2e-5, 2e-6


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


def scaled_diffs(a: dict, b: dict) -> dict[str, float]:
    """Two saved models: every non-tensor entry (config, image spec, optimiser settings) and every
    integer tensor equal; per float tensor, max |a-b| / max(1, max |b|)."""
    flat_a, flat_b = flat(a), flat(b)
    assert flat_a.keys() == flat_b.keys()
    diffs = {}
    for key, value in flat_a.items():
        other = flat_b[key]
        if not isinstance(value, torch.Tensor):
            assert value == other, key
            continue
        assert value.shape == other.shape and value.dtype == other.dtype, key
        if not value.is_floating_point():
            assert torch.equal(value, other), key
        elif value.numel():
            scale = max(1.0, other.abs().max().item())
            diffs[key] = (value.double() - other.double()).abs().max().item() / scale
    return diffs


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


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=LOSS_REL, abs_tol=LOSS_ABS)


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


# --- one process: the identity -------------------------------------------------------------------

def test_single_process_is_the_identity(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.active() and not distributed.launched()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.start(CPU) == CPU and not distributed.active()  # joins no group

    rows = torch.arange(12).reshape(6, 2)
    shared = distributed.share(rows)
    assert torch.equal(shared, rows) and shared.data_ptr() == rows.data_ptr()  # a view, no copy

    for draw, plain in (
            (lambda: distributed.randn(5, 3), lambda: torch.randn(5, 3)),
            (lambda: distributed.randn(5, 3, dtype=torch.float64),
             lambda: torch.randn(5, 3, dtype=torch.float64)),
            (lambda: distributed.randn_like(torch.empty(4, 1, 2, 2)),
             lambda: torch.randn(4, 1, 2, 2)),
            (lambda: distributed.rand(7, 1), lambda: torch.rand(7, 1)),
            (lambda: distributed.randint(0, 20, 9), lambda: torch.randint(0, 20, (9,)))):
        torch.manual_seed(123)
        ours = draw()
        torch.manual_seed(123)
        theirs = plain()
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)

    distributed.check_batch(7, "x")  # one process: any batch splits
    values = {"loss": torch.tensor(1.5), "kl": torch.tensor(0.25)}
    assert distributed.average(values) is values
    assert distributed.gather_dict({3: "a"}) == {3: "a"}
    assert torch.equal(distributed.gather_rows(rows), rows)
    assert distributed.contiguous_share(10) == slice(0, 10)
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap({"net": net}, CPU) == {"net": net}
    with distributed.no_sync(net):
        pass
    distributed.barrier()
    distributed.stop()  # no group: nothing to leave


def test_launched_reads_torchruns_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()


# --- a real 2-process gloo group, spawned here ---------------------------------------------------

GLOBAL = 6  # rows of the global batch in the contract check
DRAW_SEED = 7
# the diffusion family in `fit`: 256 images, global batches of 64, 2 epochs (8 steps); no dropout,
# whose masks are drawn per process
DDPM = {"epochs": 2, "batch_size": 64, "lr": 2e-3, "widths": [8, 16], "patch": 2,
        "timesteps": 20, "dropout": 0.0, "max_steps": None}
DDPM_SEED = 3


def train_ddpm(x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> tuple[dict, list[dict]]:
    """The diffusion family trained by `fit` in this process (one rank of a group, or alone);
    the model's state and the history."""
    cfg = families.REGISTRY["ddpm"].Config(**DDPM)
    seed_everything(DDPM_SEED)  # as the stages do: the same initial weights on every rank
    model = families.build("ddpm", cfg, CPU)
    history = fit(model, x, y, cfg, name="ddpm", device=CPU, seed=DDPM_SEED,
                  checkpoint=checkpoint, fingerprint="test")
    return model.state_dict(), history


PROGAN = {"epochs": 1, "batch_size": 32, "lr": 1e-3, "width": 4, "max_width": 8,
          "latent_dim": 8, "resolution_steps": 2, "fade_steps": 1, "max_steps": 6}


def train_progan(x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> dict:
    """ProGAN through `fit` across its growth (7, then 14 fading in, 28 fading in): each level
    leaves the other levels' blocks without a gradient, which DDP must be told to allow."""
    cfg = families.REGISTRY["progan"].Config(**PROGAN)
    seed_everything(DDPM_SEED)
    model = families.build("progan", cfg, CPU)
    fit(model, x, y, cfg, name="progan", device=CPU, seed=DDPM_SEED, checkpoint=checkpoint,
        fingerprint="test")
    return model.state_dict()


# The other families whose training differs in what DDP must carry: StyleGAN (mapping network,
# w average buffer, R1's gradient of D w.r.t. its input), latent diffusion (two phases, a frozen
# autoencoder), and the image-to-image families (paired, two generator/discriminator pairs, a
# judge's content loss)
OTHERS = {
    "stylegan": {"epochs": 1, "batch_size": 32, "width": 8, "latent_dim": 8, "w_dim": 16,
                 "mapping_layers": 2, "max_steps": 4},
    "latent_diffusion": {"epochs": 1, "batch_size": 32, "width": 8, "widths": [8, 16],
                         "timesteps": 20, "dropout": 0.0, "ae_steps": 2, "max_steps": 4},
    **{name: {"epochs": 1, "batch_size": 32, "width": 8, "max_steps": 3}
       for name in ("pix2pix", "cyclegan")},
    "srgan": {"epochs": 1, "batch_size": 32, "width": 8, "max_steps": 3, "blocks": 1},
}


def train_other(name: str, x: torch.Tensor, y: torch.Tensor, checkpoint: Path) -> dict:
    """One of OTHERS through `fit` (the project's params with OTHERS' settings)."""
    p = parse_params(with_overrides(base_params(), {f"{name}.{key}": value
                                                    for key, value in OTHERS[name].items()}))
    seed_everything(DDPM_SEED)
    if name in families.REGISTRY:
        cfg = families.config(p, name)
        model = families.build(name, cfg, CPU)
    else:
        from trilemma.classifier import Judge
        from trilemma.data import MNIST_SPEC

        cfg = i2i.config(p, name)
        judge = Judge(width=4, features=8).eval().requires_grad_(False)  # untrained will do
        model = i2i.build(name, cfg, CPU, MNIST_SPEC, judge)
    fit(model, x, y, cfg, name=name, device=CPU, seed=DDPM_SEED, checkpoint=checkpoint,
        fingerprint="test")
    return model.state_dict()


def _rank(rank: int, folder: str) -> None:
    """One of two ranks: the distributed functions inside a gloo group, then `fit` on the
    diffusion family; results to folder/<rank>.pt."""
    import torch.distributed as dist

    out = Path(folder)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank,
                            world_size=2)
    try:
        assert distributed.active() and distributed.world_size() == 2
        assert distributed.rank() == rank and distributed.is_main() == (rank == 0)
        distributed.check_batch(GLOBAL, "vae")
        local = GLOBAL // 2
        try:
            distributed.check_batch(GLOBAL + 1, "vae")
            raise AssertionError("an odd global batch split over 2 processes")
        except ConfigError as err:
            assert "vae.batch_size" in str(err)

        def seeded(draw):
            torch.manual_seed(DRAW_SEED)  # the same seed on every rank, as the stages do
            return draw()

        results = {
            "local": local,
            "share": distributed.share(torch.arange(GLOBAL)),
            "randn": seeded(lambda: distributed.randn(local, 3)),
            "randn_like": seeded(lambda: distributed.randn_like(torch.empty(local, 1, 2, 2))),
            "rand": seeded(lambda: distributed.rand(local, 2)),
            "randint": seeded(lambda: distributed.randint(0, 1000, local)),
            "average": distributed.average({"a": torch.tensor(float(rank)),
                                            "b": torch.tensor(10.0 * (rank + 1))}),
            "gather_rows": distributed.gather_rows(torch.full((rank + 1, 2), rank)),
            "gather_dict": distributed.gather_dict({f"r{rank}": rank}),
            "contiguous": [distributed.contiguous_share(n) for n in (4, 5)],
        }
        data = torch.load(out / "data.pt")
        results["ddpm"] = train_ddpm(data["x"], data["y"], out / "ddpm_checkpoint.pt")
        results["progan"] = train_progan(data["x"], data["y"], out / "progan_checkpoint.pt")
        results["others"] = {name: train_other(name, data["x"], data["y"],
                                               out / f"{name}_checkpoint.pt") for name in OTHERS}
        torch.save(results, out / f"{rank}.pt")
        distributed.stop()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, mnist) -> tuple[Path, list[dict]]:
    """The results of both ranks of a spawned 2-process gloo group, and its folder."""
    folder = tmp_path_factory.mktemp("gloo")
    torch.save({"x": torch.from_numpy(mnist.x_train[:256]),
                "y": torch.from_numpy(mnist.y_train[:256])}, folder / "data.pt")
    context = mp.spawn(_rank, args=(str(folder),), nprocs=2, join=False)
    deadline = time.monotonic() + DEADLINE
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2-process gloo group still ran after {DEADLINE} s")
    return folder, [torch.load(folder / f"{r}.pt", weights_only=False) for r in (0, 1)]


def test_two_ranks_share_the_draws_of_one_process(two_ranks):
    """Interleaving rank 0's and rank 1's rows (0, 2, 4 / 1, 3, 5) gives back the one-process
    draw for the global batch: the same numbers reach the same examples."""
    ranks = two_ranks[1]

    def interleave(key: str) -> torch.Tensor:
        a, b = ranks[0][key], ranks[1][key]
        assert a.shape == b.shape and len(a) == GLOBAL // 2, key
        return torch.stack([a, b], dim=1).flatten(0, 1)  # rows a0, b0, a1, b1, ...

    assert [r["local"] for r in ranks] == [GLOBAL // 2] * 2
    assert torch.equal(interleave("share"), torch.arange(GLOBAL))
    for key, draw in (("randn", lambda: torch.randn(GLOBAL, 3)),
                      ("randn_like", lambda: torch.randn(GLOBAL, 1, 2, 2)),
                      ("rand", lambda: torch.rand(GLOBAL, 2)),
                      ("randint", lambda: torch.randint(0, 1000, (GLOBAL,)))):
        torch.manual_seed(DRAW_SEED)
        assert torch.equal(interleave(key), draw()), key
    for r in ranks:
        assert {k: float(v) for k, v in r["average"].items()} == {"a": 0.5, "b": 15.0}
        assert torch.equal(r["gather_rows"], torch.tensor([[0, 0], [1, 1], [1, 1]]))
        assert r["gather_dict"] == {"r0": 0, "r1": 1}
    for n, first, second in zip((4, 5), ranks[0]["contiguous"], ranks[1]["contiguous"]):
        assert list(range(n))[first] + list(range(n))[second] == list(range(n))


def test_two_ranks_train_the_ddpm_of_one_process(two_ranks, mnist, tmp_path):
    """Compared by what the networks compute, not weight by weight: the U-Net has biases the loss
    cannot see (added just before a GroupNorm of one channel per group, e.g. `up.3.skip` and
    `up.3.block2.3` before `head`), whose gradients are float noise (1e-11); Adam scales that
    noise to steps of the learning rate, so those weights land up to 1e-3 apart between any two
    summation orders, while every output agrees to 1e-5."""
    folder, ranks = two_ranks
    state_one, history_one = train_ddpm(torch.from_numpy(mnist.x_train[:256]),
                                        torch.from_numpy(mnist.y_train[:256]),
                                        tmp_path / "checkpoint.pt")
    (state_0, history_0), (state_1, history_1) = ranks[0]["ddpm"], ranks[1]["ddpm"]
    assert state_one["steps"] == state_0["steps"] == state_1["steps"] == 8
    for rank_state in (state_0, state_1):
        scaled_diffs(state_one, rank_state)  # same structure and settings, same step counts
    # the ranks hold one model: DDP keeps their weights identical, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(flat(state_0).values(), flat(state_1).values())
               if isinstance(a, torch.Tensor))
    assert (folder / "ddpm_checkpoint.pt").exists()  # rank 0 wrote it
    for history in (history_0, history_1):  # every rank has the averaged losses
        assert len(history) == len(history_one) == 2
        for row, row_one in zip(history, history_one):
            assert row["epoch"] == row_one["epoch"]
            assert close(row["loss"], row_one["loss"]), (row, row_one)

    cfg = families.REGISTRY["ddpm"].Config(**DDPM)
    models = []
    for state in (state_one, state_0):
        model = families.build("ddpm", cfg, CPU)
        model.load_state_dict(state)
        models.append(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=gen)  # x_t at random steps
    t = torch.randint(0, DDPM["timesteps"], (64,), generator=gen)
    with torch.no_grad():
        for name in ("net", "ema"):  # the trained U-Net and the average that samples
            out_one, out_two = (getattr(model, name)(x, t) for model in models)
            assert out_two.abs().max() > 0.1  # a trained net, not the zero-initialised head
            diff = (out_one - out_two).abs().max().item() / max(1.0, out_one.abs().max().item())
            print(f"ddpm {name}: max output diff {diff:.3g}")
            assert diff < OUTPUT_TOL, f"ddpm {name}: 2 ranks vs 1 process differ by {diff}"


def test_two_ranks_grow_one_progan(two_ranks):
    """Past two level changes, both ranks hold the same weights and the same step count."""
    (_, ranks) = two_ranks
    state_0, state_1 = ranks[0]["progan"], ranks[1]["progan"]
    assert flat(state_0).keys() == flat(state_1).keys()
    assert all(torch.equal(a, b) for a, b in zip(flat(state_0).values(), flat(state_1).values())
               if isinstance(a, torch.Tensor))
    assert state_0["steps"] == state_1["steps"] == PROGAN["max_steps"]


@pytest.mark.parametrize("name", list(OTHERS))
def test_two_ranks_train_one_model_of_every_other_family(two_ranks, name):
    """DDP keeps the ranks' weights, buffers and optimiser states identical, bit for bit."""
    state_0, state_1 = (ranks["others"][name] for ranks in two_ranks[1])
    flat_0, flat_1 = flat(state_0), flat(state_1)
    assert flat_0.keys() == flat_1.keys()
    tensors = [k for k, v in flat_0.items() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 10
    assert all(torch.equal(flat_0[k], flat_1[k]) for k in tensors), name
    if "steps" in state_0:
        assert state_0["steps"] == state_1["steps"] == OTHERS[name]["max_steps"]

