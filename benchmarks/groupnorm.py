"""The U-Net's GroupNorm at sampling time: PyTorch's channels_last CPU kernel against the
per-channel-sums path of `trilemma.nets.unet.GroupNorm`, on every GroupNorm shape the DDPM U-Net
of a profile meets while sampling a batch.

    python -m benchmarks.groupnorm [--profile quick|full] [--batch 128] [--repeats 5]

Shapes come from forward hooks on the family's real U-Net; each is timed in alternating rounds
(median). The path column says which one `GroupNorm` takes for that shape.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from trilemma import families
from trilemma.config import PROFILES, parse_params
from trilemma.nets.unet import GroupNorm
from trilemma.runtime import device_name


def shapes(profile: str, params: Path, batch: int) -> list[tuple[int, ...]]:
    """Distinct (N, C, H, W) the ddpm U-Net's GroupNorms see in one sampling forward."""
    raw = yaml.safe_load(params.read_text())
    raw["profile"] = profile
    cfg = families.config(parse_params(raw, str(params)), "ddpm")
    net = families.build("ddpm", cfg, torch.device("cpu")).ema
    seen: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
             for m in net.modules() if isinstance(m, GroupNorm)]
    with torch.no_grad():
        x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        net(x, torch.zeros(batch, dtype=torch.long))
    for hook in hooks:
        hook.remove()
    return sorted(set(seen), key=seen.index)


def seconds(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--batch", type=int, default=128, help="images per sampling batch")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    rows = ["| N, C, H, W | channels per group | PyTorch µs | channel sums µs | speed-up | path |",
            "|---|---|---|---|---|---|"]
    with torch.no_grad():
        for shape in shapes(args.profile, args.params, args.batch):
            norm = GroupNorm(8, shape[1])
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            calls = max(3, int(2e7 // x.numel()))
            sides = {"torch": lambda: F.group_norm(x, 8, norm.weight, norm.bias, norm.eps),
                     "sums": lambda: norm._by_channel_sums(x)}
            times: dict[str, list[float]] = {side: [] for side in sides}
            for fn in sides.values():
                fn()  # warm-up
            for _ in range(args.repeats):
                for side, fn in sides.items():
                    times[side].append(seconds(fn, calls))
            ours, theirs = (statistics.median(times[s]) for s in ("sums", "torch"))
            path = "channel sums" if norm._sums_are_faster(x) else "PyTorch"
            rows.append(f"| {', '.join(map(str, shape))} | {shape[1] // 8} | {theirs * 1e6:.0f} "
                        f"| {ours * 1e6:.0f} | {theirs / ours:.2f}x | {path} |")
            print(rows[-1], flush=True)
    device = device_name(torch.device("cpu"))
    text = "\n".join([f"# GroupNorm while sampling, {args.profile} U-Net, batch {args.batch}", "",
                      f"{device} · torch {torch.__version__} · float32 channels_last · median of "
                      f"{args.repeats} alternating rounds", "",
                      f"`python -m benchmarks.groupnorm --profile {args.profile} "
                      f"--batch {args.batch} --repeats {args.repeats}`", "", *rows, ""])
    from benchmarks.stages import slug

    out = args.out / f"groupnorm-{slug(device)}-{args.profile}-batch-{args.batch}.md"
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
