"""Command `repro`: `dvc repro` with independent stages side by side.

DVC runs one stage at a time, with every core; on a machine with many cores, small stages use
them poorly. This command takes DVC's own stage graph and runs every stage as `dvc repro
--single-item <stage>` (so DVC decides whether it changed, runs it and records it in dvc.lock,
as in a plain `dvc repro`), `--jobs` at a time, each as soon as the stages it depends on are
done. DVC releases its repository lock while a stage's command runs, which lets two run at once.

Every stage gets the same share of the cores, cores // jobs threads (OMP_NUM_THREADS, unless
that is set already), whatever else is running, so that a rerun gives the same results. They
equal a plain `dvc repro` with that thread count: a CPU's float sums depend on how many threads
share them, so a model trained with 1 thread and one trained with 2 differ in the last bits (and
a GAN amplifies that). The stage log records each stage's thread count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from pipeline.common import STAGE_LOG
from trilemma import stage_log

LOGS = Path("logs/repro")  # one file per stage: what its `dvc repro` printed
UNCHANGED, RESTORED = "didn't change, skipping", "is cached - skipping run"  # DVC's words
DEFAULT_SECONDS = 30.0  # a stage's expected time when the stage log has none


@dataclass(frozen=True)
class Plan:
    """Stages (DVC addressing, e.g. `train@vae`), what each waits for, and its expected seconds."""
    needs: dict[str, set[str]]
    seconds: dict[str, float]

    def priority(self) -> dict[str, float]:
        """The expected seconds from a stage's start to the end of the longest chain that waits
        for it: starting the longest chains first keeps the cores busy to the end."""
        waiting: dict[str, set[str]] = {s: set() for s in self.needs}
        for stage, needs in self.needs.items():
            for need in needs:
                waiting[need].add(stage)
        chain: dict[str, float] = {}

        def length(stage: str) -> float:
            if stage not in chain:
                chain[stage] = self.seconds[stage] + max(map(length, waiting[stage]), default=0.0)
            return chain[stage]

        return {s: length(s) for s in self.needs}


def plan(targets: list[str], force: bool) -> Plan:
    """The targets (every stage of dvc.yaml if none) and all they depend on; without `force`
    only the stages DVC finds changed and those downstream of them (their inputs will change).
    Expected seconds come from the stage log (`recorded_seconds`)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        chosen = set(graph) if not targets else {
            stage for target in targets for stage in repo.stage.collect(target)}
        chosen |= {dep for stage in chosen for dep in nx.descendants(graph, stage)}
        if not force:
            stale = repo.status()  # the changed stages, by addressing
            changed = {s for s in chosen if s.addressing in stale}
            chosen = {s for s in chosen
                      if s in changed or changed & nx.descendants(graph, s)}
        needs = {s.addressing: {d.addressing for d in graph.successors(s) if d in chosen}
                 for s in chosen}
    recorded = recorded_seconds()
    return Plan(needs, {s: recorded.get(s, DEFAULT_SECONDS) for s in needs})


