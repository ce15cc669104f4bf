"""Our DDPM against Hugging Face diffusers, in one process, on one device: training images/s and
DDIM-50 sampling images/s, and their ratio (ours / diffusers).

    python -m benchmarks.diffusion [--profile quick|full] [--device auto|cpu|cuda]

Both sides get the same work: 28x28x1 images in [-1, 1], the family's batch size, a linear beta
schedule over the same T, AdamW (fused, no weight decay) at the same learning rate, gradient
clipping and an EMA update of the weights on every training step, DDIM with eta = 0 on 50 evenly
spaced timesteps with x0 clipped to [-1, 1]. diffusers' UNet2DModel is sized to our U-Net's
parameter count (within 10 %): same number of levels, channel ratios and ResNet blocks per level,
attention at the lowest resolution, base width searched. For `patch: 2` (the quick profile, whose
U-Net runs on 14x14x4 pixel-unshuffled images) diffusers' U-Net gets the same pixel
unshuffle/shuffle around it, so both do the same arithmetic per image. `precision: bf16` runs
both under the same bfloat16 autocast. Timing alternates ours and theirs in rounds and reports
the median, so that drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from torch import nn

from trilemma import families
from trilemma.config import PROFILES, parse_params
from trilemma.denoising import DiffusionConfig
from trilemma.ema import EMA
from trilemma.runtime import autocast, device_name, resolve_device, set_precision
from trilemma.train import adam

DDIM_STEPS = 50


class Patched(nn.Module):
    """A diffusers UNet2DModel on pixel-unshuffled images: (B,1,28,28) in and out."""

    def __init__(self, unet: nn.Module, patch: int):
        super().__init__()
        self.unet = unet
        self.unshuffle, self.shuffle = nn.PixelUnshuffle(patch), nn.PixelShuffle(patch)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.unet(self.unshuffle(x), t).sample)


def parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def diffusers_unet(cfg: DiffusionConfig, target: int) -> tuple[nn.Module, dict]:
    """UNet2DModel with our levels, channel ratios and blocks per level; the base width (a
    multiple of 8, GroupNorm of 8 groups) whose parameter count is nearest `target`."""
    from diffusers import UNet2DModel

    levels = len(cfg.widths)
    ratios = [w / cfg.widths[0] for w in cfg.widths]
    down = ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D" if cfg.attention else "DownBlock2D"]
    up = ["AttnUpBlock2D" if cfg.attention else "UpBlock2D"] + ["UpBlock2D"] * (levels - 1)
    channels = cfg.patch ** 2
    best = None
    for base in range(8, 2 * cfg.widths[0] + 9, 8):  # counts grow about with base squared
        config = dict(sample_size=28 // cfg.patch, in_channels=channels, out_channels=channels,
                      layers_per_block=cfg.blocks, block_out_channels=[round(base * r) for r in ratios],
                      down_block_types=down, up_block_types=up, norm_num_groups=8,
                      attention_head_dim=8, dropout=cfg.dropout)
        if any(c % 8 for c in config["block_out_channels"]):
            continue
        count = parameters(UNet2DModel(**config))
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (config, count)
    config, count = best
    if abs(count - target) > 0.1 * target:
        raise SystemExit(f"error: no diffusers U-Net within 10 % of {target} parameters "
                         f"(nearest {count})")
    unet = UNet2DModel(**config)
    return (Patched(unet, cfg.patch) if cfg.patch > 1 else _Plain(unet)), config


class _Plain(nn.Module):
    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


class Theirs:
    """diffusers' training step and DDIM loop around the matched U-Net."""

    def __init__(self, cfg: DiffusionConfig, net: nn.Module, device: torch.device):
        from diffusers import DDIMScheduler, DDPMScheduler

        scale = 1000 / cfg.timesteps  # our linear schedule's ends for T != 1000
        schedule = dict(num_train_timesteps=cfg.timesteps, beta_start=scale * 1e-4,
                        beta_end=scale * 0.02, beta_schedule="linear", clip_sample=True)
        self.cfg, self.device = cfg, device
        self.train_scheduler = DDPMScheduler(**schedule)
        self.sampler = DDIMScheduler(**schedule, timestep_spacing="linspace")
        self.net = net.to(device)
        # samples from an EMA copy without gradients in eval mode, as ours does (no dropout, and
        # under bf16 autocast its weights are cast at every call, as ours are)
        self.ema, self.steps = EMA(self.net, cfg.ema_decay), 0
        self.opt = adam(self.net.parameters(), cfg.lr)

    def train_step(self, x: torch.Tensor) -> None:
        x0 = x * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.cfg.timesteps, (len(x0),), device=self.device)
        loss = nn.functional.mse_loss(self.net(self.train_scheduler.add_noise(x0, noise, t), t),
                                      noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.ema.update(self.net, self.steps)
        self.steps += 1

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, steps: int = DDIM_STEPS) -> torch.Tensor:
        self.sampler.set_timesteps(steps)
        x = torch.randn(n, 1, 28, 28, generator=generator).to(self.device)
        for t in self.sampler.timesteps:
            eps = self.ema.net(x, t.to(self.device).expand(n))
            x = self.sampler.step(eps, t, x, eta=0.0).prev_sample
        return x


