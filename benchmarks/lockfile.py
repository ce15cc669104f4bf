"""What DVC spends on dvc.lock after every stage it runs.

    python -m benchmarks.lockfile [--lock dvc.lock] [--rounds 5] [--out benchmarks/results]

After each stage `dvc repro` reads and rewrites the whole lock file in ruamel.yaml's round-trip
mode (it keeps the file's layout; that mode has no C parser). This times DVC's own rewrite
(`dvc.utils.serialize.modify_yaml`, one value changed) on a temporary copy of the lock, and on
a copy in which every stage's deps under src/ are one directory entry: what coarser code deps
would save per stage, at the price of rerunning every stage that lists src/ after any code
change. Writes lockfile.md with the machine's load: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

SOURCE = "src/"


def _is_source(dep: dict) -> bool:
    return dep["path"] == SOURCE.rstrip("/") or dep["path"].startswith(SOURCE)


def rewrite_seconds(lock: Path, rounds: int) -> list[float]:
    """Seconds of each of `rounds` rewrites of `lock` (a copy: the file itself is not touched)."""
    from dvc.utils.serialize import modify_yaml

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "dvc.lock"
        shutil.copyfile(lock, copy)
        seconds = []
        for _ in range(rounds):
            started = time.perf_counter()
            with modify_yaml(copy) as data:  # what DVC does after a stage, one value changed
                data["schema"] = data.get("schema", "2.0")
            seconds.append(time.perf_counter() - started)
        return seconds


def with_source_as_one_dep(lock: dict) -> dict:
    """`lock` with each stage's deps under src/ replaced by one directory entry (as DVC records a
    directory: md5 of its listing, size, nfiles)."""
    stages = {}
    for name, stage in lock["stages"].items():
        deps = stage.get("deps", [])
        code = [d for d in deps if _is_source(d)]
        kept = [d for d in deps if not _is_source(d)]
        if code:
            kept.append({"path": SOURCE.rstrip("/"), "hash": "md5",
                         "md5": "0" * 32 + ".dir", "size": sum(d.get("size", 0) for d in code),
                         "nfiles": len(code)})
        stages[name] = {**stage, "deps": kept}
    return {**lock, "stages": stages}


def describe(lock: dict, text: str) -> dict:
    deps = [d for stage in lock["stages"].values() for d in stage.get("deps", [])]
    return {"stages": len(lock["stages"]), "bytes": len(text.encode()),
            "lines": text.count("\n"), "deps": len(deps),
            "source_deps": sum(_is_source(d) for d in deps)}


def markdown(rows: list[tuple[str, dict, list[float]]], lock: Path, rounds: int) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["# DVC's rewrite of dvc.lock after each stage", "",
             f"`python -m benchmarks.lockfile --lock {lock} --rounds {rounds}` · "
             f"{os.cpu_count()} CPUs · load average {load} · "
             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC", "",
             "| lock file | stages | lines | kB | deps (under src/) | rewrite s, median | min–max |",
             "|---|---|---|---|---|---|---|"]
    for label, facts, seconds in rows:
        lines.append(f"| {label} | {facts['stages']} | {facts['lines']:,} | "
                     f"{facts['bytes'] / 1000:.0f} | {facts['deps']:,} ({facts['source_deps']:,}) | "
                     f"{statistics.median(seconds):.2f} | {min(seconds):.2f}–{max(seconds):.2f} |")
    lines += ["", "`dvc repro` pays one rewrite per stage it runs; a forced run of every stage pays "
              "one per stage."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if not args.lock.is_file():
        print(f"error: {args.lock}: no such lock file (run it where `dvc repro` has run)",
              file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    text = args.lock.read_text()
    lock = yaml.safe_load(text)
    coarse = with_source_as_one_dep(lock)
    with tempfile.TemporaryDirectory() as tmp:
        coarse_path = Path(tmp) / "dvc.lock"
        coarse_text = yaml.safe_dump(coarse, sort_keys=False)
        coarse_path.write_text(coarse_text)
        rows = [("as it is", describe(lock, text), rewrite_seconds(args.lock, args.rounds)),
                ("src/ deps as one directory", describe(coarse, coarse_text),
                 rewrite_seconds(coarse_path, args.rounds))]
    report = markdown(rows, args.lock, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lockfile.md").write_text(report)
    print(report, end="")
    print(f"wrote {args.out / 'lockfile.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
