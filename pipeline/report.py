"""Stage `report`: reports/README.md, summary.csv and figures from every family's metric files."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import (DryRunOption, ParamsOption, log, print_settings, single_process,
                             user_errors)
from trilemma import paths, tracking
from trilemma.config import load_params


@user_errors
def report(params: ParamsOption = Path("params.yaml"), dry_run: DryRunOption = False) -> None:
    """Build reports/README.md and reports/summary.csv for the families in params.yaml, with the
    control stage's and the image-to-image families' sections."""
    single_process("report")
    p = load_params(params)
    if dry_run:
        return print_settings({"families": p.families, "control": p.control.families,
                               "i2i_families": p.i2i_families,
                               "output": str(paths.REPORTS / "README.md")})
    from trilemma.report.build import build  # pandas and matplotlib: only when needed

    build(p.families, control=p.control.families, i2i=p.i2i_families)
    log(f"wrote {paths.REPORTS / 'README.md'} and summary.csv for {', '.join(p.families)}")
    with tracking.stage_run("report", None, p.profile) as run:
        run.log_params({"families": ",".join(p.families)})
        for path in [paths.REPORTS / "README.md", paths.REPORTS / "summary.csv",
                     *sorted((paths.REPORTS / "figures").glob("*.png"))]:
            run.log_artifact(path)
