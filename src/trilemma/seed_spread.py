"""How much of a difference between families is training noise. The same pipeline run with
several seeds (DVC experiments, `dvc exp run -S seed=...`) gives each family's scores as
mean ± std over the seeds; families whose mean FIDs differ by less than the spread of that
difference are ties. The bootstrap interval of one run covers only the sampling noise of its
images; this covers the training run itself (initialisation, data order, the last bits of the
CPU's kernels that GAN training amplifies)."""

from __future__ import annotations

import math
import re
import reprlib
import statistics
from dataclasses import dataclass
from pathlib import Path

from trilemma import paths
from trilemma.config import Params
from trilemma.errors import DataError
from trilemma.io import is_number

# the summary scores compared across seeds (metrics.json keys), with their display names
SCORES = {"fid_classifier": "FID ↓", "precision": "precision ↑", "recall": "recall ↑",
          "min_class_fraction": "rarest class ↑", "label_accuracy": "label accuracy ↑"}
RANKED_BY = "fid_classifier"  # lower is better
SEED_COLUMN = "seed_"  # spread.csv: a column per seed, seed_<k>
DEFAULT_PROFILE = Params.model_fields["profile"].default
LARGEST = 1e9  # no score comes near (FID of noise is in the hundreds): a broken or edited file
UNIT_SCORES = {"precision", "recall", "min_class_fraction", "label_accuracy"}  # shares: 0..1
LARGEST_SEED = next(m.le for m in Params.model_fields["seed"].metadata if hasattr(m, "le"))


@dataclass(frozen=True)
class Run:
    """One pipeline run: its name (the DVC experiment's), profile, seed, and each family's
    scores (None: that family's evaluate metrics are not in the run)."""
    name: str
    profile: str
    seed: int
    scores: dict[str, dict | None]  # family -> metrics.json of its evaluate stage

    @property
    def lacking(self) -> list[str]:
        return [family for family, scores in self.scores.items() if scores is None]


@dataclass(frozen=True)
class Spread:
    """A family's score over the runs: mean, sample std (ddof 1) and the values by seed."""
    family: str
    metric: str
    values: dict[int, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values())

    @property
    def std(self) -> float:
        return statistics.stdev(self.values.values())


def score(value: object, metric: str, where: str) -> float | None:
    """A score as read from a run (`where` names it in an error): None when not scored (null
    or absent, e.g. every judge score without class labels), else a finite number below
    LARGEST, a FID never negative, a share 0..1."""
    if value is None:
        return None
    # the size first: math.isfinite cannot take an int too large for a float
    if not is_number(value) or abs(value) > LARGEST or not math.isfinite(value):
        raise DataError(f"{where}: {metric} is {reprlib.repr(value)}, not a score")
    if metric == RANKED_BY and value < 0:
        raise DataError(f"{where}: {metric} is {value!r}; a FID is never negative")
    if metric in UNIT_SCORES and not 0 <= value <= 1:
        raise DataError(f"{where}: {metric} is {value!r}; a share is 0..1")
    return float(value)


def runs_from_exp_show(shown: list, families: list[str]) -> list[Run]:
    """The pipeline runs in `dvc exp show --json` output (every baseline commit, the workspace
    and each experiment), in the order listed: those with a seed and some family's evaluate
    metrics. A params.yaml without `profile` is the default profile's."""
    runs = []
    for rev in _revs(shown):
        name = str(rev.get("name") or rev.get("rev", "?"))
        params = _field(rev, "data", "params", "params.yaml", "data")
        seed, profile = _field(params, "seed"), _field(params, "profile")
        scores = {f: _field(rev, "data", "metrics", str(paths.eval_reports(f) / "metrics.json"),
                            "data") for f in families}
        if seed is None or all(s is None for s in scores.values()):
            continue  # no params, or nothing evaluated: not a pipeline run
        whole = isinstance(seed, int) or isinstance(seed, float) and seed.is_integer()
        if not (is_number(seed) and whole and 0 <= seed <= LARGEST_SEED):
            raise DataError(f"{name}: seed is {reprlib.repr(seed)}, not a whole number "
                            f"0..{LARGEST_SEED}")
        profile = DEFAULT_PROFILE if profile is None else profile
        if not isinstance(profile, str):
            raise DataError(f"{name}: profile is {profile!r}, not a profile's name")
        for family, found in scores.items():
            if found is not None and not isinstance(found, dict):
                raise _not_exp_show(f"{name}'s {paths.eval_reports(family) / 'metrics.json'}",
                                    found)
            for metric in SCORES:  # checked here, where the caller still knows the listing
                score((found or {}).get(metric), metric, f"{name}: {family}")
        runs.append(Run(name, profile, int(seed), scores))
    return runs


