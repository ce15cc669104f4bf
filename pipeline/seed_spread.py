"""Command `seed-spread`: each family's scores as mean ± std over pipeline runs with different
seeds (DVC experiments), and the FID ranking with the differences smaller than that noise as ties."""

from __future__ import annotations

import json
from dataclasses import replace
import subprocess
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.common import ParamsOption, log, single_process, user_errors
from trilemma import seed_spread as spread_lib
from trilemma.config import PROFILES, load_params
from trilemma.errors import DataError
from trilemma.io import atomic_dir, write_csv

ExpShowOption = Annotated[Optional[list[Path]], typer.Option(
    "--from", help="A saved `dvc exp show --json`; repeat it for runs made in several clones or "
                   "machines (the first run listed for a seed wins). Default: run it here.")]
ProfileOption = Annotated[Optional[str], typer.Option(
    "--profile", help="Whose runs to compare: quick | reference | full (default: the params "
                      "file's profile).")]


@user_errors
def seed_spread(params: ParamsOption = Path("params.yaml"), saved: ExpShowOption = None,
                profile: ProfileOption = None) -> None:
    """Read the evaluate metrics of every run DVC knows (workspace, commits, experiments), one
    per seed of one profile, and write reports/seeds/<profile>/spread.md (ranking, mean ± std,
    ties) and spread.csv (every value). Make the runs first, e.g. `dvc exp run --queue
    -S seed=0,1,2 evaluate` and `dvc queue start`; `make seeds` does both and waits."""
    single_process("seed-spread")
    p = load_params(params)
    profile = p.profile if profile is None else profile
    if profile not in PROFILES:
        raise DataError(f"--profile: {profile!r} is not a profile ({' | '.join(PROFILES)})")
    runs = []
    for source in saved or [None]:
        shown = _exp_show(source)
        try:
            found = spread_lib.runs_from_exp_show(shown, p.families)
        except DataError as err:  # the shape of the listing is wrong: name where it came from
            raise DataError(f"{source or 'the output of `dvc exp show --json` run here'}: "
                            f"{err}") from None
        if len(saved or []) > 1:  # every listing has its own `workspace`: say whose
            found = [replace(r, name=f"{source.name}:{r.name}") for r in found]
        runs += found
    runs = spread_lib.of_profile(runs, profile)
    table = spread_lib.spreads(runs, p.families)
    text = spread_lib.markdown(runs, table)
    out = spread_lib.folder(profile)
    with atomic_dir(out) as tmp:
        (tmp / "spread.md").write_text(text)
        write_csv(tmp / "spread.csv", *spread_lib.csv_rows(table))
    log(text.rstrip())
    log(f"wrote {out / 'spread.md'} and spread.csv from {len(runs)} runs: "
        + ", ".join(f"{r.name} (seed {r.seed})" for r in runs))


def _exp_show(saved: Path | None) -> list:
    if saved is not None:
        try:
            return json.loads(saved.read_text())
        except FileNotFoundError:
            raise DataError(f"{saved}: not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{saved}: not the JSON of `dvc exp show --json` ({err})") from None
    try:
        done = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True,
                              encoding="utf-8", errors="replace", timeout=600)
    except FileNotFoundError:
        raise DataError("dvc: not found on PATH (`make setup` installs it)") from None
    except subprocess.TimeoutExpired:
        raise DataError("`dvc exp show --json` gave no answer in 10 minutes") from None
    except OSError as err:
        raise DataError(f"dvc: cannot run it ({err})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`dvc exp show --json` failed: {last}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise DataError(f"`dvc exp show --json` printed something other than JSON ({err})") \
            from None
