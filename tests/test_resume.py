"""Checkpoint/resume of `trilemma train` as a user meets it: a real process killed with SIGKILL
mid-run and started again must end with the same model, metrics and loss curves as a run that was
never interrupted; a corrupt checkpoint is ignored; checkpoints/ stays outside DVC and git.

Every `trilemma train` here is a subprocess in its own tiny repo, on one CPU thread. The
uninterrupted and corrupt-checkpoint runs start in the background with the first training test, so
they overlap with the kill-and-resume runs: start-up (imports, a fresh mlflow.db) is most of each
run's cost. The diffusion family's extra state (EMA, step counter) is checked in-process through
`fit`, interrupted right after a checkpoint: three more subprocesses would cost about a minute.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pytest
import torch
import yaml

from conftest import make_repo, write_params
from trilemma import families, paths
from trilemma.train import TRACE_POINTS, fit

REPO = Path(__file__).resolve().parents[1]
TRILEMMA = str(Path(sys.executable).parent / "trilemma")
DEADLINE = 300  # seconds: generous, the CPU is shared with other jobs

FAMILY = "vae"
EPOCHS = 3
# About 1 s an epoch on one idle core: the kill lands within ~20 ms of epoch 1's checkpoint, so two
# epochs of margin separate "checkpoint seen" from "model written".
SETTINGS = {"data.train_size": 3000, f"{FAMILY}.epochs": EPOCHS}
CPU = torch.device("cpu")


def env() -> dict[str, str]:
    out = {**os.environ, "TRILEMMA_DEVICE": "cpu",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           # as conftest's one_torch_thread: several tiny runs side by side on 2 busy cores run
           # 10-30x slower with torch's default thread pool (an epoch of 0.5 s took 18 s)
           "OMP_NUM_THREADS": "1"}
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


def new_repo(root: Path, npz: Path) -> Path:
    repo = make_repo(root, npz)
    write_params(repo / "params.yaml", SETTINGS)
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


def assert_same_state(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Every tensor equal bit for bit (weights, optimiser moments, EMA), every other value equal."""
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    assert sum(isinstance(v, torch.Tensor) for v in a.values()) > 4
    differ = [key for key, value in a.items()
              if not (torch.equal(value, b[key]) if isinstance(value, torch.Tensor)
                      else value == b[key])]
    assert not differ, f"{what}: differs in {differ[:5]} ({len(differ)} entries)"


def assert_same_training(a: Path, b: Path) -> None:
    """Same saved model, same final metrics, same loss curves (all but the timing column)."""
    assert_same_state(torch.load(a / paths.model(FAMILY), weights_only=True),
                      torch.load(b / paths.model(FAMILY), weights_only=True), "models/vae.pt")

    reports_a, reports_b = a / paths.train_reports(FAMILY), b / paths.train_reports(FAMILY)
    metrics_a = json.loads((reports_a / "metrics.json").read_text())
    metrics_b = json.loads((reports_b / "metrics.json").read_text())
    final = sorted(k for k in metrics_a if k.startswith("final_"))
    assert final and final == sorted(k for k in metrics_b if k.startswith("final_"))
    assert {k: metrics_a[k] for k in final} == {k: metrics_b[k] for k in final}
    assert metrics_a["epochs"] == metrics_b["epochs"] == EPOCHS

    for name in ("loss.csv", "loss_steps.csv"):
        curve_a = pd.read_csv(reports_a / name).drop(columns="seconds", errors="ignore")
        curve_b = pd.read_csv(reports_b / name).drop(columns="seconds", errors="ignore")
        assert len(curve_a) == EPOCHS * (1 if name == "loss.csv" else TRACE_POINTS), name
        pd.testing.assert_frame_equal(curve_a, curve_b, check_exact=True)


class References:
    """The runs the interrupted ones are compared with, each in its own fresh repo, started in the
    background on first demand: `clean` never interrupted, `corrupt` finds garbage where its
    checkpoint would be."""

    def __init__(self, tmp_path_factory, npz: Path):
        self.factory, self.npz, self.runs = tmp_path_factory, npz, {}

    def start(self, name: str) -> Run:
        if name not in self.runs:
            repo = new_repo(self.factory.mktemp(name), self.npz)
            if name == "corrupt":
                ckpt = repo / paths.checkpoint(FAMILY)
                ckpt.parent.mkdir()
                # the start of a zip (torch's format) cut short, then junk: truncated and corrupt
                ckpt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
            self.runs[name] = Run(repo, FAMILY, name)
        return self.runs[name]