def of_profile(runs: list[Run], profile: str) -> list[Run]:
    """One run per seed of `profile` that holds every family's metrics, by seed: a spread
    compares a training budget with itself. The first run listed for a seed wins (an experiment
    and the workspace it was applied to are one run). Needs two seeds; the error names the runs
    left out: those lacking a family, and those of other profiles."""
    first: dict[tuple[str, int], Run] = {}
    for run in runs:
        if not run.lacking:
            first.setdefault((run.profile, run.seed), run)
    chosen = sorted((r for r in first.values() if r.profile == profile), key=lambda r: r.seed)
    if len(chosen) < 2:
        found = ", ".join(f"{r.name} (seed {r.seed})" for r in chosen) or "none"
        lacking = ", ".join(f"{r.name} (seed {r.seed}, no {r.lacking[0]})"
                            for r in runs if r.lacking and r.profile == profile)
        others = ", ".join(f"{r.name} ({r.profile}, seed {r.seed})"
                           for r in first.values() if r.profile != profile)
        raise DataError(f"the spread needs runs of profile {profile!r} with at least 2 different "
                        f"seeds, each with every family's evaluate metrics; found: {found}"
                        + (f"; without every family's: {lacking}" if lacking else "")
                        + (f"; of other profiles: {others}" if others else ""))
    return chosen


def _not_exp_show(what: str, found: object) -> DataError:
    return DataError(f"not `dvc exp show --json` output ({what} is {type(found).__name__})")


def _field(node: object, *keys: str) -> object:
    """node[key][key]...; None where a key is missing or null (DVC leaves out what a revision
    lacks); DataError where a level is not a mapping."""
    for key in keys:
        if node is None:
            return None
        if not isinstance(node, dict):
            raise _not_exp_show(f"the value holding {key!r}", node)
        node = node.get(key)
    return node


def _listed(node: object, what: str) -> list:
    if node is not None and not isinstance(node, list):
        raise _not_exp_show(what, node)
    return node or []


def _revs(shown: object):
    """Every revision: the baselines and their experiments' revisions, each a mapping."""
    for baseline in _listed(shown, "the top level"):
        if not isinstance(baseline, dict):
            raise _not_exp_show("a baseline", baseline)
        yield baseline
        for experiment in _listed(baseline.get("experiments"), "`experiments`"):
            for rev in _listed(_field(experiment, "revs"), "`revs`"):
                if not isinstance(rev, dict):
                    raise _not_exp_show("a revision", rev)
                yield rev


def spreads(runs: list[Run], families: list[str]) -> dict[str, dict[str, Spread]]:
    """family -> metric -> Spread over the runs (`of_profile`'s: one profile, two seeds or more),
    for the SCORES a family has in every run (label accuracy only for conditional families)."""
    table = {}
    for family in families:
        table[family] = {}
        for metric in SCORES:
            values = {r.seed: score(r.scores[family].get(metric), metric, f"{r.name}: {family}")
                      for r in runs}
            if None not in values.values():
                table[family][metric] = Spread(family, metric, values)
    if not any(RANKED_BY in scores for scores in table.values()):
        raise DataError(f"nothing to rank: no family has a judge FID ({RANKED_BY}) in every run "
                        f"(evaluate writes null without a judge, for images without class labels)")
    return table


def tied(a: Spread, b: Spread) -> bool:
    """The mean scores are equal or differ by less than the std of the difference of one run of
    each (sqrt(std_a^2 + std_b^2)): one `dvc repro` of each could rank them either way."""
    return abs(a.mean - b.mean) < math.hypot(a.std, b.std) or a.mean == b.mean


