"""Learning curves: the probes `fit` runs between steps, and the curve.csv the train stages write."""

from __future__ import annotations

import shutil
import time

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from pipeline.cli import app
from trilemma import probes
from trilemma.config import TrainConfig
from trilemma.train import fit, planned_steps

CPU = torch.device("cpu")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("total, count, expected", [
    (100, 4, [25, 50, 75, 100]), (10, 3, [3, 7, 10]), (2, 5, [1, 2]), (50, 0, []), (0, 3, [])])
def test_probe_steps_are_spread_evenly_and_end_with_training(total, count, expected):
    assert probes.probe_steps(total, count) == expected


class Line:
    """A one-layer trainee whose train_step records the mode its net was in."""

    def __init__(self):
        self.nets = {"net": nn.Linear(4, 1)}
        self.opt = torch.optim.SGD(self.nets["net"].parameters(), lr=0.1)
        self.modes: list[bool] = []

    def train_step(self, x, y):
        self.modes.append(self.nets["net"].training)
        loss = self.nets["net"](x.flatten(1)[:, :4]).square().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def state_dict(self):
        return {"net": self.nets["net"].state_dict()}

    def load_state_dict(self, state):
        self.nets["net"].load_state_dict(state["net"])


def test_fit_runs_the_probe_off_the_clock_and_leaves_training_as_it_was(tmp_path, monkeypatch):
    x, y = torch.randint(0, 255, (64, 1, 2, 2), dtype=torch.uint8), torch.zeros(64, dtype=torch.long)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1)  # 8 steps an epoch, 24 in all
    assert planned_steps(cfg, len(x)) == 24
    clock = [0.0]  # a clock that only the probe advances: training itself takes no time on it
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def trained(with_probe: bool, name: str) -> tuple[Line, probes.Probe | None, list[dict]]:
        torch.manual_seed(0)
        model = Line()

        def score():
            model.nets["net"].eval()  # as a family's sampling does
            torch.rand(3)  # a draw from the global stream: training's must not shift
            clock[0] += 0.3
            return {"fid_classifier": 1.0}

        probe = probes.Probe(score, probes.probe_steps(24, 4), 8, probes.GENERATOR_SCORES) \
            if with_probe else None
        history = fit(model, x, y, cfg, name="line", device=CPU, seed=0,
                      checkpoint=tmp_path / f"{name}.pt", fingerprint="a", probe=probe)
        return model, probe, history

    model, probe, history = trained(True, "probed")
    assert [r["step"] for r in probe.rows] == [6, 12, 18, 24]
    assert [r["images_seen"] for r in probe.rows] == [48, 96, 144, 192]
    assert all(model.modes)  # every step after a probe trained in training mode again
    assert abs(probe.seconds - 1.2) < 1e-9
    assert sum(r["seconds"] for r in history) == 0  # the 1.2 s of probing is not training time
    assert [r["train_seconds"] for r in probe.rows] == [0, 0, 0, 0]
    plain, _, _ = trained(False, "plain")
    assert torch.equal(plain.nets["net"].weight, model.nets["net"].weight)


def test_a_resumed_fit_keeps_the_probe_rows_of_the_checkpoint(tmp_path):
    x, y = torch.randint(0, 255, (64, 1, 2, 2), dtype=torch.uint8), torch.zeros(64, dtype=torch.long)
    at = probes.probe_steps(16, 4)  # 4, 8 | 12, 16

    def run(epochs: int) -> probes.Probe:
        probe = probes.Probe(lambda: {"fid_classifier": 2.0}, at, 8, probes.GENERATOR_SCORES)
        fit(Line(), x, y, TrainConfig(epochs=epochs, batch_size=8, lr=0.1), name="line",
            device=CPU, seed=0, checkpoint=tmp_path / "ckpt.pt", fingerprint="a", probe=probe)
        return probe

    first = run(1)
    assert [r["step"] for r in first.rows] == [4, 8]
    resumed = run(2)  # the checkpoint of epoch 1 is taken up: only epoch 2 is trained
    assert [r["step"] for r in resumed.rows] == [4, 8, 12, 16]
    assert resumed.rows[:2] == first.rows


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory, mnist_npz):
    """models/ with a tiny judge and its test embedding, trained once for this module."""
    from conftest import make_repo

    root = make_repo(tmp_path_factory.mktemp("judge"), mnist_npz)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        result = invoke("train-classifier")
    assert result.exit_code == 0, result.output
    return root / "models"


