"""The report's training-noise section: how far each family's FID moves when its profile is run
again with another seed (`trilemma seed-spread`'s reports/seeds/<profile>/spread.csv), beside
this run's FID, ranked with the differences smaller than that noise as ties."""

from __future__ import annotations

import math

from trilemma import seed_spread
from trilemma.errors import DataError
from trilemma.report import inputs
from trilemma.report.prose import render
from trilemma.report.tables import fmt, plus_minus

FAR = 2.0  # a run this many seed stds from its family's seed mean is pointed out


def read(profile: str) -> dict[str, seed_spread.Spread] | None:
    """family -> its FID over the seeds, from the profile's spread.csv; None without one."""
    path = seed_spread.folder(profile) / "spread.csv"
    table = inputs.csv_file(path, ["family", "metric"], optional=True)
    if table is None:
        return None
    seeds = [c for c in table.columns if str(c).startswith(seed_spread.SEED_COLUMN)]
    if not seeds or any(seed_spread.seed_of(c) is None for c in seeds):
        raise DataError(f"{path}: needs a column per seed, seed_<number>; found "
                        f"{', '.join(map(str, table.columns))} (rerun `trilemma seed-spread`)")
    table = inputs.csv_file(path, numbers=seeds)  # read again, the seeds' columns as numbers
    fids = table[table["metric"] == seed_spread.RANKED_BY].to_dict("records")
    if not fids:
        raise DataError(f"{path}: no {seed_spread.RANKED_BY} rows (rerun `trilemma seed-spread`)")
    spreads = seed_spread.from_csv_rows(fids, str(path))
    short = [f for f, s in spreads.items() if len(s[seed_spread.RANKED_BY].values) < 2]
    if short:
        raise DataError(f"{path}: {short[0]} has fewer than 2 seeds' FID "
                        f"(rerun `trilemma seed-spread`)")
    return {family: scores[seed_spread.RANKED_BY] for family, scores in spreads.items()}


def _stds_away(fid: float | None, spread: seed_spread.Spread) -> float | None:
    """How many seed stds this run's FID lies from the seeds' mean (infinite when the seeds all
    scored alike and this run did not); None without a FID."""
    if fid is None:
        return None
    if spread.std == 0:
        return 0.0 if fid == spread.mean else math.copysign(math.inf, fid - spread.mean)
    return (fid - spread.mean) / spread.std


def section(profile: str, rows: list[dict], spreads: dict[str, seed_spread.Spread] | None,
            n: int) -> str:
    """The section for the summary's family `rows` (this run's FIDs; `n` samples each)."""
    path = seed_spread.folder(profile) / "spread.csv"
    if not spreads:
        return render("noise_none", n=n, profile=profile, path=path)
    here = {r["family"]: r["fid_classifier"] for r in rows}
    ranked = seed_spread.ranking({f: {seed_spread.RANKED_BY: s} for f, s in spreads.items()
                                  if f in here})
    lines = ["| rank | family | FID here | FID over the seeds | here − seed mean, in seed stds "
             "| tied with |", "|---|---|---|---|---|---|"]
    far = []
    for rank, spread, ties in ranked:
        fid = here[spread.family]
        z = _stds_away(fid, spread)
        # signed, one decimal; + 0.0 turns a rounded -0.0 into 0.0
        shown = "–" if z is None else f"{z:+}" if math.isinf(z) else f"{round(z, 1) + 0.0:+.1f}"
        if z is not None and abs(z) > FAR:
            far.append(f"{spread.family} ({shown})")
        lines.append(f"| {rank} | {spread.family} | {fmt(fid)} | "
                     f"{plus_minus(spread.mean, spread.std)} | {shown} | {', '.join(ties) or '–'} |")
    missing = [f for f in here if f not in spreads]
    for family in missing:
        lines.append(f"| – | {family} | {fmt(here[family])} | not in the spread | – | – |")
    seeds = sorted({seed for s in spreads.values() for seed in s.values})
    return render("noise", n=n, profile=profile, path=path, runs=len(seeds),
                  seeds=", ".join(map(str, seeds)), table="\n".join(lines),
                  far="\n\n" + render("noise_far", far=", ".join(far), limit=f"{FAR:g}") if far else "")
