"""Controllable generation: latent steering, classifier guidance, and the `train-referee` and
`control` stages on tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_repo, write_params
from pipeline.cli import app
from trilemma import control, diffusion, families, latent
from trilemma.classifier import Judge
from trilemma.config import load_params
from trilemma.data import MNIST_SPEC
from trilemma.report.images import Images

CPU = torch.device("cpu")
STEERABLE = ["vae", "mlp_gan", "dcgan", "wgan_gp"]
SMALL = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8, "latent_dim": 4,
         "widths": [8, 16], "patch": 2, "timesteps": 20, "dropout": 0.0}


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    config = families.REGISTRY[name].Config
    cfg = config(**{k: v for k, v in SMALL.items() if k in config.model_fields})
    return families.build(name, cfg, CPU)


def judge(seed: int = 0) -> Judge:
    """An untrained judge: its gradients are as real as a trained one's, for these tests."""
    torch.manual_seed(seed)
    net = Judge(width=8, features=16).eval()
    with torch.no_grad():  # sharper logits than at initialisation: log-probs that z can move
        net.head[-1].weight.mul_(30)
    return net


def one_train_step(model) -> None:
    """So that BatchNorm running statistics differ from batch statistics."""
    x = torch.rand(8, 1, 28, 28)
    model.train_step(x, torch.arange(8) % 10)


@pytest.mark.parametrize("name", STEERABLE)
def test_decode_is_generate_before_rounding_and_differentiable_in_z(name):
    model = build(name)
    one_train_step(model)
    z = torch.randn(6, model.latent_dim, requires_grad=True)
    images = model.decode(z)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images.detach().mul(255).round().to(torch.uint8), model.generate(z))
    images.mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # eval mode: an image does not depend on the rest of its batch
    assert torch.allclose(model.decode(z[:1]), images[:1], atol=1e-6)
    net = next(iter(model.nets.values()))
    assert net.training  # the mode it was in before decode


