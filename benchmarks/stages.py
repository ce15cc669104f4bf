"""Per-stage wall times of the pipeline, from the stage log every `trilemma` command appends to.

    python -m benchmarks.stages [--log logs/stages.jsonl] [--out benchmarks/results]

For each profile in the log, the latest successful run of every (stage, family) that dvc.yaml
defines is taken (commands a user runs by hand, such as `generate`, are left out): after a `dvc
repro` (or `trilemma repro -f`) that is the pipeline as it last ran. Prints one table per profile
and writes it to <out>/stages-<profile>-<device>.md. Wall time runs from the command's start (its
imports included) to its end; DVC's own work between stages is in the span, not in any stage.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from pipeline.common import STAGE_LOG
from trilemma.stage_log import Runs, latest_runs, read, stage_name, totals

PER_FAMILY = ("train", "sample", "evaluate")
SINGLE = ("download", "train-classifier", "report")


def table(profile: str, runs: Runs) -> str:
    """A markdown table: a row per single stage, per family (train, sample, evaluate) and per
    other stage (train-i2i@pix2pix, control@dcgan, ...)."""
    families = sorted({f for (s, f) in runs if s in PER_FAMILY and f},
                      key=lambda f: min(runs[(s, f)]["started"] for s in PER_FAMILY
                                        if (s, f) in runs))
    lines = ["| stage | train s | sample s | evaluate s | total s | start-up s | peak GPU GiB |",
             "|---|---|---|---|---|---|---|"]

    def row(name: str, chosen: list[dict], cells: list[str]) -> None:
        total = sum(e["wall_seconds"] for e in chosen)
        startup = sum(e["startup_seconds"] for e in chosen)
        peaks = [e["peak_gpu_memory_gib"] for e in chosen if e.get("peak_gpu_memory_gib")]
        peak = f"{max(peaks):.2f}" if peaks else "–"
        lines.append(f"| {name} | {' | '.join(cells)} | {total:.1f} | {startup:.1f} | {peak} |")

    order = [s for s in SINGLE[:2] if (s, None) in runs]
    for stage in order:
        row(stage, [runs[(stage, None)]], ["–"] * 3)
    for family in families:
        chosen = [runs[(s, family)] for s in PER_FAMILY if (s, family) in runs]
        cells = [f"{runs[(s, family)]['wall_seconds']:.1f}" if (s, family) in runs else "–"
                 for s in PER_FAMILY]
        row(family, chosen, cells)
    others = sorted((k for k in runs if k[0] not in PER_FAMILY and k[0] not in SINGLE),
                    key=lambda k: runs[k]["started"])  # image-to-image, referee, control
    for stage, family in others:
        row(stage_name(stage, family), [runs[(stage, family)]], ["–"] * 3)
    for stage in SINGLE[2:]:
        if (stage, None) in runs:
            row(stage, [runs[(stage, None)]], ["–"] * 3)
    every = list(runs.values())
    row("**all stages**", every, ["–"] * 3)
    t = totals(runs)
    return "\n".join([
        f"## Profile `{profile}`: {t.stages} stages on {', '.join(t.devices)}", "",
        f"First stage started {t.first_start:%Y-%m-%d %H:%M} UTC; first start to last end: "
        f"**{t.span_seconds / 60:.1f} min** ({t.span_seconds:.0f} s, DVC's own work between "
        f"stages included); stage wall times sum to {t.wall_seconds:.0f} s, of which "
        f"{t.startup_seconds:.0f} s is start-up (interpreter and imports).",
        "", *lines, ""])


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, default=STAGE_LOG, help="the stage log to read")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for stages-<profile>-<device>.md")
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"),
                        help="the pipeline whose stages are tabulated")
    args = parser.parse_args(argv)
    if not args.log.exists():
        print(f"error: {args.log}: not found; run the pipeline first (`dvc repro`)")
        return 2
    latest = latest_runs(read(args.log))
    if not latest:
        print(f"error: {args.log}: no successful stage runs in it")
        return 2
    try:
        stages = set(yaml.safe_load(args.dvc_yaml.read_text())["stages"])
    except (OSError, yaml.YAMLError, TypeError, KeyError) as err:
        print(f"error: {args.dvc_yaml}: no pipeline stages read ({type(err).__name__}); run from "
              f"the repository or pass --dvc-yaml")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for profile, every_run in sorted(latest.items()):
        runs = {key: e for key, e in every_run.items() if key[0] in stages}
        if not runs:
            continue
        text = table(profile, runs)
        path = args.out / f"stages-{profile}-{slug(totals(runs).devices[0])}.md"
        path.write_text(f"# Pipeline stage times\n\n{text}")
        print(text)
        print(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
