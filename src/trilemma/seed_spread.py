"""How much of a difference between families is training noise. The same pipeline run with
several seeds (DVC experiments, `dvc exp run -S seed=...`) gives each family's scores as
mean ± std over the seeds; families whose mean FIDs differ by less than the spread of that
difference are ties. The bootstrap interval of one run covers only the sampling noise of its
images; this covers the training run itself (initialisation, data order, the last bits of the
CPU's kernels that GAN training amplifies)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from trilemma import paths
from trilemma.config import Params
from trilemma.errors import DataError

# the summary scores compared across seeds (metrics.json keys), with their display names
SCORES = {"fid_classifier": "FID ↓", "precision": "precision ↑", "recall": "recall ↑",
          "min_class_fraction": "rarest class ↑", "label_accuracy": "label accuracy ↑"}
RANKED_BY = "fid_classifier"  # lower is better
SEED_COLUMN = "seed_"  # spread.csv: a column per seed, seed_<k>
DEFAULT_PROFILE = Params.model_fields["profile"].default


@dataclass(frozen=True)
class Run:
    """One pipeline run: its name (the DVC experiment's), profile, seed, and each family's
    scores."""
    name: str
    profile: str
    seed: int
    scores: dict[str, dict[str, float]]  # family -> metrics.json of its evaluate stage


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


def runs_from_exp_show(shown: list, families: list[str]) -> list[Run]:
    """The runs in `dvc exp show --json` output (every baseline commit, the workspace and each
    experiment), in the order listed, that hold an evaluate metrics.json for every one of
    `families`. A params.yaml without `profile` is the default profile's."""
    runs = []
    for rev in _revs(shown):
        params = _field(rev, "data", "params", "params.yaml", "data")
        profile = _field(params, "profile") or DEFAULT_PROFILE
        seed = _field(params, "seed")
        scores = {f: _field(rev, "data", "metrics", str(paths.eval_reports(f) / "metrics.json"),
                            "data") for f in families}
        if (isinstance(profile, str) and isinstance(seed, int)
                and all(isinstance(s, dict) for s in scores.values())):
            runs.append(Run(rev.get("name") or rev.get("rev", "?"), profile, seed, scores))
    return runs


def of_profile(runs: list[Run], profile: str) -> list[Run]:
    """One run per seed of `profile`, by seed: a spread compares a training budget with itself.
    The first run listed for a seed wins (an experiment and the workspace it was applied to
    are one run). Needs two seeds; the error names the runs of other profiles, if any."""
    first: dict[tuple[str, int], Run] = {}
    for run in runs:
        first.setdefault((run.profile, run.seed), run)
    chosen = sorted((r for r in first.values() if r.profile == profile), key=lambda r: r.seed)
    if len(chosen) < 2:
        found = ", ".join(f"{r.name} (seed {r.seed})" for r in chosen) or "none"
        others = ", ".join(f"{r.name} ({r.profile}, seed {r.seed})"
                           for r in first.values() if r.profile != profile)
        raise DataError(f"the spread needs runs of profile {profile!r} with at least 2 different "
                        f"seeds, each with every family's evaluate metrics; found: {found}"
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
    for the SCORES a family reports (label accuracy only for conditional families)."""
    table = {}
    for family in families:
        table[family] = {
            metric: Spread(family, metric, {r.seed: float(r.scores[family][metric]) for r in runs})
            for metric in SCORES
            if all(isinstance(r.scores[family].get(metric), (int, float)) for r in runs)}
    if not any(RANKED_BY in scores for scores in table.values()):
        raise DataError(f"nothing to rank: no family has a judge FID ({RANKED_BY}) in every run "
                        f"(evaluate writes null without a judge, for images without class labels)")
    return table


def tied(a: Spread, b: Spread) -> bool:
    """The mean scores differ by less than the std of the difference of one run of each
    (sqrt(std_a^2 + std_b^2)): one `dvc repro` of each could rank them either way."""
    return abs(a.mean - b.mean) < math.hypot(a.std, b.std)


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
             "by more than the noise: two families tie when their mean FIDs differ by less than "
             "sqrt(std_a² + std_b²), the spread of the difference between one run of each.", "",
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


def from_csv_rows(rows: list[dict]) -> dict[str, dict[str, Spread]]:
    """The table back from `csv_rows`' rows (values as numbers; a blank: that seed lacks it)."""
    table: dict[str, dict[str, Spread]] = {}
    for row in rows:
        values = {int(key.removeprefix(SEED_COLUMN)): float(value) for key, value in row.items()
                  if key.startswith(SEED_COLUMN) and value is not None and not math.isnan(value)}
        table.setdefault(row["family"], {})[row["metric"]] = Spread(
            row["family"], row["metric"], values)
    return table
