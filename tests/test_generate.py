"""`trilemma generate`: images and translations from the tiny models and translators the
pipeline chain trained (conftest `pipeline_chain`)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import FAMILIES, I2I
from pipeline.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def repo(pipeline_chain, tmp_path_factory):
    """A copy of the chain's data, params, models (the translators' too) and samples; the
    working directory is in it for this module's tests."""
    chain_root, results = pipeline_chain
    assert all(r.exit_code == 0 for r in results.values()), "the pipeline chain failed"
    root = tmp_path_factory.mktemp("generate")
    os.symlink((chain_root / "data" / "images.npz").resolve(), root / "images.npz")
    (root / "data").mkdir()
    os.symlink(root / "images.npz", root / "data" / "images.npz")
    for folder in ("models", "samples"):
        shutil.copytree(chain_root / folder, root / folder)
    shutil.copy(chain_root / "params.yaml", root / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        yield root


def load(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_gives_the_sample_stages_images_byte_identically(repo, family):
    # the sample stage's n, seed and settings (params `sample`, `seed`): its very images
    assert invoke("generate", family, "-n", "64", "--out", "a.npz").exit_code == 0
    assert invoke("generate", family, "-n", "64", "--out", "b.npz").exit_code == 0
    assert (repo / "a.npz").read_bytes() == (repo / "b.npz").read_bytes()
    mine, sampled = load(repo / "a.npz"), load(repo / "samples" / f"{family}.npz")
    assert mine["images"].dtype == np.uint8 and np.array_equal(mine["images"], sampled["images"])
    assert ("labels" in mine) == ("labels" in sampled)
    if "labels" in mine:
        assert np.array_equal(mine["labels"], sampled["labels"])


@pytest.mark.parametrize("family", ["cgan", "cfg_diffusion"])
def test_conditional_families_draw_the_requested_classes(repo, family):
    for request, expected in (("7", [7] * 6), ("1,4", [1, 4] * 3), ("all", list(range(6)))):
        result = invoke("generate", family, "-n", "6", "--label", request, "--out", "c.npz")
        assert result.exit_code == 0, result.output
        assert load(repo / "c.npz")["labels"].tolist() == expected


def test_png_grid_is_byte_identical_and_a_seed_or_knob_changes_it(repo):
    def grid(*args: str) -> bytes:
        result = invoke("generate", "cgan", "--label", "7", "-n", "16", "--out", "g.png", *args)
        assert result.exit_code == 0, result.output
        return (repo / "g.png").read_bytes()

    first = grid()
    assert Image.open(repo / "g.png").size == (4 * 30 + 2, 4 * 30 + 2)  # 4x4 of 28 + 2 px lines
    assert grid() == first
    assert grid("--seed", "1") != first
    assert grid("--truncation", "0.5") != first


def test_diffusion_settings_change_the_images(repo):
    def images(*args: str) -> np.ndarray:
        result = invoke("generate", "ddpm", "-n", "4", "--out", "d.npz", *args)
        assert result.exit_code == 0, result.output
        return load(repo / "d.npz")["images"]

    default = images()
    assert not np.array_equal(images("--steps", "1"), default)
    assert not np.array_equal(images("--sampler", "ddpm"), default)
    assert np.array_equal(images("--steps", "2"), default)  # the tiny params' steps


def test_steps_above_the_models_timesteps_say_so_and_sample_on_all_of_them(repo):
    from trilemma import families, paths
    from trilemma.config import load_params

    p = load_params(repo / "params.yaml")
    total = families.load("ddpm", families.config(p, "ddpm"), paths.model("ddpm"),
                          torch.device("cpu")).timesteps
    outputs = {}
    for steps in (total, total + 1, 10 * total):
        result = invoke("generate", "ddpm", "-n", "4", "--out", f"s{steps}.npz", "--steps",
                        str(steps))
        assert result.exit_code == 0, result.output
        warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
        outputs[steps] = load(repo / f"s{steps}.npz")["images"]
        if steps == total:
            assert warned == []
        else:
            assert warned == [f"warning: --steps {steps} above the {total} timesteps the model "
                              f"was trained on: sampled on all {total}"]
    assert np.array_equal(outputs[total + 1], outputs[total])
    assert np.array_equal(outputs[10 * total], outputs[total])


def digit_inputs(name: str, folder, count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The task inputs of `count` test digits, written as PNG files to `folder`, and the
    translator's outputs for them, both uint8 (count,1,s,s) and (count,1,28,28)."""
    from trilemma import data, i2i, pixels
    from trilemma.classifier import load_judge
    from trilemma.config import load_params

    p = load_params("params.yaml")
    cpu = torch.device("cpu")
    model = i2i.load(name, i2i.config(p, name), f"models/{name}.pt", cpu,
                     load_judge("models/classifier.pt", cpu))
    x = torch.from_numpy(data.load_npz("data/images.npz", p.data).x_test[:count]).float() / 255
    inputs = pixels.from_unit(model.task.pair(x)[0]).numpy()
    folder.mkdir(exist_ok=True)
    for k, image in enumerate(inputs):
        Image.fromarray(image[0]).save(folder / f"{k}.png")
    translated = model.translate(torch.from_numpy(inputs).float() / 255).cpu()
    expected = pixels.from_unit(translated).numpy()
    return inputs, expected


@pytest.mark.parametrize("name", I2I)
def test_translators_translate_a_folder_or_one_file(repo, name):
    inputs, expected = digit_inputs(name, repo / f"in_{name}")
    result = invoke("generate", name, "--input", f"in_{name}", "--out", "t.npz")
    assert result.exit_code == 0, result.output
    out = load(repo / "t.npz")
    assert np.array_equal(out["inputs"], inputs) and np.array_equal(out["images"], expected)
    assert out["images"].shape == (3, 1, 28, 28)
    result = invoke("generate", name, "--input", f"in_{name}/1.png", "--out", "one.png")
    assert result.exit_code == 0, result.output
    assert Image.open(repo / "one.png").size == (28, 28)  # one image: no border


@pytest.fixture
def bad_files(repo):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(repo / "small.png")
    (repo / "notes.png").write_text("not an image")
    return repo


@pytest.mark.parametrize("args, message", [
    (["vae", "--label", "3"], "--label: this family is unconditional"),
    (["cgan", "--label", "10"], "--label: class 10 is out of range 0..9"),
    (["cgan", "--label", "seven"], "--label: expected a class 0..9"),
    (["dcgan", "--guidance", "2"], "--guidance: this family has no guidance setting"),
    (["cfg_diffusion", "--truncation", "0.5"], "--truncation: this family has no truncation"),
    (["ddpm", "--sampler", "euler"], "--sampler: "),
    (["ddpm", "--eta", "2"], "--eta: "),
    (["cgan", "-n", "0"], "-n: must be at least 1"),
    (["cgan", "--seed", "-1"], "--seed: must be at least 0, got -1"),
    (["cgan", "--out", "x.jpg"], "--out: x.jpg must end in .png"),
    (["nope"], "family 'nope' is not in params.yaml `families`"),
    (["dcgan", "--input", "small.png"], "--input: dcgan draws new images"),
    (["pix2pix"], "--input: missing"),
    (["pix2pix", "--input", "small.png", "--seed", "1"], "--seed: pix2pix translates"),
    (["pix2pix", "--input", "small.png"], "small.png: 20x20 pixels; this model translates 28x28"),
    (["srgan", "--input", "small.png"], "small.png: 20x20 pixels; this model translates 7x7"),
    (["pix2pix", "--input", "notes.png"], "notes.png: not a readable image"),
    (["pix2pix", "--input", "nowhere"], "nowhere: not found"),
])
def test_bad_requests_are_one_line_exit_2_and_write_nothing(bad_files, args, message):
    result = invoke("generate", *args, *([] if "--out" in args else ["--out", "bad.npz"]))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (bad_files / "bad.npz").exists()


def test_a_family_missing_from_another_params_file_names_that_file(bad_files):
    other = bad_files / "other.yaml"
    shutil.copy(bad_files / "params.yaml", other)
    result = invoke("generate", "nope", "--params", str(other))
    assert result.exit_code == 2, result.output
    assert f"family 'nope' is not in {other} `families`" in error_lines(result)[0]


def test_generate_before_training_says_which_command_to_run(tiny_repo):
    result = invoke("generate", "cgan")
    assert result.exit_code == 2
    assert error_lines(result) == ["error: models/cgan.pt: not found; run `trilemma train cgan` "
                                   "first"]
