"""`data.source: image_folder`: a folder of generated RGB images, with and without class
subfolders, through the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import write_params
from pipeline.cli import app
from test_e2e import copy_repo, run
from trilemma import data

SIZE = 16
SHAPES = ("square", "disc", "bar")  # one class each: colour and shape tell them apart


def shape_image(kind: str, rng: np.random.Generator) -> Image.Image:
    """A non-square RGB image (so loading must crop and resize) of one coloured shape on a dark
    background, at a random place and size."""
    h, w = 24, 30
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.integers(8, 16), rng.integers(10, 20), rng.integers(4, 7)
    if kind == "square":
        mask, colour = (abs(yy - cy) <= r) & (abs(xx - cx) <= r), (230, 40, 40)
    elif kind == "disc":
        mask, colour = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, (40, 220, 60)
    else:
        mask, colour = abs(yy - cy) <= 2, (50, 80, 240)
    pixels = rng.integers(0, 30, (h, w, 3))
    pixels[mask] = colour
    return Image.fromarray(pixels.astype(np.uint8))


def make_folder(root: Path, labelled: bool, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for kind in SHAPES:
        target = root / kind if labelled else root
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(kind, rng).save(target / f"{kind}_{i:03d}.png")
    return root


def folder_params(folder: Path, families: list[str]) -> dict:
    return {"data.source": "image_folder", "data.folder": str(folder), "data.image_size": SIZE,
            "data.channels": 3, "data.test_fraction": 0.25, "families": families,
            "data.train_size": None, "data.test_size": None, "sample.n": 48,
            "sample.sweep_n": 24, "sample.grid": 9, "classifier.batch_size": 30,
            "classifier.epochs": 15,
            **{f"{f}.batch_size": 30 for f in families}}


def test_load_folder_reads_classes_crops_resizes_and_splits_per_class(tmp_path):
    folder = make_folder(tmp_path / "shapes", labelled=True)
    images = data.load_folder(folder, SIZE, 3, 0.25, seed=0, log=lambda _: None)
    assert images.spec == data.ImageSpec(3, SIZE, ("bar", "disc", "square"))  # sorted names
    assert images.x_train.shape == (90, 3, SIZE, SIZE) and images.x_test.shape == (30, 3, SIZE, SIZE)
    assert np.bincount(images.y_test).tolist() == [10, 10, 10]  # a quarter of every class
    # the bars are blue, the squares red: colour survives the resize in the right channel
    bars = images.x_train[images.y_train == 0].astype(float)
    assert bars[:, 2].max(axis=(1, 2)).min() > 150 and bars[:, 0].max() < 120
    again = data.load_folder(folder, SIZE, 3, 0.25, seed=0, log=lambda _: None)
    assert np.array_equal(again.x_train, images.x_train)  # deterministic for a seed
    other = data.load_folder(folder, SIZE, 3, 0.25, seed=1, log=lambda _: None)
    assert not np.array_equal(other.y_test, images.y_test)


def test_load_folder_without_subfolders_is_unlabelled_and_grey_on_request(tmp_path):
    folder = make_folder(tmp_path / "flat", labelled=False, per_class=10)
    images = data.load_folder(folder, 8, 1, 0.1, seed=0, log=lambda _: None)
    assert not images.spec.labelled and images.x_train.shape[1:] == (1, 8, 8)
    assert (images.y_train == -1).all() and len(images.x_test) == 3


@pytest.mark.parametrize("setup, message", [
    (lambda root: root, "image folder not found"),
    (lambda root: (root.mkdir(), root)[1], "no images"),
    (lambda root: (make_folder(root, True, 2), (root / "stray.png").write_bytes(b"x"), root)[2],
     "both at the top and in class subfolders"),
    (lambda root: (make_folder(root, False, 2), (root / "broken.png").write_bytes(b"x"), root)[2],
     "broken.png: not a readable image"),
], ids=["missing", "empty", "mixed", "unreadable"])
def test_bad_folders_are_one_line_data_errors(tmp_path, setup, message):
    folder = setup(tmp_path / "folder")
    with pytest.raises(data.DataError, match=message):
        data.load_folder(folder, SIZE, 3, 0.25, seed=0, log=lambda _: None)


def test_pipeline_runs_on_a_labelled_image_folder(tmp_path, monkeypatch):
    """The whole pipeline on 3 classes of 16x16 RGB shapes: `dvc repro download` reads the folder
    (DVC takes the image-folder params), then every stage command as `dvc repro` would run it
    (test_e2e checks the two agree): the judge learns the classes, every family that can take the
    images trains, samples and is scored; the report lists them."""
    root = copy_repo(tmp_path)
    folder = make_folder(root / "shapes", labelled=True)
    families = ["vae", "dcgan", "ddpm", "cgan"]
    write_params(root / "params.yaml", folder_params(folder, families))
    run(["git", "init", "-q"], root)
    run(["dvc", "repro", "download"], root)
    assert np.load(root / "data/images.npz")["x_train"].shape == (90, 3, SIZE, SIZE)
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRILEMMA_DEVICE", "cpu")
    for args in (["train-classifier"], *[[stage, family] for family in families
                                         for stage in ("train", "sample", "evaluate")], ["report"]):
        result = invoke(*args)
        assert result.exit_code == 0, f"{args}: {result.output}"
    judge = json.loads((root / "reports/classifier/metrics.json").read_text())
    assert judge["classes"] == ["bar", "disc", "square"] and judge["test_accuracy"] > 0.5
    for family in families:
        with np.load(root / f"samples/{family}.npz") as npz:
            assert npz["images"].shape == (48, 3, SIZE, SIZE)
        scores = json.loads((root / f"reports/eval/{family}/metrics.json").read_text())
        assert np.isfinite(scores["fid_classifier"]) and len(scores["class_histogram"]) == 3
        grid = Image.open(root / f"reports/samples/{family}/grid.png")
        assert grid.mode == "RGB"
    cgan = json.loads((root / "reports/eval/cgan/metrics.json").read_text())
    assert 0 <= cgan["label_accuracy"] <= 1
    readme = (root / "reports/quick/README.md").read_text()
    assert all(f"| {family} " in readme for family in families)
    assert "image folder" in readme and "square" in readme  # the data and its class names


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_unlabelled_folder_trains_samples_and_says_why_judge_scores_are_missing(
        tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "flat", labelled=False, per_class=16)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRILEMMA_DEVICE", "cpu")
    write_params(tmp_path / "params.yaml", folder_params(folder, ["dcgan", "cgan"]))
    for args in (["download"], ["train-classifier"], ["train", "dcgan"], ["sample", "dcgan"],
                 ["evaluate", "dcgan"]):
        result = invoke(*args)
        assert result.exit_code == 0, f"{args}: {result.output}"
    reason = json.loads((tmp_path / "reports/classifier/metrics.json").read_text())["reason"]
    assert "no class labels" in reason
    scores = json.loads((tmp_path / "reports/eval/dcgan/metrics.json").read_text())
    assert scores["fid_classifier"] is None and scores["judge_note"] == reason
    assert scores["fid_inception"] is None and "inception_weights" in scores["inception_note"]
    timing = json.loads((tmp_path / "reports/eval/dcgan/timing.json").read_text())
    assert timing["samples_per_second"] > 0  # what can be measured still is
    refused = invoke("train", "cgan")  # conditional: needs labels
    assert refused.exit_code == 2 and "needs class labels" in refused.output
    assert "Traceback" not in refused.output


@pytest.mark.parametrize("overrides, key", [
    ({"data.image_size": 32}, "data.image_size"),
    ({"data.channels": 3}, "data.channels"),
    ({"data.source": "image_folder"}, "data.folder"),
    ({"data.source": "imagenet"}, "data.source"),
])
def test_data_params_that_do_not_fit_are_refused_naming_the_key(tiny_repo, overrides, key):
    write_params(tiny_repo / "params.yaml", overrides)
    result = invoke("download", "--dry-run")
    assert result.exit_code == 2 and key in result.output
