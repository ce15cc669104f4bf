"""The report's learning-curve parts, from the train stages' curve.csv files: FID at equal
training budgets (a table), a convergence verdict per family (a column of the main table) and the
text around the quality-against-training-cost figure (drawn by plots.curves_figure)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trilemma import paths
from trilemma.errors import DataError
from trilemma.report import inputs
from trilemma.report.prose import render

PLATEAU = 0.10  # "plateaued": FID fell by less than this share over the last third of training
PLATEAUED, IMPROVING, PAST_BEST = "plateaued", "still improving", "past its best"
FIGURE = "learning_curves.png"
COLUMNS = ["step", "train_seconds", "fid_classifier"]  # of curve.csv, what the report uses


def read_curves(families: list[str]) -> dict[str, pd.DataFrame]:
    """Each family's probe rows that have a FID (none without a judge, or with train.probes 0),
    in step order; families without such rows are left out."""
    curves = {}
    for name in families:  # trained before probes existed: no curve.csv
        curve = inputs.csv_file(paths.train_reports(name) / "curve.csv", COLUMNS,
                                numbers=[*COLUMNS, "n"], optional=True)
        if curve is not None:
            curve = curve[curve["fid_classifier"].notna()].sort_values("step")
            fid = curve["fid_classifier"]
            bad = fid[(fid <= 0) | ~np.isfinite(fid)]
            if len(bad):  # a broken or edited file: the curves are drawn on a log scale
                raise DataError(f"{paths.train_reports(name) / 'curve.csv'}: a FID of "
                                f"{bad.iloc[0]!r}; a probe's FID is a finite number above 0")
            if len(curve):
                curves[name] = curve.reset_index(drop=True)
    return curves


def _log_interp(x: float, xs: np.ndarray, ys: np.ndarray, log_x: bool) -> float:
    """log y linearly interpolated at x between the points (xs, ys) (log x too if `log_x`)."""
    tx = np.log(xs) if log_x else xs
    return float(np.exp(np.interp(math.log(x) if log_x else x, tx, np.log(ys))))


def verdict(curve: pd.DataFrame) -> str | None:
    """IMPROVING when FID at the end is PLATEAU or more lower than at 2/3 of the training steps
    (interpolated on the curve); else PAST_BEST when the last probe's FID is more than PLATEAU
    above the best one's (the final model is not the family's best); else PLATEAUED. None with
    fewer than two probes, or when the first probe comes after 2/3 of training."""
    steps, fid = curve["step"].to_numpy(float), curve["fid_classifier"].to_numpy(float)
    two_thirds = steps[-1] * 2 / 3
    if len(curve) < 2 or steps[0] > two_thirds:
        return None
    before = _log_interp(two_thirds, steps, fid, log_x=False)
    if before - fid[-1] >= PLATEAU * before:
        return IMPROVING
    return PAST_BEST if fid[-1] > (1 + PLATEAU) * fid.min() else PLATEAUED


def verdicts(curves: dict[str, pd.DataFrame]) -> dict[str, str | None]:
    return {name: verdict(curve) for name, curve in curves.items()}


def budgets(curves: dict[str, pd.DataFrame], count: int = 3) -> list[float]:
    """`count` training-second budgets every family reached: the shortest family's total and
    halvings of it, each cut to two significant digits (rounded down)."""
    if not curves:
        return []
    shortest = min(float(c["train_seconds"].iloc[-1]) for c in curves.values())
    if shortest <= 0:
        return []
    return [_two_digits(shortest / 2 ** k) for k in reversed(range(count))]


def _two_digits(x: float) -> float:
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return math.floor(x / scale) * scale


def fid_at(curve: pd.DataFrame, seconds: float) -> float | None:
    """The family's probe FID after `seconds` of training: interpolated log-log between the
    probes around it; None before its first probe (not measured) or after its last."""
    xs, ys = curve["train_seconds"].to_numpy(float), curve["fid_classifier"].to_numpy(float)
    keep = xs > 0  # a probe at 0 s has no place on a log axis
    xs, ys = xs[keep], ys[keep]
    if not len(xs) or seconds < xs[0] or seconds > xs[-1]:
        return None
    return _log_interp(seconds, xs, ys, log_x=True)


def equal_budget_rows(curves: dict[str, pd.DataFrame], spent: list[float]) -> list[dict]:
    """A row per family: its probe FID at each budget in `spent`, its total training seconds,
    its final probe FID, its best probe FID with the step of that probe, and the probes' n."""
    return [{"family": name, **{f"at_{b:g}": fid_at(curve, b) for b in spent},
             "total": float(curve["train_seconds"].iloc[-1]),
             "final": float(curve["fid_classifier"].iloc[-1]),
             "best": float(curve["fid_classifier"].min()),
             "best_step": int(curve["step"].iloc[int(curve["fid_classifier"].argmin())]),
             "n": int(curve["n"].iloc[-1]) if "n" in curve else None}
            for name, curve in curves.items()]


def banner(shown: dict[str, str | None]) -> str:
    """The report's first lines when a family was still improving when training stopped, or
    had scored better earlier in training than at its end."""
    text = ""
    for kind, template in ((IMPROVING, "banner"), (PAST_BEST, "banner_past")):
        names = [name for name, v in shown.items() if v == kind]
        if names:
            one = len(names) == 1
            text += render(template, names=", ".join(f"`{n}`" for n in names),
                           was="was" if one else "were", its="its" if one else "their",
                           plateau=f"{PLATEAU:.0%}")
    return text


def section(curves: dict[str, pd.DataFrame], fmt) -> str:
    """The equal-budget table and the text around the figure (plots.draw draws it); `fmt` formats
    a cell. Without curves, a line saying why."""
    if not curves:
        return render("curves_none")
    spent = budgets(curves)
    rows = equal_budget_rows(curves, spent)
    head = ["family", *(f"FID at {b:g} s" for b in spent), "train s", "final probe FID",
            "best probe FID (step)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["family"], *(fmt(r[f"at_{b:g}"]) for b in spent), fmt(r["total"]),
                 fmt(r["final"]), f"{fmt(r['best'])} ({r['best_step']:,})"]
        lines.append("| " + " | ".join(cells) + " |")
    n = sorted({r["n"] for r in rows if r["n"] is not None})
    n_text = f"n = {', '.join(map(str, n))}" if n else "the probes' n"
    return render("curves", figure=FIGURE, n_text=n_text, table="\n".join(lines),
                  plateaued=PLATEAUED, improving=IMPROVING, past_best=PAST_BEST,
                  plateau=f"{PLATEAU:.0%}")
