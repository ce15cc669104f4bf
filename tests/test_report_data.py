"""`trilemma report` on other data than MNIST: K named classes, and an unlabelled image folder
(no judge), from synthetic metric files in the shapes the stages write."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trilemma import figures
from trilemma.errors import DataError
from trilemma.report import build, plots, sections
from trilemma.report.images import Images

OUT = Path("reports/quick")  # the report stage's folder for the quick profile
REASON = "the image folder has no class subfolders, so there are no labels to train a judge on."
DATA = "image folder data/faces (64x64 RGB, 3 classes)"
KNOBS = ("truncation", "steps", "guidance")
SWEEP_HEADER = ["knob", "setting", "value", "main", "n", "fid_classifier", "kid_classifier",
                "is_classifier", "precision", "recall", "min_class_fraction", "class_kl_uniform",
                "label_accuracy", "samples_per_second"]
JUDGE_SCORES = ["fid_classifier", "fid_classifier_std", "fid_classifier_ci_low",
                "fid_classifier_ci_high", "kid_classifier", "kid_classifier_std", "is_classifier",
                "is_classifier_std", "precision", "recall", "min_class_fraction",
                "class_kl_uniform"]


def _json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))  # sorted, as io.write_json


def _csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def _scores(judge: bool, k: int, rng: np.random.Generator) -> dict:
    """The judge's scores for one set of images: numbers, or null without a judge."""
    if not judge:
        return {**dict.fromkeys(JUDGE_SCORES), "class_histogram": {}, "judge_note": REASON}
    fractions = rng.dirichlet(np.ones(k))
    return {**{key: float(rng.uniform(1, 50)) for key in JUDGE_SCORES},
            "precision": 0.7, "recall": 0.6, "min_class_fraction": float(fractions.min()),
            "class_histogram": {str(i): float(f) for i, f in enumerate(fractions)}}


def _sweep_rows(knob: str, judge: bool, conditional: bool) -> list[dict]:
    settings = {"truncation": [("none", math.inf), ("1", 1.0)],
                "steps": [("ddim 5", 5), ("ddim 10", 10)], "guidance": [("0", 0.0), ("3", 3.0)]}
    rows = []
    for i, (setting, value) in enumerate(settings[knob]):
        scores = ({"fid_classifier": 40.0 - i, "kid_classifier": 5.0, "is_classifier": 2.0,
                   "precision": 0.5, "recall": 0.4, "min_class_fraction": 0.2,
                   "class_kl_uniform": 0.1, "label_accuracy": 0.8 if conditional else None}
                  if judge else {})
        rows.append({"knob": knob, "setting": setting, "value": value, "main": i == 0, "n": 32,
                     **scores, "samples_per_second": 100.0 * (i + 1)})
    return rows


