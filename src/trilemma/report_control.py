"""The report's section on controllable generation, from the control stage's files
(reports/control/<family>/) and the referee's (reports/control/referee/), and the control figures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trilemma import paths
from trilemma.figures import _image_row, pyplot

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

FIGURE = "before_after.png"  # the control stage's figure, in reports/control/<family>/


def rows_figure(rows: list[tuple[str, torch.Tensor]]) -> plt.Figure:
    """Rows of uint8 images (m,C,S,S), each labelled at the left (e.g. "3 before", "3 after")."""
    cols = max(len(images) for _, images in rows)
    fig, axes = pyplot().subplots(len(rows), cols, figsize=(0.7 * cols + 0.8, 0.7 * len(rows)),
                             squeeze=False)
    for ax_row, (label, images) in zip(axes, rows):
        for ax in ax_row[len(images):]:
            ax.set_axis_off()
        _image_row(ax_row, images, label)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def section(families_in_control: list[str], out: Path, unit: str) -> str:
    """Markdown: the steering table (judge and referee success before/after, referee success per
    class), the before/after figures, and one guidance table for classifier guidance and
    classifier-free guidance. `out` is the folder the markdown lives in (figure links are
    relative to it); `unit` is what one class is called ("digit", "class"). Missing files become
    a line saying which stage to run."""
    lines = ["## Controllable generation", ""]
    if not families_in_control:
        return "\n".join(lines + ["No family is listed in params.yaml `control.families`.", ""])
    referee = _read(paths.REFEREE_REPORTS / "metrics.json")
    lines += [
        f"Steering asks an unconditional generator for a {unit} without retraining it, using the "
        "judge's gradient. An optimiser that ascends the judge's log-probability can also fool "
        "the judge with small adversarial pixel changes, so every success is counted twice: by "
        "the judge and by the *referee*, a second classifier (other seed, width and shift "
        "augmentation) that the steering never saw. The gap between the two is the share of "
        f"images that convince the judge but not another network: adversarial, not the {unit}."
        + (f" The referee's test accuracy is {referee['test_accuracy']:.4f}."
           if referee and "test_accuracy" in referee else
           " (No referee metrics: run `trilemma train-referee`.)"), ""]
    results, missing, no_judge = {}, [], []
    for family in families_in_control:
        result = _read(paths.control_reports(family) / "metrics.json")
        if result is None:
            missing.append(family)
        elif result.get("judge") is False:
            no_judge.append(f"{family}: {result.get('reason', 'no judge')}")
        else:
            results[family] = result
    steered = {f: r for f, r in results.items() if r.get("kind") == "steer"}
    guided = {f: r for f, r in results.items() if r.get("kind") != "steer"}
    if steered:
        classes = list(next(iter(steered.values()))["referee_per_class"])
        lines += [
            "### Latent steering",
            "",
            f"Latents from the prior, moved by Adam on -log p_judge({unit} given G(z)) + "
            "prior_weight * squared norm(z) / 2; success is the share of images classified as "
            f"the requested {unit}, before and after. The referee columns per {unit} are after.",
            "",
            "| family | judge before | judge after | referee before | referee after | "
            "z norm before -> after | " + " | ".join(f"referee {c}" for c in classes) + " |",
            "|---" * (6 + len(classes)) + "|"]
        for family, r in steered.items():
            per = r["referee_per_class"]
            lines.append(
                f"| {family} | {_pct(r['judge_before_success'])} | {_pct(r['judge_after_success'])}"
                f" | {_pct(r['referee_before_success'])} | {_pct(r['referee_after_success'])} | "
                f"{r['mean_z_norm_before']:.1f} -> {r['mean_z_norm_after']:.1f} | "
                + " | ".join(_pct(per.get(c)) for c in classes) + " |")
        first = next(iter(steered.values()))
        lines += ["", f"{first['per_class']} latents per {unit}, {first['steps']} steps, "
                  f"lr {first['lr']:g}, prior_weight {first['prior_weight']:g}.", ""]
    if guided:
        lines += [
            "### Guidance of diffusion models",
            "",
            "Classifier guidance steers the unconditional DDPM with the judge's gradient on the "
            "predicted clean image (scale: the step on x0_hat per denoising step; 0 is "
            "unguided, so its accuracy is chance). Classifier-free guidance is the conditional "
            "model's own (scale w: 0 unconditional, 1 conditional). FID is against the test set "
            "in the judge's features, on the table's n images (higher than the main table's, "
            "which uses more).",
            "",
            "| family | method | scale | n | judge accuracy | referee accuracy | FID | images/s |",
            "|---|---|---|---|---|---|---|---|"]
        for family, r in guided.items():
            timing = _read(paths.control_reports(family) / "timing.json") or {}
            rates = timing.get("images_per_second", {})
            for row in r["guidance"]:
                rate = rates.get(f"{row['scale']:g}")
                lines.append(f"| {family} | {row['method']} | {row['scale']:g} | {row['n']} | "
                             f"{_pct(row['judge_accuracy'])} | {_pct(row['referee_accuracy'])} | "
                             f"{row['fid_classifier']:.2f} | "
                             f"{'n/a' if rate is None else f'{rate:.0f}'} |")
        lines.append("")
    for family in results:
        figure = paths.control_reports(family) / FIGURE
        if figure.exists():
            link = os.path.relpath(figure, out)
            caption = (f"before (prior latents) and after steering, two rows per {unit}"
                       if family in steered else "the same noise at each guidance scale, "
                       f"requested {unit} 0, 1, 2, ... left to right")
            lines += [f"**{family}**: {caption}.", "", f"![{family} control]({link})", ""]
    lines += [f"- {line}" for line in no_judge]
    if missing:
        lines.append(f"- No control results for {', '.join(missing)}: run "
                     + ", ".join(f"`trilemma control {f}`" for f in missing) + ".")
    return "\n".join(lines).rstrip() + "\n"
