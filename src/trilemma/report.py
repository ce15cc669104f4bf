"""reports/README.md, reports/summary.csv and reports/figures/ from the stage outputs under
reports/ alone (metric files, tables and the sample stage's figures)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from trilemma import figures, paths
from trilemma.config import SWEEPS
from trilemma.io import atomic_path, read_json, write_csv
from trilemma.tracking import git_commit

SUMMARY_COLUMNS = {"family": "family", "fid_classifier": "FID ↓", "fid_over_floor": "× floor ↓",
                   "kid_classifier": "KID ↓", "is_classifier": "IS ↑",
                   "fid_inception": "Inception FID ↓", "is_inception": "Inception IS ↑",
                   "precision": "precision ↑", "recall": "recall ↑",
                   "min_class_fraction": "rarest digit ↑", "class_kl_uniform": "KL to uniform ↓",
                   "label_accuracy": "label accuracy ↑", "samples_per_second": "images/s ↑",
                   "train_seconds": "train s", "train_peak_memory_gib": "train peak GiB"}
# summary.csv also keeps the spreads (the README shows them as ±) and both peak memories (the
# README shows the GPU's, else the process's RAM)
CSV_COLUMNS = [*list(SUMMARY_COLUMNS)[:-1], "fid_classifier_std", "fid_classifier_ci_low",
               "fid_classifier_ci_high", "kid_classifier_std", "is_inception_std", "sample_device",
               "train_device", "train_peak_gpu_memory_gib", "train_peak_rss_gib", "n"]
METRIC_KEYS = ["fid_classifier", "fid_classifier_std", "fid_classifier_ci_low",
               "fid_classifier_ci_high", "kid_classifier", "kid_classifier_std", "is_classifier",
               "fid_inception", "is_inception", "is_inception_std", "precision", "recall",
               "min_class_fraction", "class_kl_uniform", "label_accuracy"]


def summary_rows(families: list[str]) -> list[dict]:
    """One row per family plus the real-data floor: quality, coverage, speed, conditional
    accuracy, each straight from the metric files."""
    floor = read_json(paths.REAL_METRICS)
    rows = [{"family": "real data (floor)", **{k: floor.get(k) for k in METRIC_KEYS},
             "fid_over_floor": 1.0, "n": floor["n"]}]
    for name in families:
        ev = read_json(paths.eval_reports(name) / "metrics.json")
        speed = read_json(paths.eval_reports(name) / "timing.json")
        tr = read_json(paths.train_reports(name) / "timing.json")
        rows.append({"family": name, **{k: ev.get(k) for k in METRIC_KEYS},
                     "fid_over_floor": round(ev["fid_classifier"] / floor["fid_classifier"], 3),
                     "samples_per_second": speed["samples_per_second"],
                     "sample_device": speed["device"], "train_seconds": tr["train_seconds"],
                     "train_device": tr["device"], "n": ev["n_samples"],
                     "train_peak_gpu_memory_gib": tr.get("peak_gpu_memory_gib"),
                     "train_peak_rss_gib": tr.get("peak_rss_gib")})
    return [{k: row.get(k) for k in CSV_COLUMNS} for row in rows]


def inception_notes(families: list[str]) -> list[str]:
    """Why the Inception columns hold what they hold, each reason once."""
    files = [paths.REAL_METRICS] + [paths.eval_reports(f) / "metrics.json" for f in families]
    return list(dict.fromkeys(read_json(f).get("inception_note", "") for f in files))


def _display(row: dict) -> dict:
    """A summary row for the README: FID and KID with their ± (bootstrap std; std over KID
    subsets), n/a where Inception did not run."""
    shown = dict(row)
    for key in ("fid_classifier", "kid_classifier"):
        if row.get(key) is not None and row.get(f"{key}_std") is not None:
            shown[key] = _plus_minus(row[key], row[f"{key}_std"])
    for key in ("fid_inception", "is_inception"):
        if row.get(key) is None:
            shown[key] = "n/a"
    gpu, rss = row.get("train_peak_gpu_memory_gib"), row.get("train_peak_rss_gib")
    shown["train_peak_memory_gib"] = (f"{gpu:.2f} GPU" if gpu is not None else
                                      f"{rss:.2f} RAM" if rss is not None else None)
    return shown


def sweeps(families: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{knob: {family: rows of its <knob>_sweep.csv}} for the knobs each family honours."""
    by_knob: dict[str, dict[str, list[dict]]] = {}
    for knob in SWEEPS:
        for name in families:
            table = pd.read_csv(paths.eval_reports(name) / f"{knob}_sweep.csv",
                                keep_default_na=False, na_values=[""])
            if len(table):
                numbers = ["fid_classifier", "kid_classifier", "is_classifier", "precision",
                           "recall", "min_class_fraction", "class_kl_uniform", "label_accuracy",
                           "samples_per_second"]
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