def write_reports(root: Path, families: dict[str, dict], classes: list[str] | None,
                  inception: dict[str, float | None]) -> None:
    """Every file `trilemma report` reads. `families`: {name: {"sweeps": [knobs],
    "conditional": bool}}; `classes` None: no judge (an unlabelled folder); `inception`: Inception
    FID per family and "real" (None: not computed)."""
    rng = np.random.default_rng(0)
    judge, k = classes is not None, len(classes or [])
    out = root / "reports"
    clf = out / "classifier"
    per_class = [{"digit": i, "class": c, "n": 50, "correct": 45, "accuracy": 0.9}
                 for i, c in enumerate(classes or [])]
    if judge:
        _json(clf / "metrics.json", {"test_accuracy": 0.9, "min_class_accuracy": 0.9,
                                     "epochs": 1, "profile": "quick", "data": DATA,
                                     "classes": classes})
    else:
        _json(clf / "metrics.json", {"judge": False, "reason": REASON, "data": DATA,
                                     "profile": "quick"})
    _csv(clf / "per_class.csv", per_class, ["digit", "class", "n", "correct", "accuracy"])
    _csv(clf / "history.csv", [], ["epoch", "loss"])
    _json(clf / "timing.json", {"train_seconds": 12.5 if judge else 0.0, "device": "cpu"})
    _png(clf / "confusion.png")
    note = ("Inception-V3 from weights/inception.pt" if inception["real"] is not None
            else "no weights file given (evaluate.inception_weights is null)")
    inception_fields = {"is_inception": None, "is_inception_std": None, "inception_note": note}
    _json(out / "eval" / "real" / "metrics.json",
          {"n": 200, **_scores(judge, k, rng), **inception_fields,
           "fid_inception": inception["real"], "profile": "quick"})
    for name, spec in families.items():
        ev = out / "eval" / name
        scores = _scores(judge, k, rng)
        if judge and spec["conditional"]:
            scores["label_accuracy"] = 0.75
        _json(ev / "metrics.json", {**scores, **inception_fields, "n_samples": 64,
                                    "fid_inception": inception[name], "profile": "quick"})
        _json(ev / "timing.json", {"samples_per_second": 1234.5, "sample_seconds": 0.05,
                                   "device": "cpu"})
        columns = ["digit", "class", "generated", "fraction"] + (
            ["requested", "correct", "accuracy"] if spec["conditional"] else [])
        rows = [{"digit": i, "class": c, "generated": 20, "fraction": 1 / k, "requested": 20,
                 "correct": 15, "accuracy": 0.75} for i, c in enumerate(classes or [])]
        _csv(ev / "per_class.csv", rows, columns)
        for knob in KNOBS:
            rows = _sweep_rows(knob, judge, spec["conditional"]) if knob in spec["sweeps"] else []
            _csv(ev / f"{knob}_sweep.csv", rows, SWEEP_HEADER)
        train = out / "train" / name
        _csv(train / "loss_steps.csv", [{"step": s, "epoch": s / 10, "loss": 1 / s}
                                        for s in range(1, 4)], ["step", "epoch", "loss"])
        _json(train / "timing.json", {"train_seconds": 42.0, "device": "cpu",
                                      "peak_gpu_memory_gib": None, "peak_rss_gib": 1.0})
        _png(out / "samples" / name / "grid.png")


def summary_line(readme: str, family: str) -> dict[str, str]:
    """The README summary table's row for `family`, by column title."""
    lines = readme.split("## Quality, coverage, speed\n\n")[1].split("\n\n")[0].splitlines()
    titles = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == family:
            return dict(zip(titles, cells))
    raise AssertionError(f"no row for {family}")


@pytest.fixture
def no_commit(monkeypatch):
    monkeypatch.setattr(build, "git_commit", lambda: "0" * 12)  # the tmp dir is no git repo


def test_k_named_classes_give_k_rows_and_log_k(tmp_path, monkeypatch, no_commit):
    classes = ["cat", "dog", "fox"]
    write_reports(tmp_path, {"cgan": {"sweeps": ["truncation"], "conditional": True},
                             "ddpm": {"sweeps": ["steps"], "conditional": False}},
                  classes, {"real": None, "cgan": None, "ddpm": None})
    monkeypatch.chdir(tmp_path)
    readme = build.build(["cgan", "ddpm"], OUT)

    assert "log 3 = 1.10" in readme and "3 is the maximum" in readme and "log 10" not in readme
    assert "rarest class ↑" in readme and "rarest digit" not in readme
    assert f"test images of {DATA}" in readme and "MNIST" not in readme
    judge = readme.split("## The judge")[1]
    assert "| # | class | n | correct | accuracy |" in judge
    assert [name for name in classes if f"| {name} |" in judge] == classes
    accuracy = readme.split("accuracy per requested class")[1].split("##")[0]
    assert accuracy.count("| 0.750 |") == 3  # one row per class, not 10
    assert summary_line(readme, "cgan")["label accuracy ↑"] == "0.750"
    for name in ("class_histograms.png", "sweep_truncation.png", "sweep_steps.png",
                 "speed_corner.png", "trilemma.png", "loss_curves.png"):
        assert (tmp_path / OUT / "figures" / name).is_file(), name


