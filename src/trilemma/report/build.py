"""The report stage's entry: README.md, summary.csv and figures/ in reports/<profile>/ from
the stage outputs under reports/ alone (metric files, tables and the sample stage's figures)."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from trilemma import paths
from trilemma.io import atomic_dir, atomic_path, write_csv
from trilemma.report import control as control_section
from trilemma.report import curves, i2i as i2i_section, noise, plots, sections, tables
from trilemma.report.images import FOLDER, Images
from trilemma.report.prose import render
from trilemma.tracking import git_commit


def build(families: list[str], out: Path, control: list[str] = (), i2i: list[str] = (),
          cost: str = "pipeline time not recorded", seed: int = 0) -> str:
    """Write the report into `out` (reports/<profile>/: README.md, summary.csv, figures/ and
    images/); return the README text. `control`: the families of the control stage (params
    `control.families`); `i2i`: the image-to-image families; `cost`: the line that says what
    the pipeline took; `seed`: the params' seed the stages ran with."""
    # every input first (report/inputs.py): a missing or broken file stops the report before it
    # writes anything, so the last report stays whole (a failed write part-way does not: the
    # summary, figures and README are written one after another)
    learning = curves.read_curves(families)  # the train stages' curve.csv files
    floor, scores = tables.floor_metrics(), {f: tables.eval_metrics(f) for f in families}
    rows = tables.summary_rows(floor, scores, curves.verdicts(learning))
    clf, clf_timing, per_class = tables.judge_files()
    data = tables.data_info(clf, per_class)
    # the seed spread of this profile, if one was made (it ranks by the judge's FID)
    spreads = noise.read(clf["profile"]) if data.judge else None
    by_knob = tables.sweeps(families)
    histories, hists = plots.loss_histories(families), plots.histograms(scores, data.classes)
    shown = plots.texts(rows, hists, data)
    sweep_sections = [sections.sweep_section(knob, by_family, floor.get("fid_classifier"), data)
                      for knob, by_family in by_knob.items()]
    devices = sorted({str(clf_timing["device"])} | {str(r[k]) for r in rows[1:]
                                                    for k in ("sample_device", "train_device")})
    notes = tables.inception_notes([floor, *scores.values()])
    inception = ("; ".join(n for n in notes if n) if any(r["fid_inception"] is not None for r in rows)
                 else "n/a: " + "; ".join(notes))
    header = dict(banner=curves.banner({r["family"]: r["verdict"] for r in rows[1:]}),
                  data_line="" if data.mnist else f"Data **{data.name}** · ",
                  profile=clf["profile"], devices=", ".join(devices), commit=git_commit(),
                  date=f"{datetime.now(timezone.utc):%Y-%m-%d}", torch=torch.__version__,
                  python=platform.python_version(), cost=cost)
    with atomic_dir(out / FOLDER) as folder:  # the stage images it shows, copied whole
        images = Images(folder)
        grids = "\n".join(f"| {f} | ![{f} samples]"
                          f"({images.link(paths.sample_figures(f) / 'grid.png')}) |"
                          for f in families)
        n = rows[1]["n"] if len(rows) > 1 else floor["n"]
        text = render(
            "readme", **header,
            summary=tables.markdown_table([tables.display(r, data.judge) for r in rows],
                                          tables.summary_columns(data)),
            n=n, test_set=data.test_set,
            noise=noise.section(clf["profile"], rows[1:], spreads, n, seed) if data.judge else "",
            floor_n=floor["n"], bullets=sections.metric_bullets(data, inception),
            trilemma=shown["trilemma"],
            curves=curves.section(learning, tables.fmt),
            grids=grids, histograms=shown["histograms"],
            diffusion_space=sections.diffusion_space_section(rows, by_knob, data),
            sweeps=sections.sweeps_section(sweep_sections),
            latent=sections.latent_section(families, images, data),
            label_accuracy=sections.label_accuracy_section(families, data),
            family_figures=sections.family_figures_section(families, images, data),
            control=(control_section.section(list(control), images, data.unit) if control
                     else ""),
            i2i=i2i_section.section(list(i2i), images),
            judge=sections.judge_section(clf, per_class, data, images))
        # the sections have read the rest (control, image-to-image, the images): now the outputs
        write_csv(out / "summary.csv", rows)
        plots.draw(rows, floor, data, by_knob, learning, histories, hists, out / "figures")
        with atomic_path(out / "README.md") as tmp:
            tmp.write_text(text)
    return text