def flops_per_image(net: nn.Module, device: torch.device) -> dict[str, float]:
    """Forward and training (forward + backward) FLOPs per 28x28 image, as torch counts them
    (convolutions, matrix products, attention), in training mode; measured on a batch of 2.
    Leaves no trace: gradients dropped, mode and random state restored."""
    from torch.utils.flop_counter import FlopCounterMode

    t = torch.tensor([0, 1], device=device)
    counts, was_training = {}, net.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(2, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
        net.train()  # eval mode may take fused attention paths the counter does not see
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x, t)
        counts["forward"] = counter.get_total_flops() / 2
        with FlopCounterMode(display=False) as counter:
            net(x, t).square().mean().backward()
        counts["train"] = counter.get_total_flops() / 2
    net.train(was_training)
    for p in net.parameters():
        p.grad = None
    return counts


def matmul_rate(device: torch.device, precision: str) -> float:
    """The device's matrix-product rate in FLOP/s at `precision` (2048^2 on a CPU, 8192^2 on a
    GPU; the best of 3 runs of 5 products): about the most a convolution-bound network reaches."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    return max(2 * n ** 3 * 5 / timed(lambda: [a @ b for _ in range(5)], device)
               for _ in range(3))


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def run(cfg: DiffusionConfig, device: torch.device, *, train_steps: int = 20, warmup: int = 3,
        sample_batch: int = 128, repeats: int = 3, batch: int | None = None,
        log=print) -> dict:
    """Throughputs of both sides (the median over `repeats` alternating rounds) and the ratios."""
    torch.manual_seed(0)
    set_precision(cfg.precision)
    batch = batch or cfg.batch_size
    steps = min(DDIM_STEPS, cfg.timesteps)
    ours = families.build("ddpm", cfg, device)
    theirs_net, theirs_config = diffusers_unet(cfg, parameters(ours.net))
    theirs = Theirs(cfg, theirs_net, device)
    flops = {"ours": flops_per_image(ours.net, device),
             "diffusers": flops_per_image(theirs.net, device)}
    x = torch.rand(batch, 1, 28, 28, device=device)  # images in [0, 1], as the loop gives them
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def autocast_per_call(fn):
        """fn under the precision's autocast, entered per call as the pipeline does (one training
        step; one sampling run): autocast's cast weights live only that long."""
        def call():
            with autocast(cfg.precision, device):
                fn()
        return call

    sides = {
        "ours": (lambda: ours.train_step(x, y),
                 lambda: ours.sample(sample_batch, None, torch.Generator().manual_seed(0),
                                     steps=steps)),
        "diffusers": (lambda: theirs.train_step(x),
                      lambda: theirs.sample(sample_batch, torch.Generator().manual_seed(0), steps)),
    }
    sides = {side: tuple(map(autocast_per_call, fns)) for side, fns in sides.items()}
    rates: dict[str, dict[str, list[float]]] = {s: {"train": [], "sample": []} for s in sides}
    for side, (train, _) in sides.items():
        for _ in range(warmup):
            train()
    for side, (_, sample) in sides.items():
        sample()  # warm-up: kernels, lazy initialisation
    peak = matmul_rate(device, cfg.precision)
    for round_ in range(1, repeats + 1):
        for side, (train, sample) in sides.items():
            seconds = timed(lambda: [train() for _ in range(train_steps)], device)
            rates[side]["train"].append(train_steps * batch / seconds)
            rates[side]["sample"].append(sample_batch / timed(sample, device))
            log(f"round {round_}/{repeats} {side}: train {rates[side]['train'][-1]:.0f} "
                f"images/s, DDIM-{steps} {rates[side]['sample'][-1]:.1f} images/s")
    median = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in rates.items()}
    return {
        "params": {"ours": parameters(ours.net), "diffusers": parameters(theirs_net)},
        "flops_per_image": flops, "matmul_flops_per_s": peak,
        "diffusers_config": theirs_config, "batch": batch, "sample_batch": sample_batch,
        "train_steps": train_steps, "repeats": repeats, "ddim_steps": steps, "rounds": rates,
        "median": median,
        "ratio": {k: median["ours"][k] / median["diffusers"][k] for k in ("train", "sample")},
    }