def test_without_a_judge_the_report_shows_what_is_computable(tmp_path, monkeypatch, no_commit):
    write_reports(tmp_path, {"vae": {"sweeps": [], "conditional": False},
                             "ddpm": {"sweeps": ["steps"], "conditional": False}},
                  None, {"real": 5.25, "vae": 150.4, "ddpm": 87.6})
    figures_dir = tmp_path / OUT / "figures"
    _png(figures_dir / "class_histograms.png")  # left by an earlier build on labelled data
    monkeypatch.chdir(tmp_path)
    readme = build.build(["vae", "ddpm"], OUT)

    assert REASON.rstrip(".") in readme
    assert f"Data **{DATA}**" in readme
    for family, inception_fid in (("real data (floor)", "5.250"), ("vae", "150.4"),
                                  ("ddpm", "87.6")):
        row = summary_line(readme, family)
        assert row["Inception FID ↓"] == inception_fid
        for title in ("FID ↓", "× floor ↓", "KID ↓", "IS ↑", "precision ↑", "recall ↑",
                      "rarest class ↑", "KL to uniform ↓", "label accuracy ↑"):
            assert row[title] == "n/a", (family, title)
    assert summary_line(readme, "vae")["images/s ↑"] == "1,234"
    assert summary_line(readme, "ddpm")["train s"] == "42.0"
    steps = readme.split("### steps")[1]
    assert "| ddpm | ddim 5 (main) | 32 | 100.0 |" in steps and "Only the speed is shown" in steps
    assert "### truncation" not in readme  # no family swept it
    assert "No judge classifier was trained" in readme and "Test accuracy" not in readme
    assert "Inception FID" in readme.split("## Samples")[0].split("figures/trilemma.png")[1]
    assert "samples/vae/grid.png" in readme and "figures/loss_curves.png" in readme
    assert (figures_dir / "trilemma.png").is_file() and (figures_dir / "loss_curves.png").is_file()
    for name in ("class_histograms.png", "sweep_steps.png", "speed_corner.png"):
        assert not (figures_dir / name).exists(), name
    summary = pd.read_csv(tmp_path / OUT / "summary.csv")
    assert summary["fid_classifier"].isna().all() and summary["fid_over_floor"].isna().all()
    assert summary["fid_inception"].tolist() == [5.25, 150.4, 87.6]


def test_without_a_judge_or_inception_there_is_no_trilemma_figure(tmp_path, monkeypatch,
                                                                  no_commit):
    write_reports(tmp_path, {"vae": {"sweeps": [], "conditional": False}}, None,
                  {"real": None, "vae": None})
    monkeypatch.chdir(tmp_path)
    readme = build.build(["vae"], OUT)
    assert "No trilemma figure" in readme and "figures/trilemma.png" not in readme
    assert summary_line(readme, "vae")["Inception FID ↓"] == "n/a"
    assert not (tmp_path / OUT / "figures" / "trilemma.png").exists()


def test_mnist_files_without_the_new_keys_read_as_ten_digits(tmp_path, monkeypatch, no_commit):
    """Metric files written before image folders (no "data", no "classes", no "class" column)
    still give the MNIST wording."""
    digits = [str(d) for d in range(10)]
    write_reports(tmp_path, {"cgan": {"sweeps": ["truncation", "guidance"], "conditional": True}},
                  digits, {"real": None, "cgan": None})
    clf = tmp_path / "reports" / "classifier"
    metrics = json.loads((clf / "metrics.json").read_text())
    for key in ("data", "classes"):
        del metrics[key]
    _json(clf / "metrics.json", metrics)
    table = pd.read_csv(clf / "per_class.csv").drop(columns="class")
    table.to_csv(clf / "per_class.csv", index=False)
    monkeypatch.chdir(tmp_path)
    readme = build.build(["cgan"], OUT)
    for text in ("against the\nMNIST test set", "rarest digit ↑", "log 10 = 2.30",
                 "10 is the maximum", "accuracy per requested digit", "| digit | n | correct |",
                 "## The judge: classifier accuracy per digit (test set)", "Test accuracy"):
        assert text in readme, text
    assert "Data **" not in readme and "| # |" not in readme


def test_class_histogram_keys_sorted_as_strings_come_back_in_class_order():
    twelve = {str(i): float(i) for i in range(12)}
    as_written = dict(sorted(twelve.items()))  # "0", "1", "10", "11", "2", ...
    assert plots.in_class_order(as_written, []) == [float(i) for i in range(12)]
    named = {"fox": 0.5, "cat": 0.2, "dog": 0.3}
    assert plots.in_class_order(named, ["dog", "fox", "cat"]) == [0.3, 0.5, 0.2]


