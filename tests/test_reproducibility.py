"""Reruns with the same params and seed give byte-identical result files on CPU; what varies
between runs (time, device) lives in timing.json files of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_repo
from pipeline.cli import app

FAMILIES = ["vae", "cgan", "ddpm", "cfg_diffusion"]
STAGES = [["train-classifier"], *[[stage, family] for family in FAMILIES
                                  for stage in ("train", "sample", "evaluate")]]


def run_pipeline(root: Path, npz: Path) -> Path:
    make_repo(root, npz)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        for args in STAGES:
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (args, result.output)
    return root


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, mnist_npz) -> tuple[Path, Path]:
    first = run_pipeline(tmp_path_factory.mktemp("first"), mnist_npz)
    second = run_pipeline(tmp_path_factory.mktemp("second"), mnist_npz)
    return first, second


def result_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "reports").rglob("metrics.json"))


def test_every_metrics_json_is_byte_identical_across_two_runs(two_runs):
    first, second = two_runs
    files = result_files(first)
    # the classifier, the floor, and a train and an evaluate file per family
    assert len(files) == 2 + 2 * len(FAMILIES)
    assert files == result_files(second)
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_sweep_tables_agree_across_two_runs_except_for_speed(two_runs):
    import pandas as pd

    first, second = two_runs
    for family in FAMILIES:
        for knob in ("truncation", "steps", "guidance"):
            rel = Path("reports/eval") / family / f"{knob}_sweep.csv"
            a, b = pd.read_csv(first / rel), pd.read_csv(second / rel)
            pd.testing.assert_frame_equal(a.drop(columns="samples_per_second"),
                                          b.drop(columns="samples_per_second"))


def test_saved_models_are_identical_across_two_runs(two_runs):
    first, second = two_runs
    for family in FAMILIES:
        a = torch.load(first / "models" / f"{family}.pt", weights_only=True)["state"]
        b = torch.load(second / "models" / f"{family}.pt", weights_only=True)["state"]
        flat_a, flat_b = _tensors(a), _tensors(b)
        assert flat_a.keys() == flat_b.keys() and flat_a
        assert all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a), family


def _tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _tensors(value, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in _tensors(value, f"{prefix}/{i}").items()}
    return {}


def test_time_and_device_are_in_timing_files_not_in_results(two_runs):
    first, _ = two_runs
    reports = first / "reports"
    for path in (reports).rglob("metrics.json"):
        assert not {"train_seconds", "samples_per_second", "device"} & json.loads(path.read_text()).keys(), path
    assert json.loads((reports / "classifier" / "timing.json").read_text())["device"].startswith("cpu")
    for family in FAMILIES:
        train = json.loads((reports / "train" / family / "timing.json").read_text())
        assert train["train_seconds"] > 0 and train["device"].startswith("cpu")
        speed = json.loads((reports / "eval" / family / "timing.json").read_text())
        assert speed["samples_per_second"] > 0 and speed["sample_seconds"] > 0
        assert speed["device"].startswith("cpu")


def test_deterministic_kernels_are_asked_for_on_a_gpu_only(two_runs):
    """The CPU runs above agree byte for byte without torch's deterministic switch (whose import
    costs each stage 2 s); on a GPU, where kernels differ, seeding turns it on (warn only)."""
    from trilemma.runtime import seed_everything

    assert not torch.are_deterministic_algorithms_enabled()  # the stages ran on the CPU
    try:
        seed_everything(0, torch.device("cuda"))  # only sets flags: no GPU needed
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
