"""The "Image-to-image" section of reports/README.md: one row per i2i family (model against its
no-learning baseline) and the input | output | target figures; missing files read n/a."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trilemma import paths

COLUMNS = [("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
           ("judge_accuracy", "judge accuracy", "{:.3f}"), ("fid_classifier", "FID", "{:.2f}")]

INTRO = """\
Three image-to-image families on tasks derived from the digits themselves
(`src/trilemma/i2i/tasks.py`, deterministic), scored on the test digits. Each cell reads
*model (baseline)*, the baseline being the task's answer without learning: the edge map itself for
pix2pix, bicubic upsampling for SRGAN, the untranslated digit for CycleGAN. PSNR and SSIM compare
with the derived target of the same digit (torchmetrics; PSNR per image, capped at 100 dB, then
averaged); judge accuracy is the classifier's accuracy on the outputs against the true digit
labels (is the digit preserved?); FID is to the real targets, in the judge's features.

- **pix2pix**: Sobel edge magnitude -> digit; U-Net generator, PatchGAN discriminator on
  (input, image) pairs, adversarial + lambda * L1.
- **srgan**: 4x area-downsampled digit (7x7) -> 28x28; residual generator with sub-pixel
  (PixelShuffle) upsampling, PatchGAN discriminator, pixel MSE + content loss + 1e-3 adversarial.
  The content loss compares **our classifier's penultimate features, standing in for VGG**
  (the judge is frozen during SRGAN's training; its accuracy on the outputs is thus not an
  independent witness).
- **cyclegan**: digit (A) <-> digit with strokes dilated by a 3x3 max filter (B); two U-Net
  generators, two PatchGANs, least-squares adversarial, cycle-consistency and identity losses.
  Trained **unpaired**: every batch is split into two disjoint halves of different digits, one
  used as A and the other thickened as B. Only the evaluation uses the pairs (A -> B against
  the thickened version of the same digit); B -> A reads `back_*` in its metrics.json.
"""


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cell(scores: dict, key: str, fmt: str) -> str:
    model, base = scores.get(key), scores.get(f"baseline_{key}")
    text = "n/a" if model is None else fmt.format(model)
    return text if base is None else f"{text} ({fmt.format(base)})"


def section(i2i_families: list[str], out: Path = paths.REPORTS) -> str:
    """Markdown for reports/README.md (written into `out`): the table and figure links."""
    if not i2i_families:
        return ""
    head = ["family", "task", "baseline", *(title for _, title, _ in COLUMNS), "train s"]
    lines = ["## Image-to-image", "", INTRO,
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    figures = []
    for family in i2i_families:
        scores = _read(paths.eval_reports(family) / "metrics.json") or {}
        timing = _read(paths.train_reports(family) / "timing.json") or {}
        seconds = timing.get("train_seconds")
        lines.append("| " + " | ".join([
            family, str(scores.get("task", "not evaluated yet")),
            str(scores.get("baseline", "n/a")),
            *(_cell(scores, key, fmt) for key, _, fmt in COLUMNS),
            "n/a" if seconds is None else f"{seconds:.0f}"]) + " |")
        figure = paths.eval_reports(family) / "examples.png"
        if figure.exists():
            rel = Path(os.path.relpath(figure, out)).as_posix()
            figures.append(f"![{family}: input, baseline, output, target]({rel})")
    ceilings = [f"{f} {s['target_judge_accuracy']:.3f}" for f in i2i_families
                if (s := _read(paths.eval_reports(f) / "metrics.json"))
                and s.get("target_judge_accuracy") is not None]
    notes = ["Judge accuracy on the targets themselves: " + ", ".join(ceilings) + ".", ""] \
        if ceilings else []
    return "\n".join([*lines, "", *notes,
                      "Rows of each figure: input, baseline, output, target (test digits).", "",
                      "\n\n".join(figures), ""])
