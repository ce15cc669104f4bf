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


def prediction_limit(n: int) -> float:
    """How many seed stds (s of n seeds) from the seeds' mean the FID of a run with a new seed
    lies with 95 % probability: t(0.975, n - 1) · sqrt(1 + 1/n), the prediction interval of one
    more draw (4.97 with 3 seeds; 1.96 with infinitely many)."""
    from scipy import stats  # the report alone needs it

    return float(stats.t.ppf(0.975, n - 1)) * math.sqrt(1 + 1 / n)


def _signed(z: float | None) -> str:
    """'+3.0', '-0.4', '+2.5e+05', '+inf', '–' (+ 0.0 turns a rounded -0.0 into 0.0)."""
    if z is None:
        return "–"
    if math.isinf(z) or abs(z) >= 1e4:
        return f"{z:+.1e}" if math.isfinite(z) else f"{z:+}"
    return f"{round(z, 1) + 0.0:+.1f}"


def section(profile: str, rows: list[dict], spreads: dict[str, seed_spread.Spread] | None,
            n: int, seed: int) -> str:
    """The section for the summary's family `rows` (this run's FIDs, `n` samples each, trained
    with `seed`)."""
    path = seed_spread.folder(profile) / "spread.csv"
    if not spreads:
        return render("noise_none", n=n, profile=profile, path=path)
    here = {r["family"]: r["fid_classifier"] for r in rows}
    ranked = seed_spread.ranking({f: {seed_spread.RANKED_BY: s} for f, s in spreads.items()
                                  if f in here})
    lines = ["| rank | family | FID here | FID over the seeds | here − seed mean, in seed stds "
             "| tied with |", "|---|---|---|---|---|---|"]
    for rank, spread, ties in ranked:
        lines.append(f"| {rank} | {spread.family} | {fmt(here[spread.family])} | "
                     f"{plus_minus(spread.mean, spread.std)} | "
                     f"{_signed(_stds_away(here[spread.family], spread))} | "
                     f"{', '.join(ties) or '–'} |")
    for family in [f for f in here if f not in spreads]:
        lines.append(f"| – | {family} | {fmt(here[family])} | not in the spread | – | – |")
    seeds = sorted({k for _, s, _ in ranked for k in s.values})
    return render("noise", n=n, profile=profile, path=path, runs=len(seeds),
                  seeds=", ".join(map(str, seeds)), table="\n".join(lines),
                  notes=_notes([s for _, s, _ in ranked], here, seed))


def _notes(spreads: list[seed_spread.Spread], here: dict[str, float | None], seed: int) -> str:
    """Per family: is this run one of the seeds' runs (its seed, the same FID), does it share a
    seed with one but score otherwise, or does it lie outside the range of a new seed's run."""
    scored = [s for s in spreads if here[s.family] is not None]
    same = [s for s in scored if seed in s.values
            and math.isclose(here[s.family], s.values[seed], rel_tol=1e-5)]  # spread.csv: %.6g
    differs = [s for s in scored if seed in s.values and s not in same]
    tested = [s for s in scored if s not in same]  # among the runs averaged: no test of them
    far = [s for s in tested
           if abs(_stds_away(here[s.family], s)) > prediction_limit(len(s.values))]
    notes = []
    if same:
        notes.append(render("noise_same", seed=seed, families="every family" if len(same) == len(
            scored) else ", ".join(s.family for s in same)))
    if differs:
        notes.append(render("noise_other", seed=seed, families=", ".join(
            f"{s.family} ({here[s.family]:.6g} here, {s.values[seed]:.6g} there)"
            for s in differs)))
    if far:
        sizes = sorted({len(s.values) for s in far})
        notes.append(render("noise_far", far=", ".join(
            f"{s.family} ({_signed(_stds_away(here[s.family], s))})" for s in far),
            limits="; ".join(f"±{prediction_limit(k):.2f} with {k} seeds" for k in sizes)))
    return "".join("\n\n" + note for note in notes)
