"""reports/README.md, reports/summary.csv and reports/figures/ from the stage outputs under
reports/ alone (metric files, tables and the sample stage's figures)."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from trilemma import figures, paths, registry, report_curves
from trilemma.config import SWEEPS
from trilemma.io import atomic_path, read_json, write_csv
from trilemma.tracking import git_commit

SUMMARY_COLUMNS = {"family": "family", "fid_classifier": "FID ↓", "fid_over_floor": "× floor ↓",
                   "kid_classifier": "KID ↓", "is_classifier": "IS ↑",
                   "fid_inception": "Inception FID ↓", "is_inception": "Inception IS ↑",
                   "precision": "precision ↑", "recall": "recall ↑",
                   "min_class_fraction": "rarest digit ↑", "class_kl_uniform": "KL to uniform ↓",
                   "label_accuracy": "label accuracy ↑", "samples_per_second": "images/s ↑",
                   "verdict": "verdict", "train_seconds": "train s", "train_peak_memory_gib": "train peak GiB"}
# summary.csv also keeps the spreads (the README shows them as ±) and both peak memories (the
# README shows the GPU's, else the process's RAM)
CSV_COLUMNS = [*list(SUMMARY_COLUMNS)[:-1], "fid_classifier_std", "fid_classifier_ci_low",
               "fid_classifier_ci_high", "kid_classifier_std", "is_inception_std", "sample_device",
               "train_device", "train_peak_gpu_memory_gib", "train_peak_rss_gib", "n"]
METRIC_KEYS = ["fid_classifier", "fid_classifier_std", "fid_classifier_ci_low",
               "fid_classifier_ci_high", "kid_classifier", "kid_classifier_std", "is_classifier",
               "fid_inception", "is_inception", "is_inception_std", "precision", "recall",
               "min_class_fraction", "class_kl_uniform", "label_accuracy"]
# the columns that need the judge: n/a when the data has no labels to train one on
JUDGE_KEYS = ["fid_classifier", "fid_over_floor", "kid_classifier", "is_classifier", "precision",
              "recall", "min_class_fraction", "class_kl_uniform", "label_accuracy"]


@dataclass(frozen=True)
class Data:
    """What the judge was trained to tell apart, and the words the README uses for it."""
    name: str  # "MNIST", or e.g. "image folder data/faces (64x64 RGB, 3 classes)"
    classes: list[str]  # class names in index order; empty without a judge
    judge: bool
    reason: str  # why there is no judge; "" when there is one

    @property
    def mnist(self) -> bool:
        return self.name == "MNIST"

    @property
    def unit(self) -> str:  # what one class is called in the text
        return "digit" if self.mnist else "class"

    @property
    def things(self) -> str:  # what the images are called in the text
        return "digits" if self.mnist else "images"

    @property
    def test_set(self) -> str:
        return "MNIST test set" if self.mnist else f"test images of {self.name}"


# the DDIM steps of the diffusion families' figures: denoising.PREVIEW_STEPS (a test keeps the
# two equal; the report reads files and imports no torch)
PREVIEW_STEPS = 20


def data_info(clf: dict, per_class: list[dict]) -> Data:
    """Read from the judge's metrics.json (older files name no data and no classes: MNIST, with
    the per-class table's digits as names)."""
    classes = clf.get("classes") or [str(r.get("class", r["digit"])) for r in per_class]
    return Data(name=clf.get("data", "MNIST"), classes=[str(c) for c in classes],
                judge=clf.get("judge", True) is not False, reason=clf.get("reason", ""))


def _number(value) -> float | None:
    """None for what a metric file or a CSV leaves empty (null, NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _over_floor(fid, floor_fid) -> float | None:
    """FID as a multiple of the real-data floor's; None when either is missing."""
    fid, floor_fid = _number(fid), _number(floor_fid)
    return None if fid is None or not floor_fid else round(fid / floor_fid, 3)


