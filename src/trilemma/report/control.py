"""The report's section on controllable generation, from the control stage's files
(reports/control/<family>/) and the referee's (reports/control/referee/)."""

from __future__ import annotations

from trilemma import paths
from trilemma.errors import DataError
from trilemma.report import inputs
from trilemma.report.images import Images
from trilemma.report.prose import render

FIGURE = "before_after.png"  # the control stage's figure, in reports/control/<family>/
# what the section shows of a steered family's metrics.json, and of each guidance row
STEER_NUMBERS = ["judge_before_success", "judge_after_success", "referee_before_success",
                 "referee_after_success", "mean_z_norm_before", "mean_z_norm_after",
                 "per_class", "steps", "lr", "prior_weight"]
GUIDANCE_NUMBERS = ["scale", "n", "judge_accuracy", "referee_accuracy", "fid_classifier"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _two(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"  # null: a FID that was not finite


def _result(family: str) -> dict | None:
    """The control stage's metrics.json of `family`, with what the section shows of it; None
    when the stage has not run."""
    path = paths.control_reports(family) / "metrics.json"
    result = inputs.json_file(path, optional=True)
    if result is None or result.get("judge") is False:  # without a judge: a reason alone
        return result
    inputs.require(path, result, ["kind"])
    if result["kind"] == "steer":
        inputs.check(path, result, ["referee_per_class", *STEER_NUMBERS], STEER_NUMBERS)
        inputs.check(path, result["referee_per_class"], numbers=result["referee_per_class"],
                     part="referee_per_class")
        return result
    inputs.require(path, result, ["guidance"])
    if not isinstance(result["guidance"], list):
        raise DataError(f"{path}: 'guidance' is not a list of rows")
    for row in result["guidance"]:
        inputs.check(path, row, ["method", *GUIDANCE_NUMBERS], GUIDANCE_NUMBERS,
                     part="guidance row")
    return result


def _rates(family: str) -> dict:
    """Images per second at each guidance scale (the control stage's timing.json), {} without."""
    path = paths.control_reports(family) / "timing.json"
    timing = inputs.json_file(path, optional=True) or {}
    rates = timing.get("images_per_second", {})
    return inputs.check(path, rates, numbers=rates, part="images_per_second")


def section(families_in_control: list[str], images: Images, unit: str) -> str:
    """Markdown: the steering table (judge and referee success before/after, referee success per
    class), the before/after figures, and one guidance table for classifier guidance and
    classifier-free guidance. `images` copies the figures into the report; `unit` is what one
    class is called ("digit", "class"). Missing files become a line saying which stage to run."""
    lines = ["## Controllable generation", ""]
    if not families_in_control:
        return "\n".join(lines + [render("control_none"), ""])
    referee = inputs.json_file(paths.REFEREE_REPORTS / "metrics.json", numbers=["test_accuracy"],
                               optional=True)
    lines += [render("control_intro", unit=unit, referee=(
        f" The referee's test accuracy is {referee['test_accuracy']:.4f}."
        if referee and referee.get("test_accuracy") is not None else
        " (No referee metrics: run `trilemma train-referee`.)")), ""]
    results, missing, no_judge = {}, [], []
    for family in families_in_control:
        result = _result(family)
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
            render("control_steering", unit=unit),
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
        lines += [render("control_guidance")]
        for family, r in guided.items():
            rates = _rates(family)
            for row in r["guidance"]:
                rate = rates.get(f"{row['scale']:g}")
                lines.append(f"| {family} | {row['method']} | {row['scale']:g} | {row['n']} | "
                             f"{_pct(row['judge_accuracy'])} | {_pct(row['referee_accuracy'])} | "
                             f"{_two(row['fid_classifier'])} | "
                             f"{'n/a' if rate is None else f'{rate:.0f}'} |")
        lines.append("")
    for family in results:
        figure = paths.control_reports(family) / FIGURE
        if figure.exists():
            link = images.link(figure)
            caption = (f"before (prior latents) and after steering, two rows per {unit}"
                       if family in steered else "the same noise at each guidance scale, "
                       "requested labels 0, 1, 2, ... left to right")
            lines += [f"**{family}**: {caption}.", "", f"![{family} control]({link})", ""]
    lines += [f"- {line}" for line in no_judge]
    if missing:
        lines.append(f"- No control results for {', '.join(missing)}: run "
                     + ", ".join(f"`trilemma control {f}`" for f in missing) + ".")
    return "\n".join(lines).rstrip() + "\n"