@pytest.fixture(scope="module")
def references(tmp_path_factory, mnist_npz):
    refs = References(tmp_path_factory, mnist_npz)
    try:
        yield refs
    finally:
        for run in refs.runs.values():
            run.stop()


def test_checkpoints_are_no_dvc_output_and_are_git_ignored():
    assert paths.CHECKPOINTS == Path("checkpoints")
    assert paths.checkpoint(FAMILY).parent == paths.CHECKPOINTS
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = []
    for stage in stages.values():
        body = stage.get("do", stage)  # foreach stages keep theirs under `do`
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind) or []:
                outs.extend(entry if isinstance(entry, dict) else [entry])
    assert "models/${item}.pt" in outs  # the parse did find the train stage's outputs
    assert not [out for out in outs if str(out).lstrip("./").startswith("checkpoints")]
    # a checkpoint left by a killed run must neither dirty `git status` nor get committed
    ignored = subprocess.run(["git", "check-ignore", "-q", "checkpoints/x.pt"], cwd=REPO)
    assert ignored.returncode == 0


def kill_at_first_checkpoint(run: Run, ckpt: Path) -> int:
    """SIGKILL `run` as soon as `ckpt` exists; its exit code. atomic_path writes a temporary
    file and renames it: once the name exists it is complete."""
    try:
        deadline = time.monotonic() + DEADLINE
        while not ckpt.exists():
            assert run.proc.poll() is None, f"ended before any checkpoint\n{run.text()}"
            assert time.monotonic() < deadline, f"no checkpoint after {DEADLINE} s\n{run.text()}"
            time.sleep(0.02)
        run.proc.send_signal(signal.SIGKILL)
        return run.proc.wait(timeout=60)
    finally:
        run.stop()


def test_killed_run_resumes_to_the_uninterrupted_result(references, tmp_path, mnist_npz):
    repo = new_repo(tmp_path, mnist_npz)
    ckpt, model = repo / paths.checkpoint(FAMILY), repo / paths.model(FAMILY)

    clean = references.start("clean")  # two runs at a time: one each of the 2 cores
    first = Run(repo, FAMILY, "killed")
    assert kill_at_first_checkpoint(first, ckpt) == -signal.SIGKILL, first.text()
    assert not model.exists(), f"finished before it could be killed\n{first.text()}"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # still there, and whole
    epoch = state["epoch"]
    assert 1 <= epoch < EPOCHS
    assert [row["epoch"] for row in state["history"]] == list(range(1, epoch + 1))

    resumed = Run(repo, FAMILY, "resumed")
    references.start("corrupt")  # for the next test but one, beside this run
    out = resumed.wait()
    assert f"{FAMILY}: resuming after epoch {epoch} from" in out, out
    assert f"{FAMILY} epoch {epoch}/" not in out  # epochs already done are not trained again
    assert f"{FAMILY} epoch {EPOCHS}/{EPOCHS}" in out
    assert not ckpt.exists()  # deleted once the model is written

    assert "resuming" not in clean.wait()
    assert_same_training(repo, clean.repo)


class Interrupted(Exception):
    pass