def test_confusion_figure_is_k_by_k_with_class_names():
    fig = figures.confusion_figure(np.diag([5, 6, 7]), ["cat", "dog", "fox"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "fox"]
    assert [t.get_text() for t in ax.texts] == ["5", "6", "7"]
    assert ax.images[0].get_array().shape == (3, 3)
    figures.pyplot().close(fig)


# the quick profile's summary rows where labels used to collide (vae/progan, ddpm/cfg_diffusion)
CROWDED = [{"family": "vae", "fid_classifier": 218.2, "samples_per_second": 6926.0, "recall": 0.50},
           {"family": "progan", "fid_classifier": 289.0, "samples_per_second": 6549.0,
            "recall": 0.18},
           {"family": "wgan_gp", "fid_classifier": 507.5, "samples_per_second": 9189.0,
            "recall": 0.0},
           {"family": "ddpm", "fid_classifier": 435.1, "samples_per_second": 136.4, "recall": 0.14},
           {"family": "cfg_diffusion", "fid_classifier": 525.1, "samples_per_second": 52.9,
            "recall": 0.17},
           {"family": "latent_diffusion", "fid_classifier": 102.6, "samples_per_second": 189.3,
            "recall": 0.50}]
FLOOR = {"fid_classifier": 1.737645, "fid_classifier_std": 0.603627}


def test_trilemma_floor_line_sits_at_the_floors_fid_and_no_labels_overlap():
    fig = plots.trilemma(CROWDED, FLOOR)
    ax = fig.axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    assert list(dashed[0].get_ydata()) == [FLOOR["fid_classifier"]] * 2  # not its std, 0.60
    assert any("FID 1.74" in t.get_text() for t in ax.texts)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts
             if t.get_text().split("\n")[0] in {r["family"] for r in CROWDED}]
    assert len(boxes) == len(CROWDED)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    figures.pyplot().close(fig)


def _curve(root: Path, family: str, seconds: list[float], fids: list[float], step: int) -> None:
    rows = [{"step": step * (i + 1), "images_seen": 64 * step * (i + 1), "train_seconds": s,
             "n": 500, "fid_classifier": f, "precision": 0.5, "recall": 0.5,
             "label_accuracy": None} for i, (s, f) in enumerate(zip(seconds, fids))]
    _csv(root / "reports" / "train" / family / "curve.csv", rows, list(rows[0]))


def test_learning_curves_give_verdicts_an_equal_budget_table_and_a_warning_first(
        tmp_path, monkeypatch, no_commit):
    digits = [str(d) for d in range(10)]
    write_reports(tmp_path, {"cgan": {"sweeps": [], "conditional": True},
                             "ddpm": {"sweeps": [], "conditional": False},
                             "vae": {"sweeps": [], "conditional": False}},
                  digits, {"real": None, "cgan": None, "ddpm": None, "vae": None})
    # cgan: 1500/s until 10 s, then flat: 90 -> 88 over the last third, plateaued at 30 s
    _curve(tmp_path, "cgan", [5, 10, 15, 20, 25, 30], [300, 150, 100, 90, 89, 88], step=10)
    # ddpm: FID = 1000/s to the end (80 s): a third less over its last third, still improving
    _curve(tmp_path, "ddpm", [10 * k for k in range(1, 9)], [100 / k for k in range(1, 9)],
           step=100)
    # vae: best at step 30 (60), then worse: 70 at two thirds, 80 at the end, past its best
    _curve(tmp_path, "vae", [5, 10, 15, 20, 25, 30], [300, 100, 60, 70, 75, 80], step=10)
    monkeypatch.chdir(tmp_path)
    readme = build.build(["cgan", "ddpm", "vae"], OUT)

    first = readme.split("Profile **")[0]
    assert "compares training budgets, not families" in first and "`ddpm` was still" in first
    assert "**Final models, not best ones.** `vae` scored better earlier" in first
    assert "`cgan`" not in first
    assert summary_line(readme, "cgan")["verdict"] == "plateaued"
    assert summary_line(readme, "ddpm")["verdict"] == "still improving"
    assert summary_line(readme, "vae")["verdict"] == "past its best"
    assert summary_line(readme, "real data (floor)")["verdict"] == "–"
    table = readme.split("**FID at equal training budgets**")[1]
    # budgets: the shortest total (cgan's 30 s) and its halvings; log-log interpolation is exact
    # on a power law; ddpm's first probe comes after 7.5 s
    assert ("| family | FID at 7.5 s | FID at 15 s | FID at 30 s | train s | final probe FID | "
            "best probe FID (step) |") in table
    assert "| cgan | 200.0 | 100.0 | 88.0 | 30.0 | 88.0 | 88.0 (60) |" in table
    assert "| ddpm | – | 66.7 | 33.3 | 80.0 | 12.5 | 12.5 (800) |" in table
    assert "| vae | 157.8 | 60.0 | 80.0 | 30.0 | 80.0 | 60.0 (30) |" in table
    assert "n = 500" in readme
    assert (tmp_path / OUT / "figures" / "learning_curves.png").is_file()
    summary = pd.read_csv(tmp_path / OUT / "summary.csv")
    assert summary["verdict"].tolist()[1:] == ["plateaued", "still improving", "past its best"]