SWEEP_TEXT = {
    "truncation": "τ draws every latent component from N(0,1) cut to [−τ, τ] (none: no cut). A "
                  "smaller τ keeps latents near the centre, where digits tend to be cleaner and "
                  "less varied; FID counts both effects, so it may fall or rise.",
    "steps": "Denoising steps (network evaluations per image): `ddim k` is DDIM on k timesteps "
             "spread over the T of training, `ddpm T` the ancestral sampler on all of them. Fewer "
             "steps buy speed; the figure after the table puts every family on the same "
             "speed-quality axes.",
    "guidance": "Classifier-free guidance scale w: 0 is the unconditional model, 1 the "
                "conditional one, larger w pushes samples toward the requested digit, usually "
                "at some cost in diversity.",
}


def _sweep_section(knob: str, by_family: dict[str, list[dict]], floor: float) -> str:
    columns = ["fid_classifier", "kid_classifier", "is_classifier", "precision", "recall",
               "min_class_fraction", "class_kl_uniform", "label_accuracy", "samples_per_second"]
    rows = [{"family": name, "setting": str(r["setting"]) + (" (main)" if r["main"] else ""),
             "n": r["n"], **{k: r[k] for k in columns},
             "fid_over_floor": round(r["fid_classifier"] / floor, 3)}
            for name, family_rows in by_family.items() for r in family_rows]
    table = markdown_table(rows, {"family": "family", "setting": knob, "n": "n",
                                  **{k: SUMMARY_COLUMNS[k] for k in
                                     ["fid_classifier", "fid_over_floor", *columns]}})
    speed = ("\n![speed corner](figures/speed_corner.png)\n\nIn the speed corner the lines are "
             "the rows above (n as in the table); the squares are the other families' main "
             "samples from the summary table.\n") if knob == "steps" else ""
    return (f"### {knob}\n\n{SWEEP_TEXT[knob]}\n\n{table}\n\n"
            f"![{knob} sweep](figures/sweep_{knob}.png)\n{speed}")


def _family_figures_section(families: list[str], out: Path) -> str:
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
            "diffusion families show the reverse process from noise (DDIM, 50 steps, EMA "
            "weights) and reconstructions of test digits noised to step t and denoised from "
            "there (img2img).\n\n" + "\n".join(blocks))


def _latent_section(families: list[str], out: Path) -> str:
    blocks = []
    for name in families:
        folder = paths.sample_figures(name)
        if (folder / "interpolation.png").exists():
            rel = Path(os.path.relpath(folder, out))
            blocks.append(f"| {name} | ![{name} interpolation]({rel}/interpolation.png) | "
                          f"![{name} arithmetic]({rel}/arithmetic.png) |")
    if not blocks:
        return ""
    return ("## Latent space\n\nLeft: each row walks along a great circle between two random "
            "latents (spherical interpolation). Right: latent vector arithmetic, z + α·b with α "
            "from −1 to 1, where b is the mean latent of the boldest 10 % of 2000 samples minus "
            "that of the thinnest 10 %. Conditional families show digit i % 10 in row i.\n\n"
            "| family | interpolation | arithmetic: z + α · bold |\n|---|---|---|\n"
            + "\n".join(blocks) + "\n")


def _label_accuracy_section(families: list[str]) -> str:
    tables = {}
    for name in families:
        table = pd.read_csv(paths.eval_reports(name) / "per_class.csv")
        if "accuracy" in table:
            tables[name] = table.set_index("digit")["accuracy"].to_dict()
    if not tables:
        return ""
    rows = [{"digit": d, **{name: float(acc[d]) for name, acc in tables.items()}} for d in range(10)]
    return ("## Conditional families: accuracy per requested digit\n\nShare of the samples asked "
            "to be each digit that the judge reads as that digit.\n\n"
            + markdown_table(rows, {"digit": "digit", **{n: n for n in tables}}) + "\n")


