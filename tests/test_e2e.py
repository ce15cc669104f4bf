"""The whole pipeline under `dvc repro`, on a copy of the repository with tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_params

REPO = Path(__file__).resolve().parents[1]
COPIED = ["dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", ".gitignore", ".dvc/config",
          "src", "pipeline"]
def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # the first `dvc repro` runs all 48 stages: about 9.5 min on an idle 2-core machine
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def copy_repo(root: Path) -> Path:
    """The files `dvc repro` needs, copied to `root`."""
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / name)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("repo"))
    write_params(root / "params.yaml")  # the project's params with conftest's tiny settings
    run(["git", "init", "-q"], root)
    return root


@pytest.fixture(scope="module")
def first_repro(repo: Path) -> str:
    return run(["dvc", "repro"], repo)


def test_dvc_repro_runs_every_stage(first_repro: str):
    families = ["vae", "mlp_gan", "dcgan", "wgan_gp", "cgan", "stylegan", "progan", "ddpm",
                "cfg_diffusion", "latent_diffusion"]
    i2i = ["pix2pix", "srgan", "cyclegan"]
    control = ["vae", "mlp_gan", "dcgan", "wgan_gp", "stylegan", "progan", "ddpm",
               "cfg_diffusion", "latent_diffusion"]
    for stage in ("download", "train-classifier", *[f"{stage}@{family}" for family in families
                  for stage in ("train", "sample", "evaluate")],
                  *[f"{stage}@{family}" for family in i2i for stage in ("train-i2i", "evaluate-i2i")],
                  "train-referee", *[f"control@{family}" for family in control], "report"):
        assert f"Running stage '{stage}'" in first_repro


def test_second_dvc_repro_is_a_no_op(repo: Path, first_repro: str):
    out = run(["dvc", "repro"], repo)
    assert "Running stage" not in out
    assert "up to date" in run(["dvc", "status"], repo)


def test_report_files_have_every_family_and_the_floor(repo: Path, first_repro: str):
    summary = pd.read_csv(repo / "reports/summary.csv")
    assert list(summary["family"]) == ["real data (floor)", "vae", "mlp_gan", "dcgan", "wgan_gp",
                                       "cgan", "stylegan", "progan", "ddpm", "cfg_diffusion",
                                       "latent_diffusion"]
    assert (summary["fid_classifier"] > 0).all()
    readme = (repo / "reports/README.md").read_text()
    assert "| vae |" in readme and "samples/vae/grid.png" in readme
    for section in ("## Latent against pixel-space diffusion", "## Controllable generation",
                    "## Image-to-image", "train/stylegan/style_mixing.png"):
        assert section in readme, section
    for name in ("classifier/metrics.json", "classifier/per_class.csv", "classifier/confusion.png",
                 "eval/real/metrics.json", "eval/vae/metrics.json", "eval/vae/per_class.csv",
                 "eval/cgan/truncation_sweep.csv", "eval/ddpm/steps_sweep.csv",
                 "eval/cfg_diffusion/guidance_sweep.csv", "train/ddpm/reconstruction.png",
                 "train/vae/loss.csv", "train/vae/grid.png", "figures/speed_corner.png",
                 "train/vae/latent.png", "samples/vae/grid.png", "samples/dcgan/interpolation.png",
                 "figures/loss_curves.png", "figures/class_histograms.png",
                 "figures/sweep_truncation.png", "figures/trilemma.png",
                 "train/stylegan/style_mixing.png", "train/progan/growth.png",
                 "train/latent_diffusion/reconstruction.png", "eval/srgan/metrics.json",
                 "eval/pix2pix/examples.png", "control/dcgan/before_after.png",
                 "control/ddpm/metrics.json", "control/referee/metrics.json"):
        assert (repo / "reports" / name).stat().st_size > 0, name
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
    for name in ("reports/summary.csv", "reports/eval/vae/truncation_sweep.csv",
                 "reports/eval/ddpm/steps_sweep.csv", "reports/figures/trilemma.png"):
        assert name in out, name


def test_typer_command_by_hand_matches_the_dvc_stage(repo: Path, first_repro: str):
    path = repo / "reports/eval/vae/metrics.json"
    before = path.read_bytes()
    run(["trilemma", "evaluate", "vae"], repo)
    assert path.read_bytes() == before
    assert "up to date" in run(["dvc", "status"], repo)
