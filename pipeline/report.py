"""Stage `report`: reports/<profile>/README.md, summary.csv and figures from every family's
metric files."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import (STAGE_LOG, DryRunOption, ParamsOption, log, print_settings,
                             single_process, stage_log_path, user_errors)
from trilemma import paths, stage_log, tracking
from trilemma.config import Params, load_params
from trilemma.errors import DataError
from trilemma.report.inputs import json_file


def pipeline_time(params: Path, p: Params) -> str:
    """The line the report states its pipeline's cost in: the latest run of every stage of this
    profile's pipeline (as params.yaml defines it now) in the stage log, added up; the report's
    own run is not in it yet. A stage interrupted and resumed counts its last run only."""
    log_path = stage_log_path(params) or STAGE_LOG
    wanted = stage_log.before_report(p.families, p.i2i_families, p.control.families)
    try:
        latest = stage_log.latest_runs(stage_log.read(log_path)).get(p.profile, {})
        t = stage_log.totals({k: e for k, e in latest.items() if k in wanted})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no log or a bad line
        return f"pipeline time not recorded ({log_path})"
    line = (f"pipeline time **{t.wall_seconds / 60:.1f} min** ({t.stages} of {len(wanted)} "
            f"stages; the latest run of each, added up, {t.startup_seconds / 60:.1f} min of it "
            f"start-up)")
    if t.span_seconds < t.wall_seconds:  # stages overlapped (`trilemma repro`): the wall clock too
        line += (f", {t.span_seconds / 60:.1f} min from the first start to the last end. Stages "
                 f"ran side by side, so train seconds and images/s include a neighbour's load "
                 f"and compare families only roughly")
    return line


@user_errors
def report(params: ParamsOption = Path("params.yaml"), dry_run: DryRunOption = False) -> None:
    """Build reports/<profile>/README.md and summary.csv for the families in params.yaml, with
    the control stage's and the image-to-image families' sections. Each profile has its folder,
    so the quick and the reference report stand side by side."""
    single_process("report")
    p = load_params(params)
    out = paths.REPORTS / p.profile
    if dry_run:
        return print_settings({"families": p.families, "control": p.control.families,
                               "i2i_families": p.i2i_families,
                               "output": str(out / "README.md")})
    ran = json_file(paths.CLASSIFIER_REPORTS / "metrics.json", ["profile"])["profile"]
    if ran != p.profile:  # the stage outputs are another profile's: its report, not this one
        raise DataError(f"{paths.CLASSIFIER_REPORTS / 'metrics.json'}: the stages ran with "
                        f"profile {ran!r}, {params} says {p.profile!r}: run `dvc repro` first")
    from trilemma.report.build import build  # pandas and matplotlib: only when needed

    build(p.families, out, control=p.control.families, i2i=p.i2i_families,
          cost=pipeline_time(params, p), seed=p.seed)
    log(f"wrote {out / 'README.md'} and summary.csv for {', '.join(p.families)}")
    with tracking.stage_run("report", None, p.profile) as run:
        run.log_params({"families": ",".join(p.families)})
        for path in [out / "README.md", out / "summary.csv",
                     *sorted((out / "figures").glob("*.png"))]:
            run.log_artifact(path)
