"""The report's "Image-to-image" section: one row per i2i family (model against its
no-learning baseline) and the input | output | target figures; missing files read n/a."""

from __future__ import annotations

from trilemma import paths
from trilemma.report import inputs
from trilemma.report.images import Images
from trilemma.report.prose import render

COLUMNS = [("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
           ("judge_accuracy", "judge accuracy", "{:.3f}"), ("fid_classifier", "FID", "{:.2f}")]
# the numbers of evaluate-i2i's metrics.json that the section formats
NUMBERS = ["n", "target_judge_accuracy", *(key for key, _, _ in COLUMNS),
           *(f"baseline_{key}" for key, _, _ in COLUMNS)]


def _cell(scores: dict, key: str, fmt: str) -> str:
    model, base = scores.get(key), scores.get(f"baseline_{key}")
    text = "n/a" if model is None else fmt.format(model)
    return text if base is None else f"{text} ({fmt.format(base)})"


def section(i2i_families: list[str], images: Images) -> str:
    """The report's markdown: the table and the example figures (copied by `images`)."""
    if not i2i_families:
        return ""
    head = ["family", "task", "baseline", *(title for _, title, _ in COLUMNS), "train s"]
    scored = {family: inputs.json_file(paths.eval_reports(family) / "metrics.json",
                                       numbers=NUMBERS, optional=True) or {}
              for family in i2i_families}  # a family not evaluated yet: n/a
    counts = {scores["n"] for scores in scored.values() if scores.get("n") is not None}
    digits = (f"{counts.pop():,} test digits (`evaluate.i2i_test_n`)"
              if len(counts) == 1 else "the test digits")
    lines = ["## Image-to-image", "", render("i2i_intro", digits=digits),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    figures = []
    for family in i2i_families:
        scores = scored[family]
        timing = inputs.json_file(paths.train_reports(family) / "timing.json",
                                  numbers=["train_seconds"], optional=True) or {}
        seconds = timing.get("train_seconds")
        lines.append("| " + " | ".join([
            family, str(scores.get("task", "not evaluated yet")),
            str(scores.get("baseline", "n/a")),
            *(_cell(scores, key, fmt) for key, _, fmt in COLUMNS),
            "n/a" if seconds is None else f"{seconds:.0f}"]) + " |")
        figure = paths.eval_reports(family) / "examples.png"
        if figure.exists():
            figures.append(f"![{family}: input, baseline, output, target]({images.link(figure)})")
    ceilings = [f"{f} {s['target_judge_accuracy']:.3f}" for f, s in scored.items()
                if s.get("target_judge_accuracy") is not None]
    notes = ["Judge accuracy on the targets themselves: " + ", ".join(ceilings) + ".", ""] \
        if ceilings else []
    return "\n".join([*lines, "", *notes,
                      "Rows of each figure: input, baseline, output, target (test digits).", "",
                      "\n\n".join(figures), ""])