def recorded_seconds() -> dict[str, float]:
    """Each stage's wall seconds in its latest successful run of params.yaml's profile."""
    from trilemma.errors import TrilemmaError
    from trilemma.params_file import read_params_file

    if not STAGE_LOG.is_file():
        return {}
    try:
        raw = read_params_file(Path("params.yaml"))
    except TrilemmaError:  # the stages will say what is wrong with it
        return {}
    profile = raw.get("profile", "quick") if isinstance(raw, dict) else "quick"
    try:  # the log only orders the stages: one that cannot be read orders nothing
        runs = stage_log.latest_runs(stage_log.read(STAGE_LOG)).get(profile, {})
        return {stage_log.stage_name(stage, family): float(entry["wall_seconds"])
                for (stage, family), entry in runs.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def run_stage(stage: str, force: bool, threads: int | None) -> tuple[int, str, float]:
    """`dvc repro --single-item` of one stage, its output to logs/repro/<stage>.log: the exit
    code, what happened ("ran", "unchanged", "restored" from DVC's run cache, or "failed") and
    the seconds it took."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env.setdefault("MKL_NUM_THREADS", str(threads))
    LOGS.mkdir(parents=True, exist_ok=True)
    # this interpreter's DVC, whether or not its virtual environment is on the PATH
    command = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item",
               *(["--force"] * force), stage]
    started = time.monotonic()
    with log_of(stage).open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    said = log_of(stage).read_text()
    what = ("failed" if code else "unchanged" if UNCHANGED in said
            else "restored" if RESTORED in said else "ran")
    return code, what, time.monotonic() - started


def log_of(stage: str) -> Path:
    """logs/repro/<stage>.log; a stage of a dvc.yaml in a subfolder (`sub/dvc.yaml:train`) too."""
    return LOGS / (stage.replace("/", "_").replace(":", "_") + ".log")


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join("    " + line for line in path.read_text().splitlines()[-lines:])


def schedule(p: Plan, jobs: int, force: bool) -> int:
    """Run the plan, the most urgent ready stage first; after a failure, start nothing more (as
    `dvc repro` does), let the running stages finish and return 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # a fixed share, never more for a stage that happens to run alone: results depend on it
    threads = max(1, (cores or 1) // jobs)
    if "OMP_NUM_THREADS" in os.environ:  # a user's setting stands
        threads = None
    priority = p.priority()
    done: set[str] = set()
    running: dict[Future, str] = {}
    failed: list[str] = []
    counts = {"ran": 0, "unchanged": 0, "restored": 0, "failed": 0}
    started = time.monotonic()
    total = len(p.needs)
    shown = f"{threads} thread{'s' * (threads != 1)}" if threads else \
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} threads"
    typer.echo(f"{total} stages to bring up to date, {jobs} at a time with {shown} each; what "
               f"each prints goes to {LOGS}/<stage>.log")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while len(done) + len(failed) < total:
            ready = sorted((s for s in p.needs if s not in done and s not in running.values()
                            and s not in failed and p.needs[s] <= done),
                           key=lambda s: -priority[s])
            while ready and len(running) < jobs and not failed:
                stage = ready.pop(0)
                running[pool.submit(run_stage, stage, force, threads)] = stage
                typer.echo(f"        {stage}: started")
            if not running:
                break  # a failure left stages that can no longer start
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                code, what, seconds = future.result()
                counts[what] += 1
                finished_count = sum(counts.values())
                typer.echo(f"[{finished_count:>2}/{total}] {stage}: {what} in {seconds:.0f} s")
                if code:
                    failed.append(stage)
                    typer.echo(f"  {stage} exited with {code}; the end of {log_of(stage)}:\n"
                               f"{tail(log_of(stage))}", err=True)
                else:
                    done.add(stage)
    minutes = (time.monotonic() - started) / 60
    typer.echo(f"{counts['ran']} ran, {counts['unchanged']} unchanged, {counts['restored']} "
               f"restored from DVC's run cache, {counts['failed']} failed, "
               f"{total - sum(counts.values())} not started, in {minutes:.1f} min "
               f"({jobs} at a time)")
    return 1 if failed else 0


def repro(targets: Annotated[list[str] | None, typer.Argument(
              help="Stages to bring up to date with all they depend on (default: every stage), "
                   "as `dvc repro` names them: train@vae, or train for every family.")] = None,
          jobs: Annotated[int, typer.Option("--jobs", "-j", min=1,
                                            help="Stages run at once.")] = 2,
          force: Annotated[bool, typer.Option("--force", "-f",
                                              help="Run every stage, changed or not.")] = False
          ) -> None:
    """`dvc repro` with up to --jobs independent stages at once, each with its share of the
    cores; every stage's output goes to logs/repro/<stage>.log. The same stages, commands and
    dvc.lock as a plain `dvc repro`."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        os.chdir(Repo.find_root())  # from a subfolder too: logs/ and params.yaml are the repo's
        p = plan(targets or [], force)
    except DvcException as err:
        typer.echo(f"error: {str(err).splitlines()[0]}", err=True)
        raise typer.Exit(2) from None
    if not p.needs:
        typer.echo("every stage is up to date")
        raise typer.Exit(0)
    try:
        code = schedule(p, jobs, force)
    except KeyboardInterrupt:  # the stages got the same Ctrl-C; each keeps what it wrote whole
        typer.echo("interrupted: rerun to continue (stages that finished are in dvc.lock)",
                   err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(code)
