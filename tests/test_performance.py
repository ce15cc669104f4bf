"""The speed settings of the training loop and the stages, checked for what they do (never for how
fast: that is `benchmarks/`): precision, compile, fused optimiser, channels_last, peak memory,
MLflow off the critical path, and the stage log with its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import stages as stage_table
from trilemma import families, tracking
from trilemma.config import TrainConfig, load_params
from trilemma.runtime import BusySampler, autocast, peak_memory, set_precision
from trilemma.train import adam, fit

CPU = torch.device("cpu")


class Recorder:
    """A trainee that records the autocast state and input layout of each step, and learns a
    little (so a compiled net really runs forward and backward)."""

    def __init__(self):
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 28 * 28, 10))
        self.nets = {"net": self.net}
        self.opt = adam(self.net.parameters(), 1e-3)
        self.seen: list[tuple[bool, torch.dtype, bool]] = []

    def train_step(self, x, y):
        logits = self.net(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), logits.dtype,
                          x.is_contiguous(memory_format=torch.channels_last)))
        loss = nn.functional.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def state_dict(self):
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])


def run_fit(tmp_path: Path, trainee, **cfg) -> list[dict]:
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, **cfg)
    return fit(trainee, x, y, config, name="t", device=CPU, seed=0,
               checkpoint=tmp_path / "ckpt.pt", fingerprint="f")


@pytest.mark.parametrize("precision, autocast_on, dtype", [
    ("fp32", False, torch.float32), ("tf32", False, torch.float32),
    ("bf16", True, torch.bfloat16)])
def test_precision_decides_whether_steps_run_under_bf16_autocast(tmp_path, precision,
                                                                 autocast_on, dtype):
    trainee = Recorder()
    history = run_fit(tmp_path, trainee, precision=precision)
    assert len(trainee.seen) == 4  # 64 images, batches of 16
    assert all(seen[:2] == (autocast_on, dtype) for seen in trainee.seen)
    assert torch.isfinite(torch.tensor(history[0]["loss"]))


def test_batches_reach_the_step_in_channels_last_layout(tmp_path):
    trainee = Recorder()
    run_fit(tmp_path, trainee)
    assert all(seen[2] for seen in trainee.seen)


def test_set_precision_switches_tensor_float_32_on_and_off():
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    try:
        set_precision("tf32")
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        set_precision("bf16")  # bf16 keeps the remaining float32 work on TF32 too
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        set_precision("fp32")
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def test_autocast_is_off_unless_bf16():
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("tf32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", CPU):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_compile_runs_every_net_compiled_and_keeps_plain_state_dict_keys(tmp_path, monkeypatch):
    """Real torch.compile tracing, with the eager backend: inductor's C++ build takes ~30 s on a
    CPU, which the benchmark, not a unit test, should pay."""
    compiled = []
    real_compile = nn.Module.compile

    def eager_compile(module, *args, **kwargs):
        compiled.append(module)
        real_compile(module, backend="eager")

    monkeypatch.setattr(nn.Module, "compile", eager_compile)
    trainee = Recorder()
    keys = list(trainee.net.state_dict())
    history = run_fit(tmp_path, trainee, compile=True)
    assert compiled == [trainee.net]
    assert trainee.net._compiled_call_impl is not None  # calls go through the compiled forward
    assert list(trainee.net.state_dict()) == keys  # checkpoints load into a plain module
    assert torch.isfinite(torch.tensor(history[0]["loss"]))


def test_every_optimiser_is_fused_adamw():
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for name in ("vae", "mlp_gan", "dcgan", "ddpm"):
        model = families.build(name, families.config(p, name), CPU)
        optimisers = [v for v in vars(model).values() if isinstance(v, torch.optim.Optimizer)]
        assert optimisers, name
        for opt in optimisers:
            assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"], name
    opt = adam([nn.Parameter(torch.zeros(3))], 0.1)
    assert opt.defaults["weight_decay"] == 0.0  # Adam itself: AdamW's default would decay


@pytest.mark.parametrize("name", ["vae", "dcgan", "ddpm"])
def test_convolutional_families_keep_weights_channels_last(name):
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    model = families.build(name, families.config(p, name), CPU)
    convs = [m for net in model.nets.values() for m in net.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.weight.shape[1] > 1
             and m.weight.shape[0] > 1]
    assert convs
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)


def test_peak_memory_reports_process_rss_and_no_gpu_figure_on_cpu():
    before = peak_memory(CPU)
    block = torch.ones(64 * 2 ** 20, dtype=torch.uint8)  # 64 MiB, touched
    after = peak_memory(CPU)
    assert before["peak_gpu_memory_gib"] is None and after["peak_gpu_memory_gib"] is None
    assert after["peak_rss_gib"] >= before["peak_rss_gib"] > 0.01
    del block


def test_busy_sampler_averages_readings_while_the_block_runs():
    import time

    readings = iter([90.0, 70.0, 80.0] + [80.0] * 1000)
    with BusySampler(torch.device("cuda"), period=0.01, read=lambda: next(readings)) as busy:
        time.sleep(0.2)
    n = len(busy.samples)
    assert n >= 3 and busy.samples[:3] == [90.0, 70.0, 80.0]
    summary = busy.summary()
    assert summary["gpu_busy_samples"] == n
    assert summary["gpu_busy_percent"] == pytest.approx(sum(busy.samples) / n, abs=0.05)
    assert len(busy.samples) == n  # stopped with the block


def test_busy_sampler_records_nothing_off_the_gpu_or_without_nvml():
    import time

    with BusySampler(CPU, period=0.01) as cpu:
        time.sleep(0.05)
    assert cpu.summary() == {"gpu_busy_percent": None, "gpu_busy_samples": 0}

    def broken():
        raise RuntimeError("NVML Shared Library Not Found")

    with BusySampler(torch.device("cuda"), period=0.01, read=broken) as no_nvml:
        time.sleep(0.05)
    assert no_nvml.summary() == {"gpu_busy_percent": None, "gpu_busy_samples": 0}


def test_mlflow_artifacts_are_logged_as_they_were_when_logged(tiny_repo):
    """Calls are logged by a tracker after the stage: a file rewritten right after log_artifact
    (the training grid, every epoch) must still be logged with its content at the time of the
    call."""
    path = tiny_repo / "grid.txt"
    path.write_text("epoch 1")
    with tracking.stage_run("train", "vae", "quick") as run:
        run.log_artifact(path, "epoch_1")
        path.write_text("epoch 2")
        run.log_artifact(path, "epoch_2")
        run.log_metrics({"loss": 1.5}, step=1)
    tracking.wait_for_trackers()
    logged = sorted((tiny_repo / "mlartifacts").rglob("grid.txt"))
    assert [p.parent.name for p in logged] == ["epoch_1", "epoch_2"]
    assert [p.read_text() for p in logged] == ["epoch 1", "epoch 2"]


def test_a_failing_stage_ends_its_run_failed_after_its_calls(tiny_repo):
    import mlflow

    with pytest.raises(RuntimeError):
        with tracking.stage_run("sample", "vae", "quick") as run:
            run.log_metrics({"samples_per_second": 3.0})
            raise RuntimeError("boom")
    tracking.wait_for_trackers()
    mlflow.set_tracking_uri(f"sqlite:///{tiny_repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["trilemma"], output_format="list")
    (found,) = [r for r in runs if r.info.run_name == "sample:vae"]
    assert found.info.status == "FAILED"
    assert found.data.metrics == {"samples_per_second": 3.0}
    (parent,) = [r for r in runs if r.info.run_id == found.data.tags["mlflow.parentRunId"]]
    assert parent.info.status == "FAILED"  # the pipeline run shows its latest stage failed


def entry(stage, family, started, wall, status="ok", profile="quick", startup=3.0, gpu=None,
          device="cpu (2 threads)"):
    return {"stage": stage, "family": family, "profile": profile, "device": device,
            "status": status, "started": f"2026-01-01T00:00:{started:02d}+00:00",
            "wall_seconds": wall, "startup_seconds": startup, "peak_gpu_memory_gib": gpu,
            "peak_rss_gib": 1.0 if device else None}


def test_stage_table_takes_the_latest_successful_run_of_each_stage(tmp_path):
    log = tmp_path / "stages.jsonl"
    entries = [entry("download", None, 0, 0.5, device=None),  # no torch: no device, no memory
               entry("train-classifier", None, 0, 5.0),
               entry("train", "vae", 5, 9.0),  # superseded by the rerun below
               entry("train", "vae", 20, 4.0, gpu=1.25),
               entry("sample", "vae", 25, 2.0),
               entry("evaluate", "vae", 27, 99.0, status="error"),  # failed: not counted
               entry("evaluate", "vae", 30, 3.0),
               entry("report", None, 40, 1.0),
               entry("generate", "vae", 59, 1.0),  # by hand, not a stage: not counted
               entry("train", "vae", 50, 7.0, profile="full")]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert stage_table.main(["--log", str(log), "--out", str(tmp_path / "out")]) == 0
    quick = (tmp_path / "out" / "stages-quick-cpu-2-threads.md").read_text()
    assert "| vae | 4.0 | 2.0 | 3.0 | 9.0 | 9.0 | 1.25 |" in quick
    assert "| **all stages** | – | – | – | 15.5 | 18.0 | 1.25 |" in quick  # start-up 3.0 each
    assert "stages on cpu (2 threads)\n" in quick  # the stage without a device adds none
    assert "(41 s," in quick  # span: 00:00:00 to the report's end at 00:00:41
    full = (tmp_path / "out" / "stages-full-cpu-2-threads.md").read_text()
    assert "| vae | 7.0 | – | – | 7.0 |" in full


def test_stage_table_without_a_log_exits_2(tmp_path, capsys):
    assert stage_table.main(["--log", str(tmp_path / "absent.jsonl")]) == 2
    assert "not found" in capsys.readouterr().out


def test_stage_table_without_a_pipeline_exits_2(tmp_path, capsys):
    log = tmp_path / "stages.jsonl"
    log.write_text(json.dumps(entry("report", None, 0, 1.0)) + "\n")
    assert stage_table.main(["--log", str(log), "--dvc-yaml", str(tmp_path / "absent.yaml"),
                             "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().out.startswith(f"error: {tmp_path / 'absent.yaml'}")
