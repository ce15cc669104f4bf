"""The pipeline under `trilemma repro --jobs 2` (DVC's stages, two at a time), on a copy of the
repository with tiny params; then a plain `dvc repro` finds nothing to do.

Every stage starts a process (about 10 s of imports and MLflow start-up for a tiny stage), so the
run here takes a VAE, a guided diffusion family, an image-to-image family and control through
every stage template: 14 stages instead of 49 (each template is the same for every family).
What the other families' stages write is checked in-process by test_cli's chain, and
`test_project_params_wire_every_stage` checks that the project's own params give DVC all 49 stages
with every source file they depend on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import base_params, write_params

REPO = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore", ".dvc/config",
          "reports/seeds/README.md",  # the report stage depends on the folder
          "src", "pipeline"]
# a VAE (latent steering, truncation) and pixel-space diffusion with classifier-free guidance
# (step and guidance sweeps, label accuracy, guidance in control); every family's stage outputs
# and report sections, latent diffusion's included, are checked in test_cli's in-process chain
FAMILIES = ["vae", "cfg_diffusion"]
I2I = ["srgan"]
CONTROL = ["vae", "cfg_diffusion"]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # the first run makes 14 stages: about 2 min on an idle 2-core machine
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def copy_repo(root: Path) -> Path:
    """The files `dvc repro` needs, copied to `root`, in a git repository."""
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / name)
    run(["git", "init", "-q"], root)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    write_params(root / "params.yaml", {"families": FAMILIES, "i2i_families": I2I,
                                        "control.families": CONTROL})
    return root


@pytest.fixture(scope="module")
def first_repro(repo: Path) -> str:
    return run(["trilemma", "repro", "--jobs", "2"], repo)


def expected_stages(families: list[str], i2i: list[str], control: list[str]) -> list[str]:
    return ["download", "train-classifier",
            *[f"{stage}@{family}" for stage in ("train", "sample", "evaluate") for family in families],
            *[f"{stage}@{family}" for stage in ("train-i2i", "evaluate-i2i") for family in i2i],
            *(["train-referee"] if control else []), *[f"control@{family}" for family in control],
            "report"]


def test_project_params_wire_every_stage(tmp_path):
    """With the project's params.yaml, DVC expands all 49 stages and finds every source file they
    depend on (a family's module missing would show as a deleted dependency)."""
    root = copy_repo(tmp_path)
    params = base_params()
    stages = expected_stages(params["families"], params["i2i_families"],
                             params["control"]["families"])
    assert len(stages) == 49
    listed = [line.split()[0] for line in run(["dvc", "stage", "list"], root).splitlines()]
    assert sorted(listed) == sorted(stages)
    status = json.loads(run(["dvc", "status", "--json"], root))
    for stage in stages:
        deps = next(item["changed deps"] for item in status[stage] if "changed deps" in item)
        missing = [path for path, state in deps.items()
                   if state == "deleted" and path.startswith(("src/", "pipeline/"))]
        assert not missing, f"{stage}: {missing}"


def test_trilemma_repro_runs_every_stage(first_repro: str):
    stages = expected_stages(FAMILIES, I2I, CONTROL)
    for stage in stages:
        assert f"] {stage}: ran in " in first_repro, stage
    assert f"{len(stages)} ran, 0 unchanged" in first_repro


def test_second_dvc_repro_is_a_no_op(repo: Path, first_repro: str):
    out = run(["dvc", "repro"], repo)
    assert "Running stage" not in out
    assert "up to date" in run(["dvc", "status"], repo)


def test_report_files_have_every_family_and_the_floor(repo: Path, first_repro: str):
    summary = pd.read_csv(repo / "reports/quick/summary.csv")
    assert list(summary["family"]) == ["real data (floor)", *FAMILIES]
    assert (summary["fid_classifier"] > 0).all()
    readme = (repo / "reports/quick/README.md").read_text()
    assert "| vae |" in readme and "samples/vae/grid.png" in readme
    for section in ("## Controllable generation", "## Image-to-image"):
        assert section in readme, section
    for name in ("classifier/metrics.json", "classifier/per_class.csv", "classifier/confusion.png",
                 "eval/real/metrics.json", "eval/vae/metrics.json", "eval/vae/per_class.csv",
                 "eval/vae/truncation_sweep.csv", "eval/cfg_diffusion/steps_sweep.csv",
                 "eval/cfg_diffusion/guidance_sweep.csv", "train/cfg_diffusion/reconstruction.png",
                 "train/vae/loss.csv", "train/vae/grid.png", "quick/figures/speed_corner.png",
                 "train/vae/latent.png", "samples/vae/grid.png", "samples/vae/interpolation.png",
                 "quick/figures/loss_curves.png", "quick/figures/class_histograms.png",
                 "quick/figures/sweep_truncation.png", "quick/figures/trilemma.png",
                 "quick/images/samples/vae/grid.png", "quick/images/control/vae/before_after.png",
                 "eval/srgan/metrics.json",
                 "eval/srgan/examples.png", "control/vae/before_after.png",
                 "control/cfg_diffusion/metrics.json", "control/referee/metrics.json"):
        assert (repo / "reports" / name).stat().st_size > 0, name
    for sweep in ("vae/truncation_sweep.csv", "cfg_diffusion/steps_sweep.csv",
                  "cfg_diffusion/guidance_sweep.csv"):  # rows, not only a header
        assert len(pd.read_csv(repo / "reports/eval" / sweep)) > 0, sweep
    metrics = json.loads((repo / "reports/eval/vae/metrics.json").read_text())
    assert {"fid_classifier", "is_classifier", "class_histogram", "profile"} <= metrics.keys()
    timing = json.loads((repo / "reports/eval/vae/timing.json").read_text())
    assert {"samples_per_second", "sample_seconds", "device"} == timing.keys()
    assert (repo / "dvc.lock").exists() and (repo / "mlflow.db").exists()


def test_dvc_metrics_show_lists_the_families(repo: Path, first_repro: str):
    out = run(["dvc", "metrics", "show", "--json"], repo)
    assert "reports/eval/vae/metrics.json" in out and "reports/classifier/metrics.json" in out
    shown = json.loads(out)
    vae = next(v for k, v in shown.items())["data"]["reports/eval/vae/metrics.json"]["data"]
    for key in ("fid_classifier", "fid_classifier_std", "kid_classifier", "precision", "recall",
                "class_kl_uniform"):  # the columns `dvc exp show` lines experiments up on
        assert isinstance(vae[key], float), key


def test_dvc_plots_declare_the_summary_and_the_sweeps(repo: Path, first_repro: str):
    out = run(["dvc", "plots", "show", "--json"], repo)
    for name in ("reports/quick/summary.csv", "reports/eval/vae/truncation_sweep.csv",
                 "reports/eval/cfg_diffusion/steps_sweep.csv",
                 "reports/quick/figures/trilemma.png"):
        assert name in out, name


def test_typer_command_by_hand_matches_the_dvc_stage(repo: Path, first_repro: str, monkeypatch):
    path = repo / "reports/eval/vae/metrics.json"
    before = path.read_bytes()
    # with the stage's thread count: float sums on a CPU depend on it
    log = [json.loads(line) for line in (repo / "logs/stages.jsonl").read_text().splitlines()]
    device = [e["device"] for e in log if (e["stage"], e["family"]) == ("evaluate", "vae")][-1]
    if device.startswith("cpu ("):  # "cpu (1 threads)"; a GPU's name otherwise
        monkeypatch.setenv("OMP_NUM_THREADS", device.split("(")[1].split()[0])
    run(["trilemma", "evaluate", "vae"], repo)
    assert path.read_bytes() == before
    assert "up to date" in run(["dvc", "status"], repo)