def summary_rows(families: list[str]) -> list[dict]:
    """One row per family plus the real-data floor: quality, coverage, speed, conditional
    accuracy, each straight from the metric files."""
    floor = read_json(paths.REAL_METRICS)
    verdicts = report_curves.verdicts(report_curves.read_curves(families))
    rows = [{"family": "real data (floor)", **{k: floor.get(k) for k in METRIC_KEYS},
             "fid_over_floor": _over_floor(floor.get("fid_classifier"),
                                           floor.get("fid_classifier")), "n": floor["n"]}]
    for name in families:
        ev = read_json(paths.eval_reports(name) / "metrics.json")
        speed = read_json(paths.eval_reports(name) / "timing.json")
        tr = read_json(paths.train_reports(name) / "timing.json")
        rows.append({"family": name, **{k: ev.get(k) for k in METRIC_KEYS},
                     "fid_over_floor": _over_floor(ev.get("fid_classifier"),
                                                   floor.get("fid_classifier")),
                     "samples_per_second": speed["samples_per_second"],
                     "verdict": verdicts.get(name), "sample_device": speed["device"], "train_seconds": tr["train_seconds"],
                     "train_device": tr["device"], "n": ev["n_samples"],
                     "train_peak_gpu_memory_gib": tr.get("peak_gpu_memory_gib"),
                     "train_peak_rss_gib": tr.get("peak_rss_gib")})
    return [{k: row.get(k) for k in CSV_COLUMNS} for row in rows]


def inception_notes(families: list[str]) -> list[str]:
    """Why the Inception columns hold what they hold, each reason once."""
    files = [paths.REAL_METRICS] + [paths.eval_reports(f) / "metrics.json" for f in families]
    return list(dict.fromkeys(read_json(f).get("inception_note", "") for f in files))


def _display(row: dict, judge: bool = True) -> dict:
    """A summary row for the README: FID and KID with their ± (bootstrap std; std over KID
    subsets), n/a where Inception did not run and, without a judge, in the judge's columns."""
    shown = dict(row)
    for key in ("fid_classifier", "kid_classifier"):
        if row.get(key) is not None and row.get(f"{key}_std") is not None:
            shown[key] = _plus_minus(row[key], row[f"{key}_std"])
    for key in ("fid_inception", "is_inception"):
        if row.get(key) is None:
            shown[key] = "n/a"
    if not judge:
        shown.update(dict.fromkeys(JUDGE_KEYS, "n/a"))
    gpu, rss = row.get("train_peak_gpu_memory_gib"), row.get("train_peak_rss_gib")
    shown["train_peak_memory_gib"] = (f"{gpu:.2f} GPU" if gpu is not None else
                                      f"{rss:.2f} RAM" if rss is not None else None)
    return shown


SWEEP_SCORES = ["fid_classifier", "kid_classifier", "is_classifier", "precision", "recall",
                "min_class_fraction", "class_kl_uniform", "label_accuracy", "samples_per_second"]


