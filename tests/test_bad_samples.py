"""Samples files `evaluate` must refuse with one line naming the file: malformed arrays, too few
images to score, and samples that are not what it would score today (drawn by another family,
from another model file, with other sample settings). Nothing written before is lost."""

from __future__ import annotations

import numpy as np
import pytest

from badinput import refused
from conftest import write_params


def rewrite(path, edit) -> None:
    """Apply `edit` (arrays -> arrays) to the samples file at `path`."""
    with np.load(path) as npz:
        blob = edit({k: npz[k] for k in npz.files})
    with open(path, "wb") as fh:
        np.savez(fh, **blob)


def _set(**arrays):
    return lambda blob: {**blob, **arrays}


def _drop(*keys):
    return lambda blob: {k: v for k, v in blob.items() if k not in keys}


def _sweep(images):
    """One truncation sweep setting whose images are `images`."""
    return _set(sweep_images=images, sweep_knob=np.array(["truncation"]),
                sweep_value=np.array([1.0]), sweep_label=np.array(["1"]),
                sweep_images_per_second=np.array([100.0]))


SAMPLES_CASES = [
    # id, the change to the real samples/vae.npz, the array the error line must name
    ("wrong-shape", _set(images=np.zeros((64, 784), np.uint8)), "images"),
    ("wrong-image-size", _set(images=np.zeros((64, 1, 32, 32), np.uint8)), "images"),
    ("wrong-dtype", _set(images=np.zeros((64, 1, 28, 28), np.float32)), "images"),
    ("images-missing", _drop("images"), "images"),
    ("labels-out-of-range", _set(labels=np.full(64, 10, np.int64)), "labels"),
    ("labels-negative", _set(labels=np.full(64, -1, np.int64)), "labels"),
    ("labels-wrong-length", _set(labels=np.zeros(63, np.int64)), "labels"),
    ("sweep-arrays-inconsistent", _sweep(np.zeros((2, 32, 1, 28, 28), np.uint8)), "sweep_images"),
    ("sweep-larger-than-main", _sweep(np.zeros((1, 65, 1, 28, 28), np.uint8)), "sweep_images"),
    ("sweep-wrong-dtype", _sweep(np.zeros((1, 32, 1, 28, 28), np.float32)), "sweep_images"),
    ("sampling-time-missing", _drop("images_per_second"), "trilemma sample"),
    ("sampling-rate-nan", _set(images_per_second=np.float64("nan")), "images_per_second"),
    ("sampling-time-negative", _set(seconds=np.float64(-5)), "seconds"),
    ("sampling-rate-text", _set(images_per_second=np.str_("fast")), "images_per_second"),
]


@pytest.mark.parametrize("edit, key", [c[1:] for c in SAMPLES_CASES],
                         ids=[c[0] for c in SAMPLES_CASES])
def test_malformed_samples_file_names_it_and_the_array(repo, edit, key):
    rewrite(repo / "samples" / "vae.npz", edit)
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", key)


def test_samples_file_missing_says_run_sample(repo):
    (repo / "samples" / "vae.npz").unlink()
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", "trilemma sample vae")


def test_samples_file_truncated(repo):
    path = repo / "samples" / "vae.npz"
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    refused(repo, ["evaluate", "vae"], "samples/vae.npz")


TOO_FEW_CASES = [
    # id, the change, what the error line must name
    ("no-images", _set(images=np.zeros((0, 1, 28, 28), np.uint8)), "0 images"),
    ("three-images", _set(images=np.zeros((3, 1, 28, 28), np.uint8)), "3 images"),
    ("sweep-of-two", _sweep(np.zeros((1, 2, 1, 28, 28), np.uint8)), "2 images"),
]


@pytest.mark.parametrize("edit, says", [c[1:] for c in TOO_FEW_CASES],
                         ids=[c[0] for c in TOO_FEW_CASES])
def test_too_few_samples_to_score_says_how_many_are_needed(repo, edit, says):
    rewrite(repo / "samples" / "vae.npz", lambda blob: _drop("labels")(edit(blob)))
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", says, "at least 4")


def test_test_set_too_small_to_score_names_the_key(repo):
    write_params(repo / "params.yaml", {"data.test_size": 3})
    refused(repo, ["evaluate", "vae"], "data.test_size", "3 images", "at least 4")


def test_another_familys_samples_are_refused(repo):
    rewrite(repo / "samples" / "vae.npz", _set(family=np.str_("cgan")))
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", "'cgan'", "trilemma sample vae")


def test_samples_of_another_model_file_are_refused(repo):
    model = repo / "models" / "vae.pt"
    model.write_bytes(model.read_bytes() + b"\0")  # a retrained model: other bytes
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", "models/vae.pt", "trilemma sample vae")


@pytest.mark.parametrize("overrides", [{"sample.n": 96}, {"seed": 1}, {"sample.truncation": 0.5}],
                         ids=["other-n", "other-seed", "other-truncation"])
def test_samples_drawn_with_other_settings_are_refused(repo, overrides):
    write_params(repo / "params.yaml", overrides)
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", "other settings", "trilemma sample vae")


def test_samples_without_provenance_are_refused(repo):
    rewrite(repo / "samples" / "vae.npz", _drop("family", "model_sha256", "settings_fingerprint"))
    refused(repo, ["evaluate", "vae"], "samples/vae.npz", "which family", "trilemma sample vae")


def test_sample_n_beyond_memory_names_the_key(repo):
    write_params(repo / "params.yaml", {"sample.n": 10**12})
    refused(repo, ["sample", "vae"], "sample.n", "GiB", "memory")


def test_train_size_too_small_for_the_floor_keeps_the_judge(repo):
    """The worst case found: the judge was replaced, then scoring the floor crashed."""
    write_params(repo / "params.yaml", {"data.train_size": 2})
    refused(repo, ["train-classifier"], "data.train_size", "2 images", "at least 4")
