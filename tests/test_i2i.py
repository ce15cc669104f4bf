"""Image-to-image families: the translator contract (every registered i2i family), the derived
tasks, the pair metrics, the params, and the two stages on tiny settings."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import (assert_resume_repeats_the_next_step,
                      assert_saved_model_loads_only_with_its_config, base_params, every_section,
                      params_of)
from pipeline.cli import app
from trilemma import i2i
from trilemma.classifier import Judge
from trilemma.config import parse_params
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import ConfigError
from trilemma.i2i import tasks
from trilemma.i2i.scores import PSNR_CAP, psnr, ssim
from trilemma.registry import REGISTRY
from trilemma.report.images import Images

CPU = torch.device("cpu")
SMALL = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8, "blocks": 1}
NAMES = sorted(i2i.REGISTRY)


def tiny_config(name: str, **overrides):
    config = i2i.REGISTRY[name].Config
    return config(**{k: v for k, v in {**SMALL, **overrides}.items() if k in config.model_fields})


def tiny_judge(image: ImageSpec = MNIST_SPEC, seed: int = 5) -> Judge:
    torch.manual_seed(seed)
    return Judge(width=4, features=8, image=image).eval()


def build(name: str, seed: int = 0, image: ImageSpec = MNIST_SPEC, **overrides):
    judge = tiny_judge(image if image.labelled else MNIST_SPEC)  # unlabelled: refused anyway
    torch.manual_seed(seed)
    return i2i.build(name, tiny_config(name, **overrides), CPU, image, judge)


@pytest.fixture(scope="module")
def batch(mnist):
    """8 real digits as fit() gives them: x (8,1,28,28) float in [0,1] channels_last, y (8,)."""
    x = torch.from_numpy(mnist.x_train[:8]).float() / 255
    return x.contiguous(memory_format=torch.channels_last), torch.from_numpy(mnist.y_train[:8])


# --- the translator contract -------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_says_whether_the_translator_is_built_with_the_judge(name):
    """The loader hands the judge only to a translator whose entry `needs_judge`: one that
    needs it refuses to build without it, one that does not takes no judge at all."""
    entry = REGISTRY[name]
    assert entry.kind == "translator" and i2i.REGISTRY[name].__name__ == entry.module
    if entry.needs_judge:
        with pytest.raises(ConfigError, match="judge"):
            i2i.build(name, tiny_config(name), CPU, MNIST_SPEC)
    else:
        i2i.build(name, tiny_config(name), CPU, MNIST_SPEC)
        with pytest.raises(TypeError, match="judge"):
            i2i.REGISTRY[name].build(tiny_config(name), CPU, MNIST_SPEC, judge=tiny_judge())


@pytest.mark.parametrize("name", NAMES)
def test_train_step_gives_finite_detached_losses_and_updates_every_net(name, batch):
    model = build(name)
    before = params_of(model)
    losses = model.train_step(*batch)
    assert losses
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value) and not value.requires_grad, key
    after = params_of(model)
    for net in model.nets:
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net + ".")), \
            f"{net} was not updated"


@pytest.mark.parametrize("name", NAMES)
def test_translate_is_deterministic_in_range_and_independent_of_the_batch(name, batch):
    model = build(name)
    model.train_step(*batch)
    inputs, target = model.task.pair(batch[0])
    out = model.translate(inputs)
    assert out.shape == target.shape == (8, 1, 28, 28) and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, model.translate(inputs))
    # instance norm: no batch statistics, so a translation does not depend on its batch
    torch.testing.assert_close(model.translate(inputs[:3]), out[:3])
    assert all(net.training for net in model.nets.values())  # translate restores the mode


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_identical_translations(name, batch):
    model = build(name, seed=0)
    model.train_step(*batch)
    fresh = build(name, seed=1)
    inputs, _ = model.task.pair(batch[0])
    assert not torch.equal(fresh.translate(inputs), model.translate(inputs))
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    assert torch.equal(fresh.translate(inputs), model.translate(inputs))


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_state_repeats_the_next_step_exactly(name, batch):
    assert_resume_repeats_the_next_step(lambda seed: build(name, seed=seed), batch, steps=2)


@pytest.mark.parametrize("name", NAMES)
def test_saved_translator_loads_only_with_the_same_config(name, batch, tmp_path):
    model = build(name)
    model.train_step(*batch)
    assert_saved_model_loads_only_with_its_config(
        model, lambda cfg, path: i2i.save(model, name, cfg, path),
        lambda cfg, path: i2i.load(name, cfg, path, CPU, tiny_judge()),
        tiny_config(name), tiny_config(name, lr=2e-3), tmp_path,
        f"run `trilemma train-i2i {name}` first")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("image, key", [(ImageSpec(3, 28, ("a", "b")), "data.channels"),
                                        (ImageSpec(1, 28, ()), "data.folder"),
                                        (ImageSpec(1, 30, ("a", "b")), "data.image_size")])
def test_images_the_tasks_are_not_defined_for_are_refused_in_one_line(name, image, key):
    with pytest.raises(ConfigError, match=key) as err:
        build(name, image=image)
    assert "\n" not in str(err.value)


def test_translators_work_at_other_grey_labelled_sizes():
    for name in NAMES:
        model = build(name, image=ImageSpec(1, 16, ("a", "b")))
        x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        losses = model.train_step(x, torch.zeros(4, dtype=torch.long))
        assert all(torch.isfinite(v) for v in losses.values())
        assert model.translate(model.task.pair(x)[0]).shape == (4, 1, 16, 16)


def test_srgan_needs_the_judge_and_never_trains_it(batch):
    with pytest.raises(ConfigError, match="models/classifier.pt"):
        i2i.build("srgan", tiny_config("srgan"), CPU, MNIST_SPEC, None)
    model = build("srgan")
    judge = {k: v.clone() for k, v in model.judge.state_dict().items()}
    model.train_step(*batch)
    assert "judge" not in model.nets and not model.judge.training
    assert all(torch.equal(v, model.judge.state_dict()[k]) for k, v in judge.items())
    assert all(p.grad is None for p in model.judge.parameters())
    assert "judge" not in str(model.state_dict().keys())


def test_srgan_content_loss_is_zero_for_a_perfect_output(batch):
    model = build("srgan")
    target = batch[0]
    features = model.judge.features(target)
    assert torch.nn.functional.mse_loss(model.judge.features(target.clone()), features) == 0


# --- tasks -------------------------------------------------------------------------------------

def test_tasks_are_deterministic_pure_functions(batch):
    x = batch[0]
    for task in (tasks.edges_task(), tasks.super_resolution_task(4), tasks.thicken_task()):
        a, b = task.pair(x), task.pair(x.clone())
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(task.baseline(a[0]), task.baseline(b[0]))


def test_edges_lie_inside_the_dilated_digit_and_cover_its_outline(batch):
    x = batch[0]
    edges = tasks.sobel_edges(x)
    assert edges.shape == x.shape and 0 <= edges.min() and edges.max() <= 1
    assert not (edges > 0)[tasks.dilate(x) == 0].any()
    assert (edges > 0).float().sum() > (x > 0).float().sum() * 0.5  # an outline, not a few dots


def test_sobel_of_a_step_edge_is_one_and_of_a_flat_area_zero():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1  # a vertical step between columns 3 and 4
    edges = tasks.sobel_edges(x)
    assert torch.allclose(edges[0, 0, 2:6, 3:5], torch.ones(4, 2))  # |gx| = 4, scaled to 1
    assert torch.equal(edges[0, 0, 2:6, :2], torch.zeros(4, 2))


def test_downsample_then_bicubic_keeps_the_shape_and_range():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    small = tasks.downsample(x, 4)
    assert small.shape == (3, 1, 7, 7)
    torch.testing.assert_close(small.mean(dim=(2, 3)), x.mean(dim=(2, 3)))  # area averaging
    up = tasks.super_resolution_task(4).baseline(small)
    assert up.shape == (3, 1, 28, 28) and 0 <= up.min() and up.max() <= 1
    flat = torch.full((1, 1, 7, 7), 0.3)
    torch.testing.assert_close(tasks.bicubic(flat, 28), torch.full((1, 1, 28, 28), 0.3))


def test_thicken_grows_a_pixel_into_a_square_and_never_thins():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 0.7
    inputs, target = tasks.thicken_task().pair(x)
    assert torch.equal(inputs, x)
    assert torch.equal(target[0, 0, 3:6, 3:6], torch.full((3, 3), 0.7))
    assert target.sum() == pytest.approx(9 * 0.7)
    y = torch.rand(2, 1, 28, 28)
    assert (tasks.dilate(y) >= y).all()


def test_unpaired_halves_are_disjoint_digits():
    x = torch.arange(9.0).view(9, 1, 1, 1)
    a, b = tasks.unpaired_halves(x)
    assert len(a) == len(b) == 4
    assert not set(a.flatten().tolist()) & set(b.flatten().tolist())


# --- pair metrics ------------------------------------------------------------------------------

def test_psnr_of_identical_images_is_capped_and_of_a_known_error_exact():
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.8
    assert torch.equal(psnr(x, x), torch.full((4,), PSNR_CAP, dtype=torch.float64))
    torch.testing.assert_close(psnr(x + 0.1, x), torch.full((4,), 20.0, dtype=torch.float64))
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    assert (ssim(x.flip(-1), x) < 0.5).all()


def test_untranslated_baseline_of_a_single_pixel_has_the_expected_psnr():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1
    task = tasks.thicken_task()
    inputs, target = task.pair(x)
    # 8 of 784 pixels off by 1: MSE 8/784
    assert psnr(task.baseline(inputs), target).item() == pytest.approx(10 * math.log10(784 / 8))


# --- params ------------------------------------------------------------------------------------

def raw_params(**changes):
    raw = base_params()
    raw.update(changes)
    return raw


def test_params_list_the_i2i_families_and_validate_their_sections():
    p = parse_params(raw_params())
    assert p.i2i_families == ["pix2pix", "srgan", "cyclegan"]
    assert i2i.config(p, "srgan").factor == 4
    with pytest.raises(ConfigError, match="not in params.yaml `i2i_families`"):
        i2i.config(p, "dcgan")


@pytest.mark.parametrize("change, message", [
    ({"i2i_families": ["pix2pix", "unet"]}, "i2i_families: unknown family 'unet'"),
    ({"i2i_families": ["srgan", "srgan"]}, "listed twice"),
    ({"i2i_families": ["srgan", 3]}, "i2i_families: entries must be family names \\(got 3\\)"),
    ({"srgan": [1, 2]}, "srgan: must be a mapping of settings"),
    ({"srgan": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "factor": 3}}, "srgan.factor"),
    ({"cyclegan": {"epochs": 1, "batch_size": 1, "lr": 1e-3}}, "cyclegan.batch_size"),
    ({"pix2pix": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "colour": 1}}, "pix2pix.colour: unknown"),
])
def test_bad_i2i_params_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message) as err:
        every_section(raw_params(**change))
    assert "\n" not in str(err.value)


def test_a_listed_i2i_family_needs_its_section():
    raw = raw_params()
    del raw["cyclegan"]
    with pytest.raises(ConfigError, match="'cyclegan' has no section"):
        parse_params(raw)


def test_params_without_i2i_families_parse():
    raw = raw_params()
    for key in ("i2i_families", *NAMES):
        del raw[key]
    assert parse_params(raw).i2i_families == []


# --- stages ------------------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_train_and_evaluate_every_i2i_family_then_the_report_section(tiny_repo, set_params):
    from trilemma.report.i2i import section

    assert invoke("train-classifier").exit_code == 0
    for name in NAMES:
        result = invoke("train-i2i", name)
        assert result.exit_code == 0, result.output
        assert (tiny_repo / f"models/{name}.pt").exists()
        train = tiny_repo / "reports/train" / name
        assert {"loss.csv", "loss_steps.csv", "metrics.json", "timing.json", "examples.png"} <= \
            {p.name for p in train.iterdir()}
        result = invoke("evaluate-i2i", name)
        assert result.exit_code == 0, result.output
        scores = json.loads((tiny_repo / f"reports/eval/{name}/metrics.json").read_text())
        assert scores["n"] == 200
        for key in ("psnr", "ssim", "judge_accuracy", "fid_classifier"):
            assert np.isfinite(scores[key]) and np.isfinite(scores[f"baseline_{key}"]), key
        assert 0 <= scores["judge_accuracy"] <= 1 and -1 <= scores["ssim"] <= 1
        assert (tiny_repo / f"reports/eval/{name}/examples.png").exists()
    cycle = json.loads((tiny_repo / "reports/eval/cyclegan/metrics.json").read_text())
    assert cycle["paired_training"] is False and "back_psnr" in cycle
    # the untranslated digit against its own thickened version: the same on every run
    assert cycle["baseline_judge_accuracy"] == json.loads(
        (tiny_repo / "reports/eval/pix2pix/metrics.json").read_text())["target_judge_accuracy"]
    images = Images(tiny_repo / "reports" / "quick" / "images")
    text = section(NAMES, images)
    assert text.startswith("## Image-to-image")
    for name in NAMES:
        assert f"| {name} |" in text and f"(images/eval/{name}/examples.png)" in text
        assert (images.folder / f"eval/{name}/examples.png").is_file()
    assert "standing in for VGG" in text and "unpaired" in text

    # scored on a seeded draw of the test digits: the targets' judge view is train-classifier's
    set_params({"evaluate.i2i_test_n": 60})
    assert invoke("evaluate-i2i", "pix2pix").exit_code == 0
    drawn = json.loads((tiny_repo / "reports/eval/pix2pix/metrics.json").read_text())
    assert drawn["n"] == 60
    picked = np.sort(np.random.default_rng(0).permutation(200)[:60])
    test = torch.load(tiny_repo / "models/test_embedding.pt")
    labels = np.load(tiny_repo / "data/images.npz")["y_test"][:200]
    assert drawn["target_judge_accuracy"] == round(float(
        (test["logits"].argmax(1).numpy()[picked] == labels[picked]).mean()), 6)


def test_report_section_reads_n_a_without_files(tmp_path, monkeypatch):
    from trilemma.report.i2i import section

    monkeypatch.chdir(tmp_path)
    text = section(["srgan"], Images(tmp_path / "images"))
    assert "| srgan | not evaluated yet | n/a |" in text and "![" not in text
    assert section([], Images(tmp_path)) == ""


def test_evaluate_without_a_trained_model_is_one_line(tiny_repo):
    assert invoke("train-classifier").exit_code == 0
    result = invoke("evaluate-i2i", "pix2pix")
    assert result.exit_code == 2
    assert "models/pix2pix.pt: not found; run `trilemma train-i2i pix2pix` first" in result.output


def test_an_i2i_family_not_listed_is_refused(tiny_repo):
    result = invoke("train-i2i", "dcgan", "--dry-run")
    assert result.exit_code == 2 and "i2i_families" in result.output