def ranking(table: dict[str, dict[str, Spread]]) -> list[tuple[int, Spread, list[str]]]:
    """(rank, FID spread, families tied with it), best mean FID first. A family's rank is 1 plus
    the number of families better than it by more than the noise, so ties share ranks. A family
    without an FID in every run is left out."""
    ranked = sorted((scores[RANKED_BY] for scores in table.values() if RANKED_BY in scores),
                    key=lambda s: s.mean)
    rows = []
    for spread in ranked:
        ties = [o.family for o in ranked if o is not spread and tied(spread, o)]
        better = sum(o.mean < spread.mean and not tied(spread, o) for o in ranked)
        rows.append((1 + better, spread, ties))
    return rows


def markdown(runs: list[Run], table: dict[str, dict[str, Spread]]) -> str:
    """The ranking table: rank, family, each score as mean ± std, and the ties."""
    seeds = ", ".join(str(r.seed) for r in runs)
    lines = [f"# Training noise, profile {runs[0].profile}: {len(runs)} runs (seeds {seeds})", "",
             "Mean ± std over the seeds (judge features). Rank counts only the families better "
             "by more than the noise: two families tie when their mean FIDs are equal or differ "
             "by less than sqrt(std_a² + std_b²), the spread of the difference between one run "
             "of each.", "",
             "| rank | family | " + " | ".join(SCORES.values()) + " | tied with |",
             "|---|---|" + "---|" * len(SCORES) + "---|"]
    ranked = [(str(rank), spread.family, ties) for rank, spread, ties in ranking(table)]
    unranked = [("–", family, []) for family in table if RANKED_BY not in table[family]]
    for rank, family, ties in ranked + unranked:
        cells = [_cell(table[family].get(m), m) for m in SCORES]
        lines.append(f"| {rank} | {family} | " + " | ".join(cells) +
                     f" | {', '.join(ties) or '–'} |")
    return "\n".join(lines) + "\n"


def _cell(spread: Spread | None, metric: str) -> str:
    if spread is None:
        return "–"
    digits = 1 if metric == RANKED_BY else 3
    return f"{spread.mean:.{digits}f} ± {spread.std:.{digits}f}"


def folder(profile: str) -> Path:
    """Where `trilemma seed-spread` writes a profile's spread.md and spread.csv."""
    return paths.REPORTS / "seeds" / profile


def csv_rows(table: dict[str, dict[str, Spread]]) -> tuple[list[dict], list[str]]:
    """One row per family and score (mean, std, n and the value of each seed), and the columns."""
    seeds = sorted({seed for scores in table.values() for s in scores.values() for seed in s.values})
    rows = [{"family": family, "metric": metric, "mean": s.mean, "std": s.std, "n": len(s.values),
             **{f"{SEED_COLUMN}{k}": v for k, v in s.values.items()}}
            for family, scores in table.items() for metric, s in scores.items()]
    return rows, ["family", "metric", "mean", "std", "n", *(f"{SEED_COLUMN}{k}" for k in seeds)]


def seed_of(column: str) -> int | None:
    """The seed of a spread.csv column (seed_<k>, k written as `csv_rows` writes it), else None."""
    match = re.fullmatch(f"{SEED_COLUMN}(0|[1-9][0-9]*)", column, flags=re.ASCII)
    return int(match[1]) if match else None


def from_csv_rows(rows: list[dict], where: str) -> dict[str, dict[str, Spread]]:
    """The table back from `csv_rows`' rows as read (numbers, NaN for a blank: that seed lacks
    the score); `where` (the file) names a bad row in the error."""
    table: dict[str, dict[str, Spread]] = {}
    for row in rows:
        family, metric = row["family"], row["metric"]
        if not isinstance(family, str) or not isinstance(metric, str):
            raise DataError(f"{where}: a row without a family or a metric ({family!r}, {metric!r})")
        if metric in table.get(family, {}):
            raise DataError(f"{where}: {family} {metric} twice")
        values = {seed_of(key): score(value, metric, f"{where}: {family}, {key}")
                  for key, value in row.items() if seed_of(key) is not None
                  and not (isinstance(value, float) and math.isnan(value))}
        table.setdefault(family, {})[metric] = Spread(family, metric, values)
    return table
