"""The family contract (every registered family) and the generic training loop `fit`."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import (assert_resume_repeats_the_next_step,
                      assert_saved_model_loads_only_with_its_config, params_of, same_params)
from trilemma import families
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.denoising import Diffusion
from trilemma.errors import ConfigError, DataError, TrainingDiverged
from trilemma.registry import REGISTRY
from trilemma.train import fit

CPU = torch.device("cpu")
SMALL = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "width": 8, "latent_dim": 4,
         "widths": [8, 16], "patch": 2, "timesteps": 20,
         "resolution_steps": 2, "fade_steps": 2,  # progan: grows within the resume test
         "ae_steps": 1, "downsample": 2,  # latent_diffusion: 14x14 latents, as patch 2 needs
         "w_dim": 16, "mapping_layers": 2}  # stylegan


def tiny_config(name: str, **overrides):
    config = families.REGISTRY[name].Config
    fields = config.model_fields
    return config(**{k: v for k, v in {**SMALL, **overrides}.items() if k in fields})


def build(name: str, seed: int = 0, image: ImageSpec = MNIST_SPEC, **overrides):
    torch.manual_seed(seed)
    return families.build(name, tiny_config(name, **overrides), CPU, image)


def labels_for(model, n: int):
    return torch.arange(n) % model.image.num_classes if model.conditional else None


@pytest.fixture(scope="module")
def batch(mnist):
    """A real batch: x (8,1,28,28) float in [0,1], y (8,) int64."""
    x = torch.from_numpy(mnist.x_train[:8]).float() / 255  # the data set's (N,C,S,S) layout
    return x, torch.from_numpy(mnist.y_train[:8])


@pytest.fixture(scope="module")
def small_set(mnist):
    """128 training images as fit() takes them: x (128,1,28,28) uint8, y (128,) int64."""
    return torch.from_numpy(mnist.x_train[:128]), torch.from_numpy(mnist.y_train[:128])


FAMILIES = sorted(families.REGISTRY)


@pytest.mark.parametrize("name", FAMILIES)
def test_train_step_returns_finite_scalars_and_updates_every_net(name, batch):
    model = build(name)
    before = params_of(model)
    for _ in range(2):  # two: a phased family (latent_diffusion, ae_steps 1) trains its nets in turn
        losses = model.train_step(*batch)
        assert losses
        for key, value in losses.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, key
            assert torch.isfinite(value), key
            assert not value.requires_grad, key
    after = params_of(model)
    for net in model.nets:
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(net + ".")), \
            f"{net} was not updated"


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_is_uint8_images_and_seeded(name):
    model = build(name)
    a = model.sample(12, labels_for(model, 12), torch.Generator().manual_seed(3))
    b = model.sample(12, labels_for(model, 12), torch.Generator().manual_seed(3))
    c = model.sample(12, labels_for(model, 12), torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == (12, 1, 28, 28)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_round_trip_gives_identical_samples(name, batch):
    model = build(name, seed=0)
    model.train_step(*batch)
    state = copy.deepcopy(model.state_dict())
    fresh = build(name, seed=1)
    fresh.load_state_dict(state)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(model.sample(16, labels_for(model, 16), gen()),
                       fresh.sample(16, labels_for(fresh, 16), gen()))


@pytest.mark.parametrize("name", FAMILIES)
def test_resume_from_state_and_rng_repeats_the_next_step(name, batch):
    assert_resume_repeats_the_next_step(lambda seed: build(name, seed=seed), batch, steps=3)


@pytest.mark.parametrize("name", FAMILIES)
def test_saved_family_loads_only_with_the_same_config(name, batch, tmp_path):
    model = build(name)
    model.train_step(*batch)
    assert_saved_model_loads_only_with_its_config(
        model, lambda cfg, path: families.save(model, name, cfg, path),
        lambda cfg, path: families.load(name, cfg, path, CPU),
        tiny_config(name), tiny_config(name, lr=2e-3), tmp_path, "not found")


def test_saved_family_keeps_its_image_spec_and_old_files_ask_for_a_retrain(tmp_path):
    image = ImageSpec(3, 16, ("a", "b"))
    model = build("dcgan", image=image)
    cfg = tiny_config("dcgan")
    families.save(model, "dcgan", cfg, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert blob["image"] == image.as_dict()
    loaded = families.load("dcgan", cfg, tmp_path / "m.pt", CPU)
    assert loaded.image == image and same_params(params_of(loaded), params_of(model))
    del blob["image"]  # as saved before image specs were recorded
    torch.save(blob, tmp_path / "old.pt")
    with pytest.raises(DataError, match="run `trilemma train dcgan` again"):
        families.load("dcgan", cfg, tmp_path / "old.pt", CPU)


# --- other image shapes: every family at any square size, 1 or 3 channels, any classes -------

def steering_of(model) -> str | None:
    """How the control stage can steer `model`, read from the model itself."""
    if model.conditional and "guidance" in model.knobs:
        return "classifier-free"
    if isinstance(model, Diffusion) and not model.conditional:
        return "classifier"
    if hasattr(model, "decode") and hasattr(model, "latent_dim") and not model.conditional:
        return "steer"
    return None


@pytest.mark.parametrize("name", FAMILIES)
def test_registry_entry_declares_what_the_family_builds(name):
    """Stages, report and control read the entry instead of the model: it must not lie."""
    entry, model = REGISTRY[name], build(name)
    assert entry.kind == "generator" and families.REGISTRY[name].__name__ == entry.module
    assert model.conditional == entry.conditional
    assert tuple(model.knobs) == entry.knobs
    assert isinstance(model, families.LatentFamily) == entry.latent
    space = ("pixel" if isinstance(model, Diffusion) else
             "latent" if isinstance(getattr(model, "diffusion", None), Diffusion) else None)
    assert space == entry.diffusion
    assert steering_of(model) == entry.control
    assert not entry.needs_judge


RGB64 = ImageSpec(3, 64, ("a", "b", "c"))
RGB32_UNLABELLED = ImageSpec(3, 32, ())
GREY16 = ImageSpec(1, 16, ("a", "b"))
CONDITIONAL = [name for name in FAMILIES if REGISTRY[name].conditional]
SHAPES = [(name, image) for image in (RGB64, RGB32_UNLABELLED, GREY16) for name in FAMILIES
          if image.labelled or name not in CONDITIONAL]


@pytest.mark.parametrize("name, image", SHAPES,
                         ids=[f"{n}-{i.channels}x{i.size}-{i.num_classes}" for n, i in SHAPES])
def test_family_trains_and_samples_at_other_image_shapes(name, image):
    model = build(name, image=image)
    assert model.image == image
    c, s = image.channels, image.size
    x = torch.rand(4, c, s, s, generator=torch.Generator().manual_seed(0)) \
        .contiguous(memory_format=torch.channels_last)  # as fit() gives it
    y = torch.arange(4) % image.num_classes if image.labelled else torch.zeros(4, dtype=torch.long)
    losses = model.train_step(x, y)
    assert all(torch.isfinite(v) for v in losses.values())
    fast = {"steps": 2} if "steps" in model.knobs else {}  # diffusion: 2 DDIM steps suffice here
    images = model.sample(4, labels_for(model, 4), torch.Generator().manual_seed(0), **fast)
    assert images.dtype == torch.uint8 and images.shape == (4, c, s, s)


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_family_refuses_unlabelled_images_in_one_line(name):
    with pytest.raises(ConfigError, match=f"{name} is conditional and needs class labels") as err:
        build(name, image=RGB32_UNLABELLED)
    assert "\n" not in str(err.value) and "the params' `families`" in str(err.value)


@pytest.mark.parametrize("name, size", [("dcgan", 7), ("dcgan", 9), ("wgan_gp", 6), ("cgan", 9),
                                        ("vae", 9)])
def test_size_the_conv_networks_cannot_halve_is_a_config_error(name, size):
    with pytest.raises(ConfigError, match="data.image_size") as err:
        build(name, image=ImageSpec(1, size, ("a", "b")))
    assert str(size) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["ddpm", "cfg_diffusion"])
def test_unet_patch_must_divide_the_image_size(name):
    with pytest.raises(ConfigError, match=f"{name}.patch 2 .*data.image_size 15"):
        build(name, image=ImageSpec(1, 15, ("a", "b")), patch=2)
    model = build(name, image=ImageSpec(1, 15, ("a", "b")), patch=1)  # odd sizes work unpatched
    images = model.sample(2, labels_for(model, 2), torch.Generator().manual_seed(0), steps=2)
    assert images.shape == (2, 1, 15, 15)


def test_vae_figures_give_latent_scatter_only_for_two_dims(batch):
    x, y = batch
    assert build("vae", latent_dim=4).figures(x, y) == {}
    figs = build("vae", latent_dim=2).figures(x, y)
    assert set(figs) == {"latent"}


def run_fit(model, small_set, epochs: int, checkpoint, seed: int = 0, trace=None, batch_size=64):
    return fit(model, *small_set, tiny_config("vae", epochs=epochs, batch_size=batch_size),
               name="vae", device=CPU, seed=seed, checkpoint=checkpoint, fingerprint="fp",
               trace=trace)


def losses(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_fit_resumed_after_one_epoch_equals_two_epochs_straight(small_set, tmp_path):
    straight = build("vae", seed=0)
    history = run_fit(straight, small_set, 2, tmp_path / "straight.pt")
    assert [row["epoch"] for row in history] == [1, 2]

    first = build("vae", seed=0)
    run_fit(first, small_set, 1, tmp_path / "split.pt")
    resumed = build("vae", seed=5)
    torch.manual_seed(123)  # the checkpoint's RNG state, not this, must drive epoch 2
    resumed_history = run_fit(resumed, small_set, 2, tmp_path / "split.pt")

    assert losses(resumed_history) == losses(history)
    assert same_params(params_of(resumed), params_of(straight))


def test_fit_trace_has_ten_points_per_epoch_and_survives_a_resume(small_set, tmp_path):
    straight_trace: list = []
    run_fit(build("vae", seed=0), small_set, 2, tmp_path / "a.pt", trace=straight_trace,
            batch_size=8)  # 16 steps per epoch: points end at ceil(16 k / 10), k = 1..10
    first_epoch = [2, 4, 5, 7, 8, 10, 12, 13, 15, 16]
    assert [p["step"] for p in straight_trace] == first_epoch + [16 + s for s in first_epoch]
    assert straight_trace[9]["epoch"] == 1.0 and straight_trace[-1]["epoch"] == 2.0
    assert {"loss", "recon", "kl"} <= straight_trace[0].keys()

    run_fit(build("vae", seed=0), small_set, 1, tmp_path / "b.pt", trace=[], batch_size=8)
    resumed_trace: list = []
    run_fit(build("vae", seed=5), small_set, 2, tmp_path / "b.pt", trace=resumed_trace,
            batch_size=8)
    assert resumed_trace == straight_trace


def test_fit_ignores_checkpoint_of_other_settings(small_set, tmp_path):
    run_fit(build("vae", seed=0), small_set, 1, tmp_path / "ck.pt")
    other = build("vae", seed=0)
    history = fit(other, *small_set, tiny_config("vae", epochs=1, batch_size=64), name="vae",
                  device=CPU, seed=0, checkpoint=tmp_path / "ck.pt", fingerprint="other")
    assert [row["epoch"] for row in history] == [1]  # trained from scratch, not resumed


class NanInEpoch:
    """A trainee that delegates to `inner` but reports a NaN loss from step `bad_from` on."""

    def __init__(self, inner, bad_from: int):
        self.inner, self.bad_from, self.steps = inner, bad_from, 0
        self.nets = inner.nets

    def train_step(self, x, y):
        self.steps += 1
        out = self.inner.train_step(x, y)
        if self.steps >= self.bad_from:
            out["loss"] = torch.tensor(float("nan"))
        return out

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_fit_nan_loss_raises_and_keeps_last_good_checkpoint(small_set, tmp_path):
    checkpoint = tmp_path / "ck.pt"
    trainee = NanInEpoch(build("vae"), bad_from=3)  # 128 images / 64 = 2 steps: NaN in epoch 2
    with pytest.raises(TrainingDiverged, match="epoch 2") as err:
        run_fit(trainee, small_set, 3, checkpoint)
    assert "kept" in str(err.value)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