@pytest.fixture
def judged_repo(tiny_repo, judge_files):
    """The tiny repo with the judge trained: what every probe scores with."""
    shutil.copytree(judge_files, tiny_repo / "models")
    return tiny_repo


def model_state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]


def same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_train_writes_the_judges_curve_identically_on_a_rerun_and_trains_the_same(judged_repo,
                                                                                 set_params):
    set_params({"train.probes": 0})
    assert invoke("train", "cgan").exit_code == 0
    unprobed = model_state("models/cgan.pt")
    empty = pd.read_csv("reports/train/cgan/curve.csv")
    assert len(empty) == 0 and list(empty.columns) == probes.POSITION + probes.GENERATOR_SCORES

    set_params({"train.probes": 3, "train.probe_n": 64})
    curves = []
    for _ in range(2):
        result = invoke("train", "cgan")
        assert result.exit_code == 0, result.output
        curves.append(pd.read_csv("reports/train/cgan/curve.csv"))
    curve = curves[0]
    steps = planned_steps(TrainConfig(epochs=1, batch_size=64, lr=1.0), 256)
    assert list(curve["step"]) == probes.probe_steps(steps, 3) == [1, 3, 4]
    assert list(curve["images_seen"]) == [64, 192, 256]
    assert curve[probes.GENERATOR_SCORES].notna().all().all()  # cgan is conditional
    assert (curve["fid_classifier"] > 0).all() and curve["label_accuracy"].between(0, 1).all()
    scores = probes.POSITION[:2] + probes.GENERATOR_SCORES  # train_seconds varies by design
    pd.testing.assert_frame_equal(curve[scores], curves[1][scores])
    assert same_state(model_state("models/cgan.pt"), unprobed)  # probing did not touch training
    timing = pd.read_json("reports/train/cgan/timing.json", typ="series")
    assert timing["probes"] == 3 and timing["probe_seconds"] > 0


def test_diffusion_and_image_to_image_curves(judged_repo, set_params):
    set_params({"train.probes": 2, "train.probe_n": 32})
    for stage, family in (("train", "ddpm"), ("train-i2i", "pix2pix")):
        result = invoke(stage, family)
        assert result.exit_code == 0, result.output
    ddpm = pd.read_csv("reports/train/ddpm/curve.csv")
    assert len(ddpm) == 2 and ddpm["fid_classifier"].notna().all()
    assert ddpm["label_accuracy"].isna().all()  # unconditional: no labels asked for
    pix2pix = pd.read_csv("reports/train/pix2pix/curve.csv")
    assert list(pix2pix.columns) == probes.POSITION + probes.TRANSLATOR_SCORES
    assert list(pix2pix["step"]) == [2, 3]  # max_steps 3
    assert (pix2pix["psnr"] > 0).all() and pix2pix["judge_accuracy"].between(0, 1).all()


def test_probes_without_the_judge_stop_the_stage_before_training(tiny_repo, set_params):
    set_params({"train.probes": 2})
    result = invoke("train", "vae")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "models/classifier.pt" in errors[0], result.output
    assert not (tiny_repo / "models" / "vae.pt").exists()


def test_dvc_plots_draw_the_curve_of_every_family_in_params():
    import yaml

    from conftest import ROOT, base_params

    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    files = {}
    for plot in plots:
        if isinstance(plot, dict):
            (spec,) = plot.values()
            files.update(dict.fromkeys(spec["y"], next(iter(spec["y"].values()))))
    params = base_params()
    expected = {f"reports/train/{f}/curve.csv": "fid_classifier" for f in params["families"]}
    expected |= {f"reports/train/{f}/curve.csv": "psnr" for f in params["i2i_families"]}
    assert {k: v for k, v in files.items() if k.endswith("curve.csv")} == expected