def without_seconds(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_diffusion_fit_interrupted_after_a_checkpoint_resumes_exactly(mnist, tmp_path):
    """ddpm keeps an EMA of the U-Net and a step counter besides Adam: all must come back. The
    stage's `on_epoch` runs right after the checkpoint is written; raising there is a kill."""
    x, y = torch.from_numpy(mnist.x_train[:128]), torch.from_numpy(mnist.y_train[:128])
    cfg = families.REGISTRY["ddpm"].Config(epochs=3, batch_size=32, lr=2e-3, widths=[8, 16],
                                           patch=2, timesteps=20, dropout=0.1, max_steps=None)

    def run(seed: int, checkpoint: Path, on_epoch=None):
        torch.manual_seed(seed)
        model, trace = families.build("ddpm", cfg, CPU), []
        history = fit(model, x, y, cfg, name="ddpm", device=CPU, seed=0, checkpoint=checkpoint,
                      fingerprint="fp", on_epoch=on_epoch, trace=trace)
        return model, history, trace

    straight, history, trace = run(0, tmp_path / "straight.pt")

    def stop(row):
        raise Interrupted

    with pytest.raises(Interrupted):
        run(0, tmp_path / "split.pt", on_epoch=stop)
    saved = torch.load(tmp_path / "split.pt", weights_only=False)
    assert saved["epoch"] == 1 and saved["trainee"]["steps"] == 4
    # another initialisation and another global RNG state: only the checkpoint may count
    resumed, resumed_history, resumed_trace = run(5, tmp_path / "split.pt")

    assert straight.steps == resumed.steps == 12
    assert_same_state(resumed.state_dict(), straight.state_dict(), "ddpm state")
    assert without_seconds(resumed_history) == without_seconds(history)
    assert resumed_trace == trace


def assert_ignored_and_started_over(name: str, cfg, mnist, tmp_path, capsys,
                                    damage: Callable[[dict], None]) -> str:
    """Train `name` in-process on 64 digits for cfg's epochs; interrupt a second run right after
    its first epoch's checkpoint, `damage` the checkpoint's contents, rerun: the rerun must say
    it ignores the checkpoint and train exactly what the first run trained. Returns its output."""
    x, y = torch.from_numpy(mnist.x_train[:64]), torch.from_numpy(mnist.y_train[:64])

    def run(checkpoint: Path, on_epoch=None):
        torch.manual_seed(0)
        model = families.build(name, cfg, CPU)
        history = fit(model, x, y, cfg, name=name, device=CPU, seed=0, checkpoint=checkpoint,
                      fingerprint="fp", on_epoch=on_epoch)
        return model, history

    straight, history = run(tmp_path / "straight.pt")

    def stop(row):
        raise Interrupted

    ckpt = tmp_path / "damaged.pt"
    with pytest.raises(Interrupted):
        run(ckpt, on_epoch=stop)
    saved = torch.load(ckpt, weights_only=True)
    damage(saved)
    torch.save(saved, ckpt)
    capsys.readouterr()
    again, again_history = run(ckpt)
    out = capsys.readouterr().out
    assert f"ignoring checkpoint {ckpt}: " in out and "resuming" not in out, out
    assert_same_state(again.state_dict(), straight.state_dict(), f"{name} state")
    assert without_seconds(again_history) == without_seconds(history)
    return out


def test_a_checkpoint_whose_weights_do_not_fit_is_ignored_and_training_starts_over(
        mnist, tmp_path, capsys):
    """Same settings, other network code (here: a weight of another shape): the checkpoint is
    passed over with one line, and the run is the one a fresh start gives, although the failed
    load had already copied some weights in."""
    cfg = families.REGISTRY["ddpm"].Config(epochs=2, batch_size=32, lr=2e-3, widths=[8, 16],
                                           patch=2, timesteps=20, dropout=0.0, max_steps=None)

    def other_shape(saved: dict) -> None:
        weights = saved["trainee"]["unet"]
        first, last = list(weights)[0], list(weights)[-1]
        weights[first] = weights[first] + 1  # copied in before the load fails on the last one
        weights[last] = torch.zeros(3)

    out = assert_ignored_and_started_over("ddpm", cfg, mnist, tmp_path, capsys, other_shape)
    assert "it does not fit this model (" in out and "size mismatch" in out


def _set(*path, value):
    """A damage: the checkpoint with the value at `path` (keys, then list positions) replaced;
    a callable value gets the old one."""
    def damage(state: dict) -> None:
        node = state
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return damage


def _poison(tensor: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[0] = value
    return out


@pytest.mark.parametrize("damage", [
    _set("trainee", "steps", value="x"), _set("epoch", value="x"), _set("epoch", value=10**6), _set("epoch", value=-3),
    _set("step", value=10**6), _set("history", value=[1, 2]), _set("rng", "torch", value=torch.zeros(3, dtype=torch.uint8)),
    _set("rng", value={}), _set("rng", "shuffle", value=lambda t: t.float()), _set("trace", value="x"),
    _set("partial", value=[1]), _set("probe", value=5),
    _set("trainee", "generator", "0.weight", value=_poison), _set("trainee", "opt_g", "param_groups", 0, "lr", value=float("nan")),
    _set("trainee", "generator", "0.weight", value=lambda t: t.long()),
    _set("trainee", "generator_ema", "0.weight", value=_poison),
    _set("trainee", "opt_g", "state", 0, "exp_avg_sq",
         value=lambda t: _poison(t, float("inf"))),
], ids=["counter-text", "epoch-text", "epoch-too-far", "epoch-negative", "step-too-far",
        "history-not-rows", "rng-short", "rng-empty", "rng-float", "trace-text", "partial-list",
        "probe-number", "nan-weight", "nan-lr", "int-weight", "nan-ema", "inf-adam-moment"])
def test_a_damaged_checkpoint_is_ignored_with_one_line_and_training_starts_over(
        mnist, tmp_path, capsys, damage):
    """A checkpoint is a cache: whatever a damaged one holds, the rerun says it ignores it and
    trains what a fresh start trains (no traceback, no NaN resumed into a divergence, no model
    trained past or short of its budget)."""
    cfg = families.REGISTRY["mlp_gan"].Config(epochs=2, batch_size=32, lr=1e-3, width=8,
                                              latent_dim=4, ema_decay=0.9)
    out = assert_ignored_and_started_over("mlp_gan", cfg, mnist, tmp_path, capsys, damage)
    assert "damaged (" in out


def test_a_checkpoint_whose_optimizer_state_is_in_another_order_is_ignored(mnist, tmp_path,
                                                                         capsys):
    """Weights loaded by name, Adam's state by position: networks that declare the same weights
    in another order would load a state that corrupts the next step. It is passed over."""
    from trilemma.train import load_checkpoint

    x, y = torch.from_numpy(mnist.x_train[:64]), torch.from_numpy(mnist.y_train[:64])
    cfg = families.REGISTRY["vae"].Config(epochs=1, batch_size=32, lr=1e-3, width=8, latent_dim=2)
    torch.manual_seed(0)
    model = families.build("vae", cfg, CPU)
    model.train_step(x[:32].float() / 255, y[:32])
    state = model.state_dict()
    moments = state["opt"]["state"]
    moments[0], moments[1] = moments[1], moments[0]  # two parameters of other shapes swapped
    fresh = families.build("vae", cfg, CPU)
    before = copy.deepcopy(fresh.state_dict())
    ckpt = tmp_path / "vae.pt"
    rng = {"torch": torch.get_rng_state(), "shuffle": torch.Generator().get_state()}
    torch.save({"trainee": state, "rng": rng, "epoch": 0, "history": [], "fingerprint": "f"}, ckpt)
    assert load_checkpoint(ckpt, "f", fresh, cfg, full=2) is None
    assert "it does not fit this model (optimizer state" in capsys.readouterr().out
    assert_same_state(fresh.state_dict(), before, "vae state")


def test_corrupt_checkpoint_is_ignored_and_training_starts_over(references):
    corrupt, clean = references.start("corrupt"), references.start("clean")
    out = corrupt.wait()
    assert f"ignoring unreadable checkpoint {paths.checkpoint(FAMILY)}" in out, out
    assert "resuming" not in out
    assert f"{FAMILY} epoch 1/{EPOCHS}" in out
    assert not (corrupt.repo / paths.checkpoint(FAMILY)).exists()
    clean.wait()
    assert_same_training(corrupt.repo, clean.repo)


def test_single_epoch_ddpm_killed_mid_epoch_resumes_bit_identically(tmp_path, mnist_npz):
    """Quick diffusion runs are one (truncated) epoch: the checkpoint written every
    `train.checkpoint_seconds` within it lets a killed run resume at its step, and end with the
    weights of a run never interrupted, bit for bit."""
    settings = {"data.train_size": 1280, "ddpm.epochs": 1, "train.checkpoint_seconds": 0.05}
    repos = {}
    for name in ("killed", "clean"):
        repos[name] = make_repo(tmp_path / name, mnist_npz)
        write_params(repos[name] / "params.yaml", settings)
    ckpt = repos["killed"] / paths.checkpoint("ddpm")
    clean, first = Run(repos["clean"], "ddpm", "clean"), Run(repos["killed"], "ddpm", "killed")
    kill_at_first_checkpoint(first, ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["step"] < 20, (state["epoch"], state["step"])
    out = Run(repos["killed"], "ddpm", "resumed").wait()
    assert f"ddpm: resuming after epoch 0, step {state['step']} of epoch 1 from" in out, out
    clean.wait()
    assert_same_state(torch.load(repos["killed"] / paths.model("ddpm"), weights_only=True),
                      torch.load(repos["clean"] / paths.model("ddpm"), weights_only=True),
                      "models/ddpm.pt")
