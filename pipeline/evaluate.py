"""Stage `evaluate <family>`: the judge's view of a family's samples and of its sampling sweeps."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import paths, tracking
from trilemma.errors import DataError
from trilemma.io import write_csv, write_json


def load_samples(path: Path) -> dict:
    """A samples file with uint8 images (N,28,28); DataError naming the file otherwise."""
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma sample {path.stem}` first")
    try:
        with np.load(path) as npz:
            blob = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable samples file ({err})") from None
    images = blob.get("images")
    if images is None or images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        got = "none" if images is None else f"{images.dtype}{list(images.shape)}"
        raise DataError(f"{path}: `images` must be uint8 [N,28,28], got {got}")
    if "images_per_second" not in blob:
        raise DataError(f"{path}: no `images_per_second`; run `trilemma sample` again")
    labels = blob.get("labels")
    if labels is not None and (labels.shape != (len(images),) or labels.min(initial=0) < 0
                               or labels.max(initial=0) > 9):
        raise DataError(f"{path}: `labels` must be {len(images)} digits 0-9, one per image")
    sweep = blob.get("sweep_images")
    if sweep is not None and (sweep.dtype != np.uint8 or sweep.shape[1:] != images.shape
                              or len(blob.get("sweep_value", ())) != len(sweep)):
        raise DataError(f"{path}: `sweep_images` must be uint8 [K,{len(images)},28,28] with one "
                        f"`sweep_value` each; run `trilemma sample` again")
    return blob


def sweep_rows(blob: dict, fids: list[float], scores: list[dict]) -> list[dict]:
    """One row per (knob, value): the main setting (first fid/score) and every sweep value."""
    main = {k.removeprefix("knob_"): float(v) for k, v in blob.items() if k.startswith("knob_")}
    settings = [(k, v, float(blob["images_per_second"])) for k, v in main.items()]
    settings += [(str(k), float(v), float(r)) for k, v, r in zip(
        blob.get("sweep_knob", []), blob.get("sweep_value", []),
        blob.get("sweep_images_per_second", []))]
    index = [0] * len(main) + list(range(1, len(fids)))  # the main images serve every knob's row
    rows = []
    for (knob, value, rate), i in zip(settings, index):
        rows.append({"knob": knob, "value": value, "main": i == 0, "fid_classifier": fids[i],
                     "is_classifier": scores[i]["is_classifier"],
                     "min_class_fraction": scores[i]["min_class_fraction"],
                     "label_accuracy": scores[i].get("label_accuracy"),
                     "samples_per_second": round(rate, 2)})
    return sorted(rows, key=lambda r: (r["knob"], -r["value"]))


@user_errors
def evaluate(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
             device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Score samples/<family>.npz with the classifier (FID against the test set, Inception-style
    score, class histogram, label accuracy of conditional families) and each sweep value's
    samples; write reports/eval/<family>/ (metrics.json, per_class.csv, sweep.csv)."""
    p, dev = setup(params, device)
    p.family(family)  # a family that is not in `families` is an error here too
    if dry_run:
        return print_settings({"evaluate": p.evaluate.model_dump(), "seed": p.seed,
                               "data": p.data.model_dump(), "device": str(dev)})
    from trilemma import data, metrics  # torchmetrics takes seconds to import: only when needed
    from trilemma.classifier import load_judge
    from trilemma.runtime import device_name

    blob = load_samples(paths.samples(family))
    mnist = data.load_npz(paths.DATA, p.data.train_size, p.data.test_size)
    judge = load_judge(paths.CLASSIFIER, dev)
    bs, labels = p.evaluate.batch_size, blob.get("labels")
    sets = [blob["images"], *blob.get("sweep_images", [])]
    fids = metrics.fids(judge, mnist.x_test, sets, dev, bs)
    scores = [metrics.judge_samples(judge, s, labels, dev, p.seed, bs) for s in sets]
    main = scores[0]

    result = {"fid_classifier": round(fids[0], 6), "is_classifier": round(main["is_classifier"], 6),
              "is_classifier_std": round(main["is_classifier_std"], 6),
              "min_class_fraction": round(main["min_class_fraction"], 6),
              "class_histogram": {str(d): round(float(f), 6) for d, f in enumerate(main["histogram"])},
              "samples_per_second": round(float(blob["images_per_second"]), 2),
              "n_samples": len(blob["images"]), "profile": p.profile, "device": device_name(dev)}
    if labels is not None:
        result["label_accuracy"] = round(main["label_accuracy"], 6)
    out = paths.eval_reports(family)
    write_json(out / "metrics.json", result)
    write_csv(out / "per_class.csv", metrics.generated_per_class(main["predictions"], labels))
    rows = sweep_rows(blob, fids, scores)
    write_csv(out / "sweep.csv", rows)
    accuracy = f", label accuracy {result['label_accuracy']:.3f}" if labels is not None else ""
    log(f"{family}: FID {fids[0]:.3f}, IS {main['is_classifier']:.3f} +- "
        f"{main['is_classifier_std']:.3f}{accuracy}, {result['samples_per_second']:.0f} images/s")
    for row in rows:
        if not row["main"]:
            log(f"  {row['knob']}={row['value']:g}: FID {row['fid_classifier']:.3f}, rarest digit "
                f"{row['min_class_fraction']:.3f}")
    with tracking.stage_run("evaluate", family, p.profile) as run:
        run.log_params(tracking.flatten({"evaluate": p.evaluate.model_dump(), "seed": p.seed,
                                         "data": p.data.model_dump(), "n_samples": len(sets[0])}))
        run.log_metrics({k: v for k, v in result.items() if k != "class_histogram"})
        run.log_metrics({f"class_fraction_{d}": f for d, f in result["class_histogram"].items()})
        run.log_artifact(out / "per_class.csv")
        run.log_artifact(out / "sweep.csv")