def test_without_curves_there_is_no_warning_and_no_curve_figure(tmp_path, monkeypatch, no_commit):
    write_reports(tmp_path, {"vae": {"sweeps": [], "conditional": False}}, ["0", "1"],
                  {"real": None, "vae": None})
    _png(tmp_path / OUT / "figures" / "learning_curves.png")  # from an earlier build
    monkeypatch.chdir(tmp_path)
    readme = build.build(["vae"], OUT)
    assert readme.startswith(f"# trilemma report\n\nData **{DATA}** · Profile **quick**")
    assert "No learning curves" in readme and summary_line(readme, "vae")["verdict"] == "–"
    assert not (tmp_path / OUT / "figures" / "learning_curves.png").exists()


def test_curves_figure_draws_the_floor_at_its_fid():
    curve = pd.DataFrame({"step": [1, 2], "train_seconds": [1.0, 2.0],
                          "fid_classifier": [50.0, 20.0]})
    fig = plots.curves_figure({"vae": curve}, 1.737645)
    dashed = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in dashed] == [[1.737645] * 2]
    assert fig.axes[0].get_xscale() == fig.axes[0].get_yscale() == "log"
    figures.pyplot().close(fig)


def test_report_names_the_preview_steps_the_figures_use():
    from trilemma import denoising

    assert sections.PREVIEW_STEPS == denoising.PREVIEW_STEPS


def test_report_images_are_copies_inside_its_folder_and_none_outlives_its_report(
        tmp_path, monkeypatch, no_commit):
    write_reports(tmp_path, {"vae": {"sweeps": [], "conditional": False}}, None,
                  {"real": None, "vae": None})
    monkeypatch.chdir(tmp_path)
    stale = OUT / "images" / "samples" / "gone" / "grid.png"  # a family of an earlier build
    _png(stale)
    readme = build.build(["vae"], OUT)
    assert "![vae samples](images/samples/vae/grid.png)" in readme
    copy = OUT / "images" / "samples" / "vae" / "grid.png"
    assert copy.read_bytes() == Path("reports/samples/vae/grid.png").read_bytes()
    assert not stale.exists()
    # the stage image a report needs is gone: one error naming it, the last report left whole
    Path("reports/samples/vae/grid.png").unlink()
    with pytest.raises(DataError, match=r"^reports/samples/vae/grid.png: not found"):
        build.build(["vae"], OUT)
    assert copy.is_file()


def test_an_image_outside_reports_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "elsewhere.png")
    with pytest.raises(ValueError, match="only stage outputs under reports/"):
        Images(tmp_path / "images").link(tmp_path / "elsewhere.png")


@pytest.mark.parametrize("fids, expected", [
    ([300, 100, 60, 70, 75, 80], "past its best"),   # best 60, final 80: 25 % above it
    ([300, 100, 60, 62, 64, 65], "plateaued"),       # final 65: 8 % above the best 60
    ([300, 100, 90, 80, 60, 40], "still improving"),  # still falling, whatever came before
    ([50, 300, 200, 150, 120, 100], "still improving"),  # an early dip does not hide the fall
    ([100, 90], "plateaued"),                        # two probes: 7 % down over the last third
])
def test_the_verdict_names_a_family_whose_final_model_is_not_its_best(fids, expected):
    from trilemma.report.curves import verdict

    steps = [10 * (i + 1) for i in range(len(fids))]
    curve = pd.DataFrame({"step": steps, "train_seconds": steps, "fid_classifier": fids})
    assert verdict(curve) == expected
