"""The diffusers benchmark on tiny settings: it compares like with like (parameter count, schedule,
DDIM timesteps) and writes what it measured. Its speed numbers are the benchmark's business, not a
test's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import diffusion as bench
from conftest import ROOT, write_params
from trilemma import diffusion, families
from trilemma.config import load_params

CPU = torch.device("cpu")
TINY = {"ddpm.widths": [8, 16], "ddpm.timesteps": 20, "ddpm.patch": 2, "ddpm.dropout": 0.0}


def theirs_for(cfg) -> bench.Theirs:
    ours = bench.parameters(families.build("ddpm", cfg, CPU).net)
    return bench.Theirs(cfg, bench.diffusers_unet(cfg, ours)[0], CPU)


@pytest.fixture
def tiny_cfg(tmp_path):
    return families.config(load_params(write_params(tmp_path / "params.yaml", TINY)), "ddpm")


@pytest.mark.parametrize("profile_cfg", ["tiny", "quick"])
def test_diffusers_unet_is_sized_to_ours_within_ten_percent(tmp_path, tiny_cfg, profile_cfg):
    from pathlib import Path

    cfg = tiny_cfg if profile_cfg == "tiny" else \
        families.config(load_params(Path(__file__).resolve().parents[1] / "params.yaml"), "ddpm")
    ours = bench.parameters(families.build("ddpm", cfg, CPU).net)
    net, config = bench.diffusers_unet(cfg, ours)
    assert abs(bench.parameters(net) - ours) <= 0.1 * ours
    assert len(config["block_out_channels"]) == len(cfg.widths)
    assert config["in_channels"] == cfg.patch ** 2 and config["sample_size"] == 28 // cfg.patch
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.tensor([0, 5])).shape == x.shape  # 28x28x1 in and out, like ours


@pytest.mark.parametrize("timesteps", [20, 1000])
def test_diffusers_schedule_and_ddim_timesteps_are_ours(tiny_cfg, timesteps):
    cfg = tiny_cfg.model_copy(update={"timesteps": timesteps})
    theirs = theirs_for(cfg)
    ours = diffusion.alpha_bars(diffusion.linear_betas(timesteps))
    # atol: at T = 20 the last beta is 1.0 there, 0.999 here (alpha_bar 0 against 3.5e-8)
    np.testing.assert_allclose(theirs.train_scheduler.alphas_cumprod.double(), ours, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(theirs.sampler.alphas_cumprod.double(), ours, rtol=1e-5, atol=1e-6)
    steps = min(bench.DDIM_STEPS, timesteps)
    theirs.sampler.set_timesteps(steps)
    assert theirs.sampler.timesteps.tolist() == diffusion.timesteps(timesteps, steps)


def test_run_measures_both_sides_and_their_ratio(tiny_cfg):
    result = bench.run(tiny_cfg, CPU, train_steps=1, warmup=1, sample_batch=2, repeats=2,
                       batch=4, log=lambda line: None)
    for side in ("ours", "diffusers"):
        for kind in ("train", "sample"):
            rates = result["rounds"][side][kind]
            assert len(rates) == 2 and all(math.isfinite(r) and r > 0 for r in rates)
            assert result["median"][side][kind] == pytest.approx(float(np.median(rates)))
    for kind in ("train", "sample"):
        assert result["ratio"][kind] == pytest.approx(
            result["median"]["ours"][kind] / result["median"]["diffusers"][kind])
    assert abs(result["params"]["diffusers"] - result["params"]["ours"]) <= \
        0.1 * result["params"]["ours"]
    assert result["ddim_steps"] == 20  # DDIM-50 needs T >= 50: the tiny T of 20 caps it


def test_diffusers_sampling_loop_gives_finite_images_in_range(tiny_cfg):
    theirs = theirs_for(tiny_cfg)
    images = theirs.sample(3, torch.Generator().manual_seed(0), steps=5)
    assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
    assert images.abs().max() <= 1 + 1e-5  # x0 clipped to the data range, as ours


def test_diffusers_samples_its_ema_copy_without_dropout(tiny_cfg):
    theirs = theirs_for(tiny_cfg.model_copy(update={"dropout": 0.5}))
    first, again = (theirs.sample(2, torch.Generator().manual_seed(0), steps=3) for _ in range(2))
    assert torch.equal(first, again)  # eval mode: dropout would draw other masks
    assert not theirs.ema.net.training and theirs.net.training
    assert not any(p.requires_grad for p in theirs.ema.net.parameters())
    before = [p.clone() for p in theirs.ema.net.parameters()]
    theirs.train_step(torch.rand(4, 1, 28, 28))
    assert any(not torch.equal(a, b) for a, b in zip(before, theirs.ema.net.parameters()))


class OneConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def test_flops_per_image_are_exact_for_one_convolution_and_leave_no_trace():
    net = OneConv().eval()
    state = torch.random.get_rng_state()
    flops = bench.flops_per_image(net, CPU)
    assert flops["forward"] == 2 * 28 * 28 * 6 * 1 * 9  # multiply-adds per output, per image
    assert flops["train"] == 2 * flops["forward"]  # + the weight gradient (x needs none)
    assert not net.training and all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)


def test_flops_of_the_two_unets_agree_with_their_sizes(tiny_cfg):
    ours = families.build("ddpm", tiny_cfg, CPU).net
    mine, theirs = (bench.flops_per_image(net, CPU)
                    for net in (ours, bench.diffusers_unet(tiny_cfg, bench.parameters(ours))[0]))
    assert 2.5 * mine["forward"] < mine["train"] < 3.5 * mine["forward"]  # backward: ~2x
    assert abs(theirs["forward"] - mine["forward"]) < 0.25 * mine["forward"]


def test_markdown_gives_achieved_flops_as_a_share_of_the_matmul_rate():
    side = {"train": 10.0, "sample": 2.0}
    result = {"median": {"ours": side, "diffusers": side}, "ratio": {"train": 1.0, "sample": 1.0},
              "params": {"ours": 100, "diffusers": 100}, "matmul_flops_per_s": 1e11,
              "flops_per_image": {s: {"forward": 1e9, "train": 3e9} for s in ("ours", "diffusers")},
              "ddim_steps": 5, "profile": "quick", "device": "cpu (2 threads)",
              "processor": "x", "torch": "t", "diffusers": "d", "precision": "fp32", "date": "now",
              "command": "c", "batch": 4, "sample_batch": 2, "train_steps": 1, "repeats": 1,
              "diffusers_config": {}}
    text = bench.markdown(result)
    assert "| 1000.0 / 3000.0 | 10.0 | 2.00 | 30 (30%) | 10 (10%) |" in text  # 3e9 x 10; 1e9 x 5 x 2
    assert "100 GFLOP/s" in text


def test_main_writes_json_and_markdown_naming_the_device(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml", TINY)
    out = tmp_path / "results"
    assert bench.main(["--params", str(params), "--device", "cpu", "--train-steps", "1",
                       "--warmup", "1", "--sample-batch", "2", "--repeats", "1",
                       "--out", str(out)]) == 0
    (json_file,) = out.glob("diffusion-cpu-*-quick-fp32.json")
    result = json.loads(json_file.read_text())
    assert result["device"].startswith("cpu") and result["profile"] == "quick"
    assert result["diffusers"] and result["torch"] == torch.__version__
    text = json_file.with_suffix(".md").read_text()
    assert "ratio ours / diffusers" in text and result["device"] in text
    assert f"{result['ratio']['train']:.2f}x" in text
    assert result["matmul_flops_per_s"] > 0 and "of matmul rate" in text
    assert result["processor"] in text
    assert "wrote" in capsys.readouterr().out


def test_gpu_smoke_params_are_the_full_profile_cut_short_and_valid(tmp_path):
    """What `benchmarks/device_check.sh smoke` runs with must pass the stages' own validation:
    a GPU machine's minutes are too few to find a bad key there."""
    from benchmarks import gpu_smoke
    from trilemma.train import planned_steps

    out = tmp_path / "gpu.yaml"
    assert gpu_smoke.main(["--params", str(ROOT / "params.yaml"), "--out", str(out)]) == 0
    p = load_params(out)
    assert p.profile == "full" and p.families == ["ddpm"] and p.i2i_families == []
    ddpm = families.config(p, "ddpm")
    assert ddpm.widths == [64, 128, 128] and ddpm.prediction == "eps"  # the full U-Net, as is
    assert planned_steps(ddpm, 60_000) == 1500
    assert p.sample.n == 2000 and p.sample.steps_sweep == [10, 100] and p.data.offline