def test_gan_generate_matches_the_previous_formula_to_one_grey_level():
    model = build("dcgan")
    one_train_step(model)
    z = torch.randn(16, model.latent_dim)
    model.g.eval()
    with torch.no_grad():
        old = ((model.g(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    model.g.train()
    assert (model.generate(z).int() - old.int()).abs().max() <= 1


@pytest.mark.parametrize("name", STEERABLE)
def test_steering_raises_the_target_log_probability_and_keeps_z_finite(name):
    model, classifier = build(name), judge()
    target = torch.arange(10)
    z0 = latent.noise(10, model.latent_dim, torch.Generator().manual_seed(0))
    z = control.steer(model.decode, classifier, z0, target, steps=20, lr=0.1, prior_weight=0.0)
    with torch.no_grad():
        before = control.log_prob(classifier, model.decode(z0), target)
        after = control.log_prob(classifier, model.decode(z), target)
    assert torch.isfinite(z).all()
    # untrained DCGAN-initialised generators barely respond to z: a small rise, but every one
    assert (after > before).all() and after.mean() > before.mean()
    assert not z0.requires_grad and torch.equal(z0, latent.noise(
        10, model.latent_dim, torch.Generator().manual_seed(0)))  # the input is left alone


def test_a_large_prior_weight_keeps_z_near_the_prior_mode():
    model, classifier = build("dcgan"), judge()
    target = torch.full((8,), 3)
    z0 = latent.noise(8, model.latent_dim, torch.Generator().manual_seed(1))
    free = control.steer(model.decode, classifier, z0, target, 30, 0.1, prior_weight=0.0)
    held = control.steer(model.decode, classifier, z0, target, 30, 0.1, prior_weight=100.0)
    assert held.norm(dim=1).mean() < 0.5 * z0.norm(dim=1).mean()  # pulled toward 0
    assert held.norm(dim=1).mean() < free.norm(dim=1).mean()


def test_steering_leaves_the_networks_gradients_untouched():
    model, classifier = build("dcgan"), judge()
    control.steer(model.decode, classifier, torch.randn(4, model.latent_dim),
                  torch.zeros(4, dtype=torch.long), 2, 0.1, 0.0)
    assert all(p.grad is None for p in model.g.parameters())
    assert all(p.grad is None for p in classifier.parameters())


def diffusion_model(prediction: str = "eps"):
    model = build("ddpm")  # untrained: its EMA net is a copy of the random U-Net
    model.cfg = model.cfg.model_copy(update={"prediction": prediction})  # read as eps or as v
    return model


def test_guide_moves_the_predicted_x0_by_scale_times_the_gradient():
    model, classifier = diffusion_model(), judge()
    x_t, eps = torch.randn(4, 1, 28, 28) * 0.5, torch.randn(4, 1, 28, 28) * 0.3
    labels, t, scale = torch.tensor([0, 1, 2, 3]), 10, 0.7
    shifted = control.x0_guide(classifier, model.alpha_bar, labels, scale)(x_t, eps, t)
    ab = model.alpha_bar[t].float()
    x0 = diffusion.predict_x0(x_t, eps, ab).clamp(-1, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(control.log_prob(classifier, (x0 + 1) / 2, labels).sum(), x0)
    moved = diffusion.predict_x0(x_t, shifted, ab) - diffusion.predict_x0(x_t, eps, ab)
    assert torch.allclose(moved, scale * grad, atol=1e-4)


def test_guidance_scale_zero_is_unguided_sampling_exactly():
    model, classifier = diffusion_model(), judge()
    labels = torch.arange(6)
    plain = model.sample(6, None, torch.Generator().manual_seed(0), steps=4)
    guided = model.sample(6, None, torch.Generator().manual_seed(0), steps=4,
                          guide=control.x0_guide(classifier, model.alpha_bar, labels, 0.0))
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("prediction", ["eps", "v"])  # the guide works on the eps of either
def test_positive_guidance_raises_the_requested_class_log_probability(prediction):
    model, classifier = diffusion_model(prediction), judge()
    labels = torch.arange(10)
    x_T = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))

    def final(scale: float) -> torch.Tensor:
        guide = control.x0_guide(classifier, model.alpha_bar, labels, scale)
        x0, _ = model.denoise(x_T, model.timesteps - 1, steps=5, guide=guide)
        with torch.no_grad():
            return control.log_prob(classifier, (x0.clamp(-1, 1) + 1) / 2, labels)

    plain, guided = final(0.0), final(2.0)
    assert not torch.equal(plain, guided)
    assert guided.mean() > plain.mean() + 0.05


# the stages, in a tiny repo ---------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def save_untrained(name: str) -> None:
    """models/<name>.pt of the tiny params without training: the stage only needs a saved family."""
    p = load_params("params.yaml")
    torch.manual_seed(0)
    cfg = families.config(p, name)
    families.save(families.build(name, cfg, CPU, MNIST_SPEC), name, cfg, f"models/{name}.pt")


@pytest.fixture(scope="module")
def judged_repo(tmp_path_factory, mnist_npz):
    """A tiny repo with the judge and the referee trained by their stages, once per module; the
    working directory stays in it."""
    root = make_repo(tmp_path_factory.mktemp("repo"), mnist_npz)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        for stage in ("train-classifier", "train-referee"):
            result = invoke(stage)
            assert result.exit_code == 0, result.output
        yield root


def test_referee_is_trained_and_scored(judged_repo):
    metrics = json.loads((judged_repo / "reports/control/referee/metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["seed"] == 1
    assert (judged_repo / "models/referee.pt").exists()
    assert len(pd.read_csv(judged_repo / "reports/control/referee/per_class.csv")) == 10


def test_control_steers_a_latent_family_end_to_end(judged_repo):
    save_untrained("vae")
    result = invoke("control", "vae")
    assert result.exit_code == 0, result.output
    out = judged_repo / "reports/control/vae"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "steer" and metrics["per_class"] == 2
    for key in ("judge_before_success", "judge_after_success", "referee_before_success",
                "referee_after_success"):
        assert 0 <= metrics[key] <= 1
    rows = pd.read_csv(out / "per_class.csv")
    assert list(rows["digit"]) == list(range(10)) and (rows["n"] == 2).all()
    assert (out / "before_after.png").stat().st_size > 0


def test_control_failing_part_way_keeps_the_old_reports_whole(judged_repo, monkeypatch):
    import pipeline.control
    from trilemma.errors import DataError

    out = judged_repo / "reports/control/vae"
    if not (out / "metrics.json").exists():  # run alone: the steering test's outputs first
        save_untrained("vae")
        assert invoke("control", "vae").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(fig, path):  # the figure is the last file: the others are written by then
        raise DataError(f"{path}: cannot write (No space left on device)")

    monkeypatch.setattr(pipeline.control.figures, "save_figure", full_disk)
    result = invoke("control", "vae")
    assert result.exit_code == 2
    assert result.output.count("error:") == 1 and "reports/control/vae/before_after.png" in \
        result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_control_compares_guidance_of_diffusion_families_end_to_end(judged_repo):
    for name in ("ddpm", "cfg_diffusion"):
        save_untrained(name)
        result = invoke("control", name)
        assert result.exit_code == 0, result.output
    ddpm = json.loads((judged_repo / "reports/control/ddpm/metrics.json").read_text())
    cfg = json.loads((judged_repo / "reports/control/cfg_diffusion/metrics.json").read_text())
    assert [r["scale"] for r in ddpm["guidance"]] == [0.0, 2.0]
    assert [r["scale"] for r in cfg["guidance"]] == [0.0, 3.0]  # guidance_sweep + guidance
    for row in ddpm["guidance"] + cfg["guidance"]:
        assert row["n"] == 20 and np.isfinite(row["fid_classifier"])
    for name in ("ddpm", "cfg_diffusion"):
        timing = json.loads((judged_repo / f"reports/control/{name}/timing.json").read_text())
        assert len(timing["images_per_second"]) == 2
        assert all(rate > 0 for rate in timing["images_per_second"].values())
    from trilemma.report.control import section

    images = Images(judged_repo / "reports" / "quick" / "images")
    text = section(["dcgan", "ddpm", "cfg_diffusion"], images, "digit")
    assert "classifier-free guidance" in text and "classifier guidance (judge on x0)" in text
    assert "![ddpm control](images/control/ddpm/before_after.png)" in text
    assert (images.folder / "control/ddpm/before_after.png").read_bytes() == \
        (judged_repo / "reports/control/ddpm/before_after.png").read_bytes()
    assert "`trilemma control dcgan`" in text  # not run here: the section says so


def test_control_of_a_family_not_in_control_families_exits_2_in_one_line(tiny_repo):
    result = invoke("control", "cgan")
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "control.families" in line and "cgan" in line


def test_control_families_must_be_trained_families(tiny_repo, set_params):
    set_params({"control.families": ["vae", "nonsense"]})
    result = invoke("control", "vae")
    assert result.exit_code == 2
    assert "control.families: 'nonsense' is not in `families`" in result.output
    assert "Traceback" not in result.output


def test_a_conditional_gan_cannot_be_steered(tiny_repo, set_params):
    set_params({"control.families": ["cgan"]})
    save_untrained("cgan")
    result = invoke("control", "cgan")
    assert result.exit_code == 2
    assert "control.families: 'cgan' cannot be steered" in result.output


def test_section_without_results_names_the_stages_to_run(tmp_path, monkeypatch):
    from trilemma.report.control import section

    monkeypatch.chdir(tmp_path)
    text = section(["dcgan"], Images(tmp_path / "images"), "class")
    assert "`trilemma control dcgan`" in text and "`trilemma train-referee`" in text
    assert "for a class without retraining" in text and "digit" not in text  # the data set's word


@pytest.mark.parametrize("args", [["train-referee"], ["control", "vae"]])
def test_dry_run_prints_the_settings_and_writes_nothing(tiny_repo, args):
    before = sorted(tiny_repo.rglob("*"))
    result = invoke(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output)
    assert settings["seed"] == (1 if args[0] == "train-referee" else 0)
    assert sorted(tiny_repo.rglob("*")) == before


def test_control_without_a_referee_says_to_train_it(tiny_repo):
    save_untrained("vae")
    result = invoke("control", "vae")
    assert result.exit_code == 2
    assert "models/referee.pt: not found; run `trilemma train-referee` first" in result.output


def test_unlabelled_images_get_records_that_say_why_nothing_was_steered(tmp_path, monkeypatch):
    from test_image_folder import folder_params, make_folder

    folder = make_folder(tmp_path / "flat", labelled=False, per_class=8)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRILEMMA_DEVICE", "cpu")
    write_params(tmp_path / "params.yaml", {**folder_params(folder, ["dcgan"]),
                                            "dcgan.max_steps": 1, "control.families": ["dcgan"]})
    for args in (["download"], ["train-classifier"], ["train-referee"], ["train", "dcgan"],
                 ["control", "dcgan"]):
        result = invoke(*args)
        assert result.exit_code == 0, f"{args}: {result.output}"
    referee = json.loads((tmp_path / "reports/control/referee/metrics.json").read_text())
    record = json.loads((tmp_path / "reports/control/dcgan/metrics.json").read_text())
    assert referee["referee"] is False and "no class labels" in referee["reason"]
    assert record["judge"] is False and "no class labels" in record["reason"]
    assert (tmp_path / "reports/control/dcgan/before_after.png").exists()
