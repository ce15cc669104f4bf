"""Stage `report`: reports/<profile>/README.md, summary.csv and figures from every family's
metric files."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import (STAGE_LOG, DryRunOption, ParamsOption, log, print_settings,
                             single_process, user_errors)
from trilemma import paths, stage_log, tracking
from trilemma.config import load_params


def pipeline_time(params: Path, profile: str) -> str:
    """The line the report states its pipeline's cost in: the latest run of every stage of this
    profile in the stage log (the report's own run is not in it yet)."""
    log_path = params.parent / STAGE_LOG
    latest = stage_log.latest_runs(stage_log.read(log_path)) if log_path.exists() else {}
    runs = {key: entry for key, entry in latest.get(profile, {}).items()
            if key[0] in stage_log.BEFORE_REPORT}
    if not runs:
        return f"pipeline time not recorded ({log_path} has no {profile} stage runs)"
    t = stage_log.totals(runs)
    return (f"pipeline time **{t.wall_seconds / 60:.0f} min** ({t.stages} stages, the latest "
            f"run of each, added up; {t.startup_seconds / 60:.1f} min of it start-up)")


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
    from trilemma.report.build import build  # pandas and matplotlib: only when needed

    build(p.families, out, control=p.control.families, i2i=p.i2i_families,
          cost=pipeline_time(params, p.profile))
    log(f"wrote {out / 'README.md'} and summary.csv for {', '.join(p.families)}")
    with tracking.stage_run("report", None, p.profile) as run:
        run.log_params({"families": ",".join(p.families)})
        for path in [out / "README.md", out / "summary.csv",
                     *sorted((out / "figures").glob("*.png"))]:
            run.log_artifact(path)
