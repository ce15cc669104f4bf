"""The README's sections that read the metric files and the stage figures: sweeps, family
figures, latent space, latent against pixel diffusion, label accuracy, the metric bullets and the
judge. Each returns markdown ("" when it has nothing to show); the prose is in templates/."""

from __future__ import annotations

import math

from trilemma import paths, registry
from trilemma.report import inputs
from trilemma.report.tables import (SWEEP_SCORES, Data, class_columns, has_fid, markdown_table,
                                    number, over_floor, summary_columns)
from trilemma.report.images import Images
from trilemma.report.prose import render

# the DDIM steps of the diffusion families' figures: denoising.PREVIEW_STEPS (a test keeps the
# two equal; the report reads files and imports no torch)
PREVIEW_STEPS = 20


def sweeps_section(sections: list[str]) -> str:
    """The sampling knobs' sections under one heading; "" without any."""
    return render("sweeps", sections="\n".join(sections)) if sections else ""


def sweep_section(knob: str, by_family: dict[str, list[dict]], floor: float | None,
                  data: Data) -> str:
    """The knob's table and figures; without judge scores, the speed column alone."""
    rows = [{"family": name, "setting": str(r["setting"]) + (" (main)" if r["main"] else ""),
             "n": r["n"], **{k: r.get(k) for k in SWEEP_SCORES},
             "fid_over_floor": over_floor(r.get("fid_classifier"), floor)}
            for name, family_rows in by_family.items() for r in family_rows]
    scores = (["fid_classifier", "fid_over_floor", *SWEEP_SCORES] if data.judge
              else ["samples_per_second"])
    names = summary_columns(data)
    table = markdown_table(rows, {"family": "family", "setting": knob, "n": "n",
                                  **{k: names[k] for k in scores}})
    drawn = has_fid([r for family_rows in by_family.values() for r in family_rows])
    corner = ("; the figure after the table puts every family on the same speed-quality axes"
              if drawn else "")
    text = render(f"sweep_{knob}", things=data.things, unit=data.unit, corner=corner)
    if not drawn:
        return render("sweep_speed_only", knob=knob, text=text, table=table,
                      reason=data.judge_reason)
    speed = render("speed_corner") if knob == "steps" else ""
    return render("sweep", knob=knob, text=text, table=table, speed=speed)


def family_figures_section(families: list[str], images: Images, data: Data) -> str:
    """Figures a family draws of itself in its train stage (all PNGs but the sample grid)."""
    blocks = []
    for name in families:
        folder = paths.train_reports(name)
        for png in sorted(folder.glob("*.png")):
            if png.name != "grid.png":
                link = images.link(png)
                blocks.append(f"### {name}: {png.stem}\n\n![{name} {png.stem}]({link})\n")
    if not blocks:
        return ""
    return render("family_figures", steps=PREVIEW_STEPS, things=data.things,
                  blocks="\n".join(blocks))


def latent_section(families: list[str], images: Images, data: Data) -> str:
    blocks = []
    for name in families:
        folder = paths.sample_figures(name)
        if (folder / "interpolation.png").exists():
            blocks.append(f"| {name} | ![{name} interpolation]"
                          f"({images.link(folder / 'interpolation.png')}) | "
                          f"![{name} arithmetic]({images.link(folder / 'arithmetic.png')}) |")
    if not blocks:
        return ""
    rows = (f" Conditional families show {data.unit} i % {len(data.classes)} in row i."
            if data.classes else "")  # no classes, no conditional families
    return render("latent", rows=rows, blocks="\n".join(blocks))


def _named(names: list[str]) -> str:
    """`a`, `b` and `c` denoise; `a` denoises."""
    quoted = [f"`{name}`" for name in names]
    listed = " and ".join(filter(None, (", ".join(quoted[:-1]), quoted[-1])))
    return f"{listed} {'denoises' if len(names) == 1 else 'denoise'}"


def diffusion_space_section(rows: list[dict], by_knob: dict[str, dict[str, list[dict]]],
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
    columns = {"family": "family", "setting": "sampler", "samples_per_second": "images/s ↑",
               "speedup": "speed-up", "fid_classifier": names["fid_classifier"],
               "label_accuracy": names["label_accuracy"], "train_seconds": "train s"}
    return render("diffusion_space", latent=_named(latent), pixel=_named(pixel),
                  base=base["family"], table=markdown_table(table, columns))


def label_accuracy_section(families: list[str], data: Data) -> str:
    tables = {}
    for name in families:
        table = inputs.csv_file(paths.eval_reports(name) / "per_class.csv",
                                ["digit", "generated", "fraction"], ["digit", "accuracy"])
        if "accuracy" in table and len(table):  # no judge: a header and no rows
            tables[name] = table.set_index("digit")["accuracy"].to_dict()
    if not tables:
        return ""
    indices = sorted({d for acc in tables.values() for d in acc})
    rows = [{"digit": d, "class": data.class_name(d),
             **{name: number(float(acc[d])) if d in acc else None for name, acc in tables.items()}}
            for d in indices]
    return render("label_accuracy", unit=data.unit, table=markdown_table(
        rows, {**class_columns(data), **{n: n for n in tables}}))


def metric_bullets(data: Data, inception: str) -> str:
    """What each column of the summary table means, in the data's words."""
    speed = render("speed")
    if not data.judge:
        return render("metrics_no_judge", reason=data.judge_reason, inception=inception,
                      speed=speed)
    k = len(data.classes)
    return render("metrics_judge", k=k, unit=data.unit, inception=inception,
                  even=f"{1 / k:.2g}", log_k=f"{math.log(k):.2f}", speed=speed)


def judge_section(clf: dict, per_class: list[dict], data: Data, images: Images) -> str:
    if not data.judge:
        return render("judge_none", reason=data.judge_reason)
    rows = [{**r, "class": data.class_name(int(r["digit"]))} for r in per_class]
    table = markdown_table(rows, {**class_columns(data), "n": "n", "correct": "correct",
                                  "accuracy": "accuracy"})
    return render("judge", unit=data.unit, accuracy=f"{clf['test_accuracy']:.4f}",
                  epochs=clf["epochs"], table=table,
                  confusion=images.link(paths.CLASSIFIER_REPORTS / "confusion.png"))