def sweeps(families: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{knob: {family: rows of its <knob>_sweep.csv}} for the knobs each family honours."""
    by_knob: dict[str, dict[str, list[dict]]] = {}
    for knob in SWEEPS:
        for name in families:
            table = pd.read_csv(paths.eval_reports(name) / f"{knob}_sweep.csv",
                                keep_default_na=False, na_values=[""])
            if len(table):
                numbers = [c for c in SWEEP_SCORES if c in table]  # no judge: all empty (NaN)
                table[numbers] = table[numbers].astype(float)  # 0 and 1 read back as ints
                by_knob.setdefault(knob, {})[name] = table.to_dict("records")
    return by_knob


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, float):  # three or four significant digits, thousands separated
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.{digits}f}"
    return str(value)


def _plus_minus(value: float, spread: float) -> str:
    """'251.6 ± 3.7': the spread to the value's decimals."""
    decimals = 0 if abs(value) >= 1000 else 1 if abs(value) >= 10 else 3
    return f"{value:,.{decimals}f} ± {spread:,.{decimals}f}"


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    head = "| " + " | ".join(columns.values()) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


SWEEP_TEXT = {  # {things}, {unit}, {corner}: filled in by _sweep_section
    "truncation": "τ draws every latent component from N(0,1) cut to [−τ, τ] (none: no cut). A "
                  "smaller τ keeps latents near the centre, where {things} tend to be cleaner and "
                  "less varied; FID counts both effects, so it may fall or rise. `stylegan` "
                  "reads the same setting as ψ in its w space instead: w = w̄ + ψ (w − w̄), w̄ "
                  "the average w of training (none: ψ = 1, and ψ = 0 gives w̄ for every z).",
    "steps": "Denoising steps (network evaluations per image): `ddim k` is DDIM on k timesteps "
             "spread over the T of training, `ddpm T` the ancestral sampler on all of them. Fewer "
             "steps buy speed{corner}.",
    "guidance": "Classifier-free guidance scale w: 0 is the unconditional model, 1 the "
                "conditional one, larger w pushes samples toward the requested {unit}, usually "
                "at some cost in diversity.",
}


def _has_fid(rows: list[dict]) -> bool:
    return any(_number(r.get("fid_classifier")) is not None for r in rows)


def _sweep_section(knob: str, by_family: dict[str, list[dict]], floor: float | None,
                   data: Data) -> str:
    """The knob's table and figures; without judge scores, the speed column alone."""
    rows = [{"family": name, "setting": str(r["setting"]) + (" (main)" if r["main"] else ""),
             "n": r["n"], **{k: r.get(k) for k in SWEEP_SCORES},
             "fid_over_floor": _over_floor(r.get("fid_classifier"), floor)}
            for name, family_rows in by_family.items() for r in family_rows]
    scores = (["fid_classifier", "fid_over_floor", *SWEEP_SCORES] if data.judge
              else ["samples_per_second"])
    names = summary_columns(data)
    table = markdown_table(rows, {"family": "family", "setting": knob, "n": "n",
                                  **{k: names[k] for k in scores}})
    drawn = _has_fid([r for family_rows in by_family.values() for r in family_rows])
    corner = ("; the figure after the table puts every family on the same speed-quality axes"
              if drawn else "")
    text = SWEEP_TEXT[knob].format(things=data.things, unit=data.unit, corner=corner)
    if not drawn:
        return (f"### {knob}\n\n{text}\n\n{table}\n\nOnly the speed is shown, and no "
                f"figure: the judge's scores are n/a ({_judge_reason(data)}).\n")
    speed = ("\n![speed corner](figures/speed_corner.png)\n\nIn the speed corner the lines are "
             "the rows above (n as in the table); the squares are the other families' main "
             "samples from the summary table.\n") if knob == "steps" else ""
    return (f"### {knob}\n\n{text}\n\n{table}\n\n"
            f"![{knob} sweep](figures/sweep_{knob}.png)\n{speed}")


def _family_figures_section(families: list[str], out: Path, data: Data) -> str:
    """Figures a family draws of itself in its train stage (all PNGs but the sample grid)."""
    blocks = []
    for name in families:
        folder = paths.train_reports(name)
        for png in sorted(folder.glob("*.png")):
            if png.name != "grid.png":
                rel = Path(os.path.relpath(png, out))
                blocks.append(f"### {name}: {png.stem}\n\n![{name} {png.stem}]({rel})\n")
    if not blocks:
        return ""
    return ("## Family figures\n\nDrawn by each family's train stage from the test set: the "
            f"diffusion families show the reverse process from noise (DDIM, {PREVIEW_STEPS} steps, "
            f"EMA weights) and reconstructions of test {data.things} noised to step t and denoised "
            "from there (img2img).\n\n" + "\n".join(blocks))


def _latent_section(families: list[str], out: Path, data: Data) -> str:
    blocks = []
    for name in families:
        folder = paths.sample_figures(name)
        if (folder / "interpolation.png").exists():
            rel = Path(os.path.relpath(folder, out))
            blocks.append(f"| {name} | ![{name} interpolation]({rel}/interpolation.png) | "
                          f"![{name} arithmetic]({rel}/arithmetic.png) |")
    if not blocks:
        return ""
    rows = (f" Conditional families show {data.unit} i % {len(data.classes)} in row i."
            if data.classes else "")  # no classes, no conditional families
    return ("## Latent space\n\nLeft: each row walks along a great circle between two random "
            "latents (spherical interpolation). Right: latent vector arithmetic, z + α·b with α "
            "from −1 to 1, where b is the mean latent of the boldest 10 % of 2000 samples minus "
            f"that of the thinnest 10 %.{rows}\n\n"
            "| family | interpolation | arithmetic: z + α · bold |\n|---|---|---|\n"
            + "\n".join(blocks) + "\n")


def _named(names: list[str]) -> str:
    """`a`, `b` and `c` denoise; `a` denoises."""
    quoted = [f"`{name}`" for name in names]
    listed = " and ".join(filter(None, (", ".join(quoted[:-1]), quoted[-1])))
    return f"{listed} {'denoises' if len(names) == 1 else 'denoise'}"


def _diffusion_space_section(rows: list[dict], by_knob: dict[str, dict[str, list[dict]]],
                             data: Data) -> str:
    """Latent against pixel-space diffusion at their main sampling settings: the point of latent
    diffusion is the cheaper network evaluation on a small latent grid."""
    space = {r["family"]: registry.entry(r["family"]).diffusion for r in rows[1:]}
    shown = {r["family"]: r for r in rows[1:] if space[r["family"]]}
    latent = [name for name in shown if space[name] == "latent"]
    pixel = [name for name in shown if space[name] == "pixel"]
    if not latent or not pixel:
        return ""
    steps = by_knob.get("steps", {})
    # the speed-up is over a pixel diffusion, an unconditional one where there is one
    base = shown[min(pixel, key=lambda name: registry.entry(name).conditional)]
    table = [{"family": name, "setting": next((r["setting"] for r in steps.get(name, [])
                                               if r["main"]), None),
              "samples_per_second": row["samples_per_second"],
              "speedup": round(row["samples_per_second"] / base["samples_per_second"], 2),
              "fid_classifier": row["fid_classifier"], "label_accuracy": row["label_accuracy"],
              "train_seconds": row["train_seconds"]} for name, row in shown.items()]
    names = summary_columns(data)
    return (f"## Latent against pixel-space diffusion\n\n{_named(latent)} the small "
            f"latent grid of its autoencoder and decodes once at the end; {_named(pixel)} the "
            f"pixels at every step. Main sampling settings, the "
            f"same n as the summary table; speed-up is images/s over `{base['family']}`'s."
            f"\n\n" + markdown_table(table, {
                "family": "family", "setting": "sampler", "samples_per_second": "images/s ↑",
                "speedup": "speed-up", "fid_classifier": names["fid_classifier"],
                "label_accuracy": names["label_accuracy"], "train_seconds": "train s"}) + "\n")


def _class_columns(data: Data) -> dict[str, str]:
    """The index column, and the names beside it unless they are the indices (MNIST)."""
    if data.classes == [str(i) for i in range(len(data.classes))]:
        return {"digit": data.unit}
    return {"digit": "#", "class": data.unit}


def _label_accuracy_section(families: list[str], data: Data) -> str:
    tables = {}
    for name in families:
        table = pd.read_csv(paths.eval_reports(name) / "per_class.csv")
        if "accuracy" in table and len(table):  # no judge: a header and no rows
            tables[name] = table.set_index("digit")["accuracy"].to_dict()
    if not tables:
        return ""
    indices = sorted({d for acc in tables.values() for d in acc})
    rows = [{"digit": d, "class": _class_name(data, d),
             **{name: _number(float(acc[d])) if d in acc else None for name, acc in tables.items()}}
            for d in indices]
    return (f"## Conditional families: accuracy per requested {data.unit}\n\nShare of the "
            f"samples asked to be each {data.unit} that the judge reads as that {data.unit}.\n\n"
            + markdown_table(rows, {**_class_columns(data), **{n: n for n in tables}}) + "\n")


def _class_name(data: Data, index: int) -> str:
    return data.classes[index] if 0 <= index < len(data.classes) else str(index)


def summary_columns(data: Data) -> dict[str, str]:
    """SUMMARY_COLUMNS in the data's words."""
    return {**SUMMARY_COLUMNS, "min_class_fraction": f"rarest {data.unit} ↑"}


def _judge_reason(data: Data) -> str:
    return data.reason.rstrip(".") or "no judge was trained"


def _metric_bullets(data: Data, inception: str) -> str:
    """What each column of the summary table means, in the data's words."""
    speed = """- **Speed.** images per second when sampling (after a warm-up batch) and training wall time,
  on the device(s) above. **train peak GiB**: the train stage's peak memory, on the GPU (torch's
  allocated memory) when it trained there, else the whole process's resident memory (RAM)."""
    if not data.judge:
        return f"""- **No judge**: {_judge_reason(data)}. Every column that needs the judge classifier
  (FID, × floor, KID, IS, precision, recall, rarest class, KL to uniform, label accuracy) is
  n/a; the Inception scores and the speed do not need it.
- **Inception FID / IS**: Fréchet distance between Inception-V3 features of the samples and of
  the test images, and exp E[KL(p(y|x) ‖ p(y))] with Inception's softmax ({inception}).
{speed}"""
    k, unit = len(data.classes), data.unit
    return f"""- **Quality.** **FID**: Fréchet distance between the judge classifier's penultimate features
  of the samples and of the test set, ± the standard deviation over bootstrap resamples of the
  samples. **KID**: kernel (cubic polynomial) MMD² in the same features, ± the std over 100 random
  subsets of up to 1000; unbiased, so it can dip below 0 for real data. Its scale follows the
  feature space: these judge-feature values are not comparable with published Inception KIDs. **IS**: exp E[KL(p(y|x) ‖ p(y))] with the
  judge's softmax; {k} is the maximum. **Inception FID / IS**: the same with Inception-V3, the
  reference network ({inception}).
- **Fidelity and coverage.** **precision**: share of samples inside the real data's k-NN
  manifold (k = 3, judge features, an equally large random test subset); **recall**: share of
  real images inside the samples' manifold. **rarest {unit}**: share of samples the judge assigns
  to the least frequent {unit} ({1 / k:.2g} is even; near 0 is a missing mode); **KL to uniform**: of the
  judge's {unit} histogram, 0 when even, log {k} = {math.log(k):.2f} when every sample is one {unit}.
- **Conditional accuracy.** **label accuracy**: share of samples the judge reads as the {unit}
  that was asked for (balanced requests; conditional families only).
{speed}"""


def _judge_section(clf: dict, per_class: list[dict], data: Data) -> str:
    if not data.judge:
        return (f"## The judge\n\nNo judge classifier was trained: {_judge_reason(data)}. "
                "Every score that needs it is n/a above.\n")
    rows = [{**r, "class": _class_name(data, int(r["digit"]))} for r in per_class]
    table = markdown_table(rows, {**_class_columns(data), "n": "n", "correct": "correct",
                                  "accuracy": "accuracy"})
    return f"""## The judge: classifier accuracy per {data.unit} (test set)

Test accuracy **{clf['test_accuracy']:.4f}** after {clf['epochs']} epochs.

{table}

![confusion matrix](classifier/confusion.png)
"""


def _drop(path: Path) -> None:
    """Remove a figure this build does not draw, so no stale one from an earlier build stays."""
    path.unlink(missing_ok=True)


def _figures(families: list[str], rows: list[dict], floor: dict, data: Data,
             by_knob: dict[str, dict[str, list[dict]]], out: Path) -> dict[str, str]:
    """Draw the report-level figures that the metric files allow; return the README text that
    stands for the histogram and trilemma figures (the image, or why there is none)."""
    folder = out / "figures"
    histories = {f: pd.read_csv(paths.train_reports(f) / "loss_steps.csv").to_dict("records")
                 for f in families}
    figures.save_figure(figures.loss_curves(histories), folder / "loss_curves.png")
    hists = {f: _in_class_order(read_json(paths.eval_reports(f) / "metrics.json")
                                .get("class_histogram", {}), data.classes) for f in families}
    hists = {f: h for f, h in hists.items() if h}  # no judge: no histogram
    text = {}
    if hists:
        figures.save_figure(figures.class_histograms(hists, data.classes, data.unit),
                            folder / "class_histograms.png")
        text["histograms"] = "![class histograms](figures/class_histograms.png)"
    else:
        _drop(folder / "class_histograms.png")
        text["histograms"] = f"n/a: the class histogram needs the judge ({_judge_reason(data)})."
    for knob in SWEEP_TEXT:
        by_family = by_knob.get(knob, {})
        all_rows = [r for family_rows in by_family.values() for r in family_rows]
        if not _has_fid(all_rows):
            _drop(folder / f"sweep_{knob}.png")
            if knob == "steps":
                _drop(folder / "speed_corner.png")
            continue
        figures.save_figure(figures.sweep_curves(knob, by_family, len(data.classes), data.unit),
                            folder / f"sweep_{knob}.png")
        if knob == "steps":
            others = {r["family"]: r for r in rows[1:] if r["family"] not in by_family}
            figures.save_figure(figures.speed_corner(by_family, others),
                                folder / "speed_corner.png")
    text["trilemma"] = _trilemma_figure(rows, floor, folder)
    return text


def _in_class_order(histogram: dict[str, float], classes: list[str]) -> list[float]:
    """A class_histogram's fractions in class-index order: metric files sort their keys as
    strings, so "10" comes before "2" and names come alphabetically."""
    if all(key in classes for key in histogram):
        return [histogram[c] for c in classes if c in histogram]
    if all(key.isdigit() for key in histogram):
        return [histogram[key] for key in sorted(histogram, key=int)]
    return list(histogram.values())


def _trilemma_figure(rows: list[dict], floor: dict, folder: Path) -> str:
    """The judge's FID if any family has one, else Inception's, else no figure."""
    fid_key = next((k for k in ("fid_classifier", "fid_inception")
                    if any(_number(r.get(k)) is not None for r in rows[1:])), None)
    if fid_key is None:
        _drop(folder / "trilemma.png")
        return ("No trilemma figure: it needs a FID, and neither the judge's nor Inception's is "
                "available (see the notes above).")
    figures.save_figure(figures.trilemma(rows[1:], floor, fid_key), folder / "trilemma.png")
    if fid_key == "fid_inception":
        return ("![the trilemma](figures/trilemma.png)\n\nThe trilemma in one picture: up is "
                "better quality, here Inception FID (the judge's is n/a), right is faster "
                "sampling. Every marker has one size: coverage (recall) needs the judge.")
    return ("![the trilemma](figures/trilemma.png)\n\nThe trilemma in one picture: up is better "
            "quality, right is faster sampling, a bigger marker\ncovers more of the data (recall).")


def build(families: list[str], out: Path = paths.REPORTS, control: list[str] = (),
          i2i: list[str] = ()) -> str:
    """Write the report files; return the README text. `control`: the families of the control
    stage (params `control.families`); `i2i`: the image-to-image families."""
    from trilemma import report_control, report_i2i

    rows = summary_rows(families)
    write_csv(out / "summary.csv", rows)
    clf = read_json(paths.CLASSIFIER_REPORTS / "metrics.json")
    clf_timing = read_json(paths.CLASSIFIER_REPORTS / "timing.json")
    per_class = pd.read_csv(paths.CLASSIFIER_REPORTS / "per_class.csv").to_dict("records")
    data = data_info(clf, per_class)
    floor = read_json(paths.REAL_METRICS)

    by_knob = sweeps(families)
    shown = _figures(families, rows, floor, data, by_knob, out)
    sweep_sections = [_sweep_section(knob, by_family, floor.get("fid_classifier"), data)
                      for knob, by_family in by_knob.items()]
    devices = sorted({clf_timing["device"]} | {r[k] for r in rows[1:]
                                               for k in ("sample_device", "train_device")})
    notes = inception_notes(families)
    inception = ("; ".join(n for n in notes if n) if any(r["fid_inception"] is not None for r in rows)
                 else "n/a: " + "; ".join(notes))
    data_line = "" if data.mnist else f"Data **{data.name}** · "
    curves = report_curves.read_curves(families)
    banner = report_curves.banner({r["family"]: r["verdict"] for r in rows[1:]})

    grids = "\n".join(f"| {f} | ![{f} samples]({os.path.relpath(paths.sample_figures(f), out)}"
                      f"/grid.png) |" for f in families)
    sweep_text = ("## Sampling knobs: quality, diversity, speed\n\nEach family's samples drawn "
                  "again at other settings of a sampling knob, with the same seed. Every row of a "
                  "table scores the same number n of samples (the main setting's row uses the "
                  "first n of its samples), so rows compare within a table; FID grows as n "
                  "shrinks, so compare with the summary table only at equal n.\n\n"
                  + "\n".join(sweep_sections)) if sweep_sections else ""
    text = f"""# trilemma report

{banner}{data_line}Profile **{clf['profile']}** · device **{', '.join(devices)}** · git commit `{git_commit()}` ·
built {datetime.now(timezone.utc):%Y-%m-%d} · torch {torch.__version__} · Python {platform.python_version()}.
Built by `trilemma report` from the metric files under `reports/`; every number below comes from
those files.

## Quality, coverage, speed

{markdown_table([_display(r, data.judge) for r in rows], summary_columns(data))}

Every family is scored on {rows[1]['n'] if len(rows) > 1 else floor['n']} samples against the
{data.test_set}; the floor row scores {floor['n']} real training images the same way, which no
generator can be expected to beat.

{_metric_bullets(data, inception)}

{shown["trilemma"]}

{report_curves.section(curves, floor.get("fid_classifier"), out, _fmt)}
## Samples

| family | first samples (fixed seed) |
|---|---|
{grids}

## Mode coverage

{shown["histograms"]}

{_diffusion_space_section(rows, by_knob, data)}
{sweep_text}
{_latent_section(families, out, data)}
{_label_accuracy_section(families, data)}
{_family_figures_section(families, out, data)}
{report_control.section(list(control), out, data.unit) if control else ""}
{report_i2i.section(list(i2i), out)}
## Training

![loss curves](figures/loss_curves.png)

{_judge_section(clf, per_class, data)}"""
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(text)
    return text