def processor() -> str:
    """The CPU's model name, and whether it has bf16 instructions (Linux; else the platform's
    word for it)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), platform.machine())
    return f"{name} ({'with' if 'avx512_bf16' in info else 'no'} AVX512-BF16)"


def markdown(result: dict) -> str:
    m, r, p, f = result["median"], result["ratio"], result["params"], result["flops_per_image"]
    peak, steps = result["matmul_flops_per_s"], result["ddim_steps"]

    def row(name: str, side: str) -> str:
        train = f[side]["train"] * m[side]["train"] / 1e9  # achieved GFLOP/s
        sample = f[side]["forward"] * steps * m[side]["sample"] / 1e9
        return (f"| {name} | {p[side]:,} | {f[side]['forward'] / 1e6:.1f} / "
                f"{f[side]['train'] / 1e6:.1f} | "
                f"{m[side]['train']:.1f} | {m[side]['sample']:.2f} | "
                f"{train:.0f} ({train * 1e9 / peak:.0%}) | {sample:.0f} ({sample * 1e9 / peak:.0%}) |")

    return "\n".join([
        f"# DDPM benchmark: trilemma against diffusers ({result['profile']} profile)", "",
        f"{result['device']}, {result['processor']} · torch {result['torch']} · "
        f"diffusers {result['diffusers']} · "
        f"precision {result['precision']} · {result['date']}", "",
        f"`{result['command']}`", "",
        f"| model | parameters | MFLOP per image, forward / training | training images/s | "
        f"DDIM-{steps} images/s | training GFLOP/s (of matmul rate) | DDIM GFLOP/s (of matmul "
        "rate) |",
        "|---|---|---|---|---|---|---|",
        row("trilemma U-Net", "ours"), row("diffusers UNet2DModel", "diffusers"),
        f"| **ratio ours / diffusers** | | | **{r['train']:.2f}x** | **{r['sample']:.2f}x** | | |",
        "",
        f"Batch {result['batch']} for training ({result['train_steps']} steps per round), "
        f"{result['sample_batch']} images per DDIM run; median of {result['repeats']} "
        f"alternating rounds. FLOPs as torch's FlopCounterMode counts them (training: forward "
        f"and backward); the matmul rate is this device's measured matrix-product rate at "
        f"{result['precision']}, {peak / 1e9:.0f} GFLOP/s. Ours runs channels_last, diffusers "
        f"its default layout. diffusers config: `{json.dumps(result['diffusers_config'])}`.",
        ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="the params file's profile if not given")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default=None,
                        help="the family's `precision` if not given (on a CPU, bf16 pays only "
                             "with bf16 instructions and large convolutions: README, Speed)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    import diffusers

    raw = yaml.safe_load(args.params.read_text())
    raw["profile"] = args.profile or raw.get("profile", "quick")
    cfg = families.config(parse_params(raw, str(args.params)), "ddpm")
    if args.precision:
        cfg = cfg.model_copy(update={"precision": args.precision})
    device = resolve_device(args.device)
    print(f"ddpm, {raw['profile']} profile, on {device_name(device)}", flush=True)
    result = run(cfg, device, train_steps=args.train_steps, warmup=args.warmup,
                 sample_batch=args.sample_batch, repeats=args.repeats,
                 log=lambda line: print(line, flush=True))
    result.update(profile=raw["profile"], device=device_name(device), processor=processor(),
                  torch=torch.__version__,
                  diffusers=diffusers.__version__, python=platform.python_version(),
                  precision=cfg.precision, date=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                  command=" ".join(["python -m benchmarks.diffusion",
                                    *(sys.argv[1:] if argv is None else argv)]))
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    from benchmarks.stages import slug

    stem = args.out / f"diffusion-{slug(result['device'])}-{raw['profile']}-{cfg.precision}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