def build(families: list[str], out: Path = paths.REPORTS) -> str:
    """Write the report files; return the README text."""
    rows = summary_rows(families)
    write_csv(out / "summary.csv", rows)
    clf = read_json(paths.CLASSIFIER_REPORTS / "metrics.json")
    clf_timing = read_json(paths.CLASSIFIER_REPORTS / "timing.json")
    per_digit = pd.read_csv(paths.CLASSIFIER_REPORTS / "per_class.csv").to_dict("records")
    floor = read_json(paths.REAL_METRICS)

    histories = {f: pd.read_csv(paths.train_reports(f) / "loss_steps.csv").to_dict("records")
                 for f in families}
    figures.save_figure(figures.loss_curves(histories), out / "figures" / "loss_curves.png")
    hists = {f: list(read_json(paths.eval_reports(f) / "metrics.json")["class_histogram"].values())
             for f in families}
    figures.save_figure(figures.class_histograms(hists), out / "figures" / "class_histograms.png")
    sweep_sections = []
    for knob, by_family in sweeps(families).items():
        figures.save_figure(figures.sweep_curves(knob, by_family), out / "figures" / f"sweep_{knob}.png")
        sweep_sections.append(_sweep_section(knob, by_family, floor["fid_classifier"]))
        if knob == "steps":
            others = {r["family"]: r for r in rows[1:] if r["family"] not in by_family}
            figures.save_figure(figures.speed_corner(by_family, others),
                                out / "figures" / "speed_corner.png")
    figures.save_figure(figures.trilemma(rows[1:], floor), out / "figures" / "trilemma.png")
    devices = sorted({clf_timing["device"]} | {r[k] for r in rows[1:]
                                               for k in ("sample_device", "train_device")})
    notes = inception_notes(families)
    inception = ("; ".join(n for n in notes if n) if any(r["fid_inception"] is not None for r in rows)
                 else "n/a: " + "; ".join(notes))

    grids = "\n".join(f"| {f} | ![{f} samples]({os.path.relpath(paths.sample_figures(f), out)}"
                      f"/grid.png) |" for f in families)
    sweep_text = ("## Sampling knobs: quality, diversity, speed\n\nEach family's samples drawn "
                  "again at other settings of a sampling knob, with the same seed. Every row of a "
                  "table scores the same number n of samples (the main setting's row uses the "
                  "first n of its samples), so rows compare within a table; FID grows as n "
                  "shrinks, so compare with the summary table only at equal n.\n\n"
                  + "\n".join(sweep_sections)) if sweep_sections else ""
    text = f"""# trilemma report

Profile **{clf['profile']}** · device **{', '.join(devices)}** · git commit `{git_commit()}` ·
built {datetime.now(timezone.utc):%Y-%m-%d} · torch {torch.__version__} · Python {platform.python_version()}.
Built by `trilemma report` from the metric files under `reports/`; every number below comes from
those files.

## Quality, coverage, speed

{markdown_table([_display(r) for r in rows], SUMMARY_COLUMNS)}

Every family is scored on {rows[1]['n'] if len(rows) > 1 else floor['n']} samples against the
MNIST test set; the floor row scores {floor['n']} real training images the same way, which no
generator can be expected to beat.

- **Quality.** **FID**: Fréchet distance between the judge classifier's penultimate features
  of the samples and of the test set, ± the standard deviation over bootstrap resamples of the
  samples. **KID**: kernel (cubic polynomial) MMD² in the same features, ± the std over 100 random
  subsets of up to 1000; unbiased, so it can dip below 0 for real data. Its scale follows the
  feature space: these judge-feature values are not comparable with published Inception KIDs. **IS**: exp E[KL(p(y|x) ‖ p(y))] with the
  judge's softmax; 10 is the maximum. **Inception FID / IS**: the same with Inception-V3, the
  reference network ({inception}).
- **Fidelity and coverage.** **precision**: share of samples inside the real data's k-NN
  manifold (k = 3, judge features, an equally large random test subset); **recall**: share of
  real images inside the samples' manifold. **rarest digit**: share of samples the judge assigns
  to the least frequent digit (0.1 is even; near 0 is a missing mode); **KL to uniform**: of the
  judge's digit histogram, 0 when even, log 10 = 2.30 when every sample is one digit.
- **Conditional accuracy.** **label accuracy**: share of samples the judge reads as the digit
  that was asked for (balanced requests; conditional families only).
- **Speed.** images per second when sampling (after a warm-up batch) and training wall time,
  on the device(s) above. **train peak GiB**: the train stage's peak memory, on the GPU (torch's
  allocated memory) when it trained there, else the whole process's resident memory (RAM).

![the trilemma](figures/trilemma.png)

The trilemma in one picture: up is better quality, right is faster sampling, a bigger marker
covers more of the data (recall).

## Samples

| family | first samples (fixed seed) |
|---|---|
{grids}

## Mode coverage

![class histograms](figures/class_histograms.png)

{sweep_text}
{_latent_section(families, out)}
{_label_accuracy_section(families)}
{_family_figures_section(families, out)}
## Training

![loss curves](figures/loss_curves.png)

## The judge: classifier accuracy per digit (test set)

Test accuracy **{clf['test_accuracy']:.4f}** after {clf['epochs']} epochs.

{markdown_table(per_digit, {"digit": "digit", "n": "n", "correct": "correct",
                            "accuracy": "accuracy"})}

![confusion matrix](classifier/confusion.png)
"""
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(text)
    return text
