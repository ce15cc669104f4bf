"""What the evaluate stage reads and writes, for every stage that scores images: a samples file
checked against the data set's shape, the sets it holds (main images, sweep settings), and the
metrics.json, sweep rows and log line made of their scores."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import DataError, brief

SCORE_COLUMNS = ["fid_classifier", "kid_classifier", "is_classifier", "precision", "recall",
                 "min_class_fraction", "class_kl_uniform", "label_accuracy"]
SWEEP_COLUMNS = ["knob", "setting", "value", "main", "n", *SCORE_COLUMNS, "samples_per_second"]


def scoring_minimum() -> int:
    """The fewest images a set can be scored with: precision/recall measures each point's k-th
    nearest neighbour in its own set."""
    from trilemma.metrics import PR_K

    return PR_K + 1


def require_scorable(n: int, what: str, fix: str) -> None:
    """DataError `what: n images; ...` when a set is too small to score (before any output)."""
    need = scoring_minimum()
    if n < need:
        raise DataError(f"{what}: {n} images; scoring needs at least {need} (precision/recall's "
                        f"k-th neighbour and the point itself); {fix}")


def load_samples(path: Path, image: ImageSpec = MNIST_SPEC) -> dict:
    """A samples file with uint8 images (N,C,S,S) of the data set's shape (`image`), labels among
    its classes; DataError naming the file otherwise."""
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma sample {path.stem}` first")
    try:
        with np.load(path) as npz:
            blob = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable samples file ({brief(err)})") from None
    shape = (image.channels, image.size, image.size)
    shown = ",".join(map(str, shape))
    images = blob.get("images")
    if images is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        got = "none" if images is None else f"{images.dtype}{list(images.shape)}"
        raise DataError(f"{path}: `images` must be uint8 [N,{shown}] like the data set, got {got}; "
                        "run `trilemma sample` again")
    require_scorable(len(images), str(path), "run `trilemma sample` again")
    if any(key not in blob for key in ("images_per_second", "seconds", "device")):
        raise DataError(f"{path}: no sampling time or device; run `trilemma sample` again")
    for key in ("images_per_second", "seconds", "sweep_images_per_second"):
        times = np.asarray(blob.get(key, []))  # the speed columns read them
        if times.dtype.kind not in "iuf" or not np.all(np.isfinite(times) & (times > 0)):
            raise DataError(f"{path}: `{key}` must be positive numbers; run `trilemma sample` "
                            f"again")
    labels = blob.get("labels")
    top = image.num_classes - 1
    if labels is not None and (labels.shape != (len(images),) or labels.min(initial=0) < 0
                               or labels.max(initial=0) > top):
        raise DataError(f"{path}: `labels` must be {len(images)} classes 0-{top}, one per image")
    sweep = blob.get("sweep_images")
    if sweep is not None and (sweep.dtype != np.uint8 or sweep.ndim != 5
                              or sweep.shape[2:] != shape or sweep.shape[1] > len(images)
                              or any(len(blob.get(k, ())) != len(sweep)
                                     for k in ("sweep_knob", "sweep_value", "sweep_label"))):
        raise DataError(f"{path}: `sweep_images` must be uint8 [K,M<={len(images)},{shown}] with one "
                        f"`sweep_knob`, `sweep_value` and `sweep_label` each; run `trilemma "
                        f"sample` again")
    if sweep is not None and len(sweep):
        require_scorable(sweep.shape[1], f"{path}: `sweep_images`", "run `trilemma sample` again")
    return blob


def scored_sets(blob: dict) -> tuple[list[np.ndarray], list[np.ndarray | None], int]:
    """The image sets to score, their requested labels, and the index of the set that stands for
    the main setting in the sweep tables: the main images, then (when sweeps use fewer images,
    `sample.sweep_n`) the first M of them, so every row of a sweep table has the same n, then
    one set per sweep setting."""
    images, labels = blob["images"], blob.get("labels")
    sweeps = list(blob.get("sweep_images", []))
    m = sweeps[0].shape[0] if sweeps else len(images)
    sets, set_labels = [images], [labels]
    if m < len(images):
        sets.append(images[:m])
        set_labels.append(None if labels is None else labels[:m])
    main_index = len(sets) - 1
    sets += sweeps
    set_labels += [None if labels is None else labels[:m]] * len(sweeps)
    return sets, set_labels, main_index


def sweep_rows(blob: dict, scores: list[dict], main_index: int = 0) -> list[dict]:
    """One row per (knob, setting): the main setting (set `main_index`) and every sweep value
    (the sets after it), truncation from loose to tight, other knobs in ascending order."""
    main = [(k.removeprefix("knob_"), float(v), str(blob[f"label_{k.removeprefix('knob_')}"]),
             float(blob["images_per_second"]), main_index)
            for k, v in blob.items() if k.startswith("knob_")]
    sweep = [(str(k), float(v), str(label), float(rate), main_index + 1 + i)
             for i, (k, v, label, rate) in enumerate(zip(
                 blob.get("sweep_knob", []), blob.get("sweep_value", []),
                 blob.get("sweep_label", []), blob.get("sweep_images_per_second", [])))]
    rows = []
    for knob, value, label, rate, i in main + sweep:
        rows.append({"knob": knob, "setting": label, "value": value, "main": i == main_index,
                     "n": scores[i]["n"], **{k: _round(scores[i].get(k)) for k in SCORE_COLUMNS},
                     "samples_per_second": round(rate, 2)})
    return sorted(rows, key=lambda r: (r["knob"], -r["value"] if r["knob"] == "truncation"
                                       else r["value"]))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def metrics_json(scores: dict, bootstrap: dict | None, inception: dict) -> dict:
    """The metrics.json of one sample set: every score of `metrics.score_set` (rounded), FID's bootstrap
    spread, the class histogram, and the Inception columns."""
    result = {k: _round(scores[k]) for k in [*SCORE_COLUMNS, "kid_classifier_std",
                                               "is_classifier_std"] if k in scores}
    if bootstrap is not None:
        result.update(fid_classifier_std=_round(bootstrap["std"]),
                      fid_classifier_ci_low=_round(bootstrap["low"]),
                      fid_classifier_ci_high=_round(bootstrap["high"]))
    result["class_histogram"] = {str(d): round(float(f), 6) for d, f in enumerate(scores["histogram"])}
    result.update({k: v if isinstance(v, str) else _round(v) for k, v in inception.items()})
    return result


def metrics_json_without_judge(inception: dict, reason: str) -> dict:
    """The metrics.json of a sample set when there is no judge: its scores n/a, and why."""
    return {**{k: None for k in SCORE_COLUMNS}, "class_histogram": {},
            **{k: v if isinstance(v, str) else _round(v) for k, v in inception.items()},
            "judge_note": reason}


def describe(scores: dict) -> str:
    """One log line's worth of a metrics.json or sweep row."""
    if scores.get("fid_classifier") is None:  # no judge
        inception = scores.get("fid_inception")
        return f"Inception FID {inception:.3f}" if inception is not None else "no judge scores"
    spread = f" +- {scores['fid_classifier_std']:.2f}" if scores.get("fid_classifier_std") else ""
    text = (f"FID {scores['fid_classifier']:.3f}{spread}, KID {scores['kid_classifier']:.4f}, "
            f"IS {scores['is_classifier']:.3f}, precision {scores['precision']:.3f}, recall "
            f"{scores['recall']:.3f}, rarest class {scores['min_class_fraction']:.3f}, KL to "
            f"uniform {scores['class_kl_uniform']:.3f}")
    if scores.get("label_accuracy") is not None:
        text += f", label accuracy {scores['label_accuracy']:.3f}"
    if scores.get("fid_inception") is not None:
        text += f", Inception FID {scores['fid_inception']:.3f} IS {scores['is_inception']:.3f}"
    return text
