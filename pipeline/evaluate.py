"""Stage `evaluate <family>`: the judge's view of a family's samples."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import data, metrics, paths, tracking
from trilemma.classifier import load_judge
from trilemma.errors import DataError
from trilemma.io import write_csv, write_json
from trilemma.runtime import device_name


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
    return blob


@user_errors
def evaluate(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
             device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Score samples/<family>.npz with the classifier: FID against the test set, Inception-style
    score, class histogram; write reports/eval/<family>/."""
    p, dev = setup(params, device)
    p.family(family)  # a family that is not in `families` is an error here too
    if dry_run:
        return print_settings({"evaluate": p.evaluate.model_dump(), "seed": p.seed,
                               "data": p.data.model_dump(), "device": str(dev)})
    blob = load_samples(paths.samples(family))
    mnist = data.load_npz(paths.DATA, p.data.train_size, p.data.test_size)
    judge = load_judge(paths.CLASSIFIER, dev)
    images, bs = blob["images"], p.evaluate.batch_size

    fid = metrics.fid(judge, mnist.x_test, images, dev, bs)
    is_mean, is_std = metrics.inception_score(judge, images, dev, p.seed, bs)
    histogram = metrics.class_histogram(metrics.predict(judge, images, dev, bs))
    result = {"fid_classifier": round(fid, 6), "is_classifier": round(is_mean, 6),
              "is_classifier_std": round(is_std, 6),
              "class_histogram": {str(d): round(float(f), 6) for d, f in enumerate(histogram)},
              "samples_per_second": round(float(blob["images_per_second"]), 2),
              "n_samples": len(images), "profile": p.profile, "device": device_name(dev)}
    out = paths.eval_reports(family)
    write_json(out / "metrics.json", result)
    write_csv(out / "class_histogram.csv",
              [{"digit": d, "fraction": round(float(f), 6)} for d, f in enumerate(histogram)])
    log(f"{family}: FID {fid:.3f}, IS {is_mean:.3f} +- {is_std:.3f}, "
        f"{result['samples_per_second']:.0f} images/s")
    with tracking.stage_run("evaluate", family, p.profile) as run:
        run.log_params(tracking.flatten({"evaluate": p.evaluate.model_dump(), "seed": p.seed,
                                         "data": p.data.model_dump(), "n_samples": len(images)}))
        run.log_metrics({k: v for k, v in result.items() if k != "class_histogram"})
        run.log_metrics({f"class_fraction_{d}": f for d, f in result["class_histogram"].items()})
