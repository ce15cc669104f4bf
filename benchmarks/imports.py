"""What a stage command spends on imports before its first line of work, now and at another commit.

    python -m benchmarks.imports [--before REV] [--rounds 3] [--out benchmarks/results]

Runs `trilemma <command> --dry-run` (params read, settings printed: every import a stage needs
before it works) under `python -X importtime`, for this checkout and for REV (checked out in a
temporary git worktree), alternating, `--rounds` times each. Writes imports-<rev>-vs-<head>.md:
per command the median wall time, and for one command the top 10 packages by import time on each
side. The machine's load is printed with it: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [["train", "vae"], ["sample", "vae"], ["evaluate", "vae"], ["report"]]
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def run(repo: Path, command: list[str]) -> tuple[float, str]:
    """(wall seconds, importtime's stderr) of one command run in `repo`, with its code and params."""
    env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{repo}"}
    code = "import sys; from pipeline.cli import main; sys.argv[0] = 'trilemma'; main()"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *command,
                           "--dry-run"], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed at {repo}: "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return wall, done.stderr


def top_packages(importtime: str, n: int = 10) -> list[tuple[str, float]]:
    """The n distributions (root package names) whose modules took the most import time, in
    seconds: each module's own time summed by its root package, so torch counts everything under
    torch whoever imported it."""
    totals: dict[str, float] = {}
    for self_us, _cumulative_us, _indent, name in LINE.findall(importtime):
        package = name.split(".")[0]
        totals[package] = totals.get(package, 0.0) + int(self_us) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:n]


def short_rev(rev: str, repo: Path = ROOT) -> str:
    return subprocess.run(["git", "rev-parse", "--short=7", rev], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="944e0cc", help="the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    before, head = short_rev(args.before), short_rev("HEAD")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), before], cwd=ROOT,
                       check=True)
        try:
            walls: dict[tuple[str, str], list[float]] = {}
            traces: dict[str, str] = {}
            for _ in range(args.rounds):
                for command in COMMANDS:
                    for side, repo in ((before, old), (head, ROOT)):
                        wall, trace = run(repo, command)
                        walls.setdefault((side, " ".join(command)), []).append(wall)
                        if command == COMMANDS[0]:
                            traces[side] = trace
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT)
    load = os.getloadavg()[0]
    lines = [f"# Stage start-up: {before} against {head}", "",
             f"`trilemma <command> --dry-run`, median of {args.rounds} alternating rounds; "
             f"{os.cpu_count()} CPUs, load average {load:.1f} at the end.", "",
             f"| command | {before} s | {head} s |", "|---|---|---|"]
    for command in COMMANDS:
        name = " ".join(command)
        lines.append(f"| `{name}` | {statistics.median(walls[(before, name)]):.2f} | "
                     f"{statistics.median(walls[(head, name)]):.2f} |")
    first = " ".join(COMMANDS[0])
    for side in (before, head):
        lines += ["", f"Top 10 packages by import time (own time of all their modules), `{first}` at {side}:", "",
                  "| package | s |", "|---|---|"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in top_packages(traces[side])]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"imports-{before}-vs-{head}.md"
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
