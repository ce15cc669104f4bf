"""Stage `evaluate <family>`: the judge's view of a family's samples and of its sampling sweeps."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import distributed, paths, provenance, tracking
from trilemma.config import SWEEPS
from trilemma.data import MNIST_SPEC, ImageSpec
from trilemma.errors import DataError, NoJudge, brief
from trilemma.io import atomic_dir, write_csv, write_json

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


@user_errors
def evaluate(family: FamilyArgument, params: ParamsOption = Path("params.yaml"),
             device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Score samples/<family>.npz with the classifier (FID against the test set, Inception-style
    score, class histogram, label accuracy of conditional families) and each sweep value's
    samples; write reports/eval/<family>/ (metrics.json; timing.json: images/s and the device of
    the sample stage; per_class.csv; and <knob>_sweep.csv for
    truncation, steps and guidance: a row per setting, only a header where the family lacks
    that knob). Under torchrun each process embeds a share of the images; rank 0 scores and
    writes."""
    p, dev = setup(params, device)
    p.section(family, "generator")  # a family that is not in `families` is an error here too
    if dry_run:
        return print_settings({"evaluate": p.evaluate.model_dump(), "seed": p.seed,
                               "data": p.data.model_dump(), "device": str(dev)})
    from trilemma import data, metrics
    from trilemma.classifier import load_judge

    metrics.preload()  # torchmetrics loads while the inputs are read and the samples embedded

    images = data.load_npz(paths.DATA, p.data)
    require_scorable(len(images.x_test), "data.test_size", "the samples are scored against them")
    blob = load_samples(paths.samples(family), images.spec)
    try:
        judge, no_judge = load_judge(paths.CLASSIFIER, dev), None
        real = metrics.load_embedded(paths.TEST_EMBEDDING, len(images.x_test))  # by train-classifier
    except NoJudge as reason:  # unlabelled images: Inception's scores only, if any
        judge, no_judge = None, str(reason)
    bs, labels, ev = p.evaluate.batch_size, blob.get("labels"), p.evaluate
    inception_net, note = metrics.inception(ev.inception_weights, dev)  # a bad file fails here
    provenance.check(blob, paths.samples(family), family, paths.model(family), p)
    # inputs are checked: the run starts now, and MLflow's start-up overlaps the scoring
    with tracking.stage_run("evaluate", family, p.profile) as run:
        sets, set_labels, main_index = scored_sets(blob)
        if judge is not None:
            embedded = [metrics.embed(judge, s, dev, bs, shard=True) for s in sets]
        if not distributed.is_main():  # the other torchrun ranks only embed their shares
            return
        inception = metrics.inception_scores(inception_net, note, images.x_test, blob["images"],
                                             dev, p.seed)
        if judge is None:
            scores = [{"n": len(s)} for s in sets]
            main = {"predictions": np.zeros(0, np.int64)}
            result = metrics_json_without_judge(inception, no_judge)
            log(f"{family}: no judge scores: {no_judge}")
        else:
            scores = [metrics.score_set(real, e, lab, p.seed)
                      for e, lab in zip(embedded, set_labels)]
            main = scores[0]
            bootstrap = metrics.fid_bootstrap(real.features, embedded[0].features, ev.bootstrap,
                                              p.seed) if ev.bootstrap else None
            result = metrics_json(main, bootstrap, inception)
        result.update(n_samples=len(sets[0]), profile=p.profile)
        timing = {"samples_per_second": round(float(blob["images_per_second"]), 2),
                  "sample_seconds": round(float(blob["seconds"]), 3),
                  "device": str(blob["device"])}  # where the samples were drawn
        if int(blob.get("processes", 1)) > 1:  # drawn by torchrun processes together
            timing["sample_processes"] = int(blob["processes"])
        if "peak_gpu_memory_gib" in blob:
            timing["sample_peak_gpu_memory_gib"] = round(float(blob["peak_gpu_memory_gib"]), 3)
        out = paths.eval_reports(family)
        per_class = [] if judge is None else \
            metrics.generated_per_class(main["predictions"], images.spec.classes, labels)
        rows = sweep_rows(blob, scores, main_index)
        with atomic_dir(out) as staged:  # the report reads one set: all new files or all old
            write_json(staged / "metrics.json", result)  # results only: identical on every rerun
            write_json(staged / "timing.json", timing)
            write_csv(staged / "per_class.csv", per_class,
                      columns=["digit", "class", "generated", "fraction"] if judge is None else None)
            for knob in SWEEPS:  # one table per knob; a header only where the family lacks it
                write_csv(staged / f"{knob}_sweep.csv", [r for r in rows if r["knob"] == knob],
                          columns=SWEEP_COLUMNS)
        log(f"{family}: {describe(result)}, {timing['samples_per_second']:.0f} images/s")
        for row in rows:
            log(f"  {row['knob']} {row['setting']}{' (main)' if row['main'] else ''}: "
                f"{describe(row)}, {row['samples_per_second']:.0f} images/s (n={row['n']})")
        run.log_params(tracking.flatten({"evaluate": p.evaluate.model_dump(), "seed": p.seed,
                                         "data": p.data.model_dump(), "n_samples": len(sets[0])}))
        run.log_reports("evaluate", family)
        run.log_artifact(out / "per_class.csv")
        for knob in SWEEPS:
            run.log_artifact(out / f"{knob}_sweep.csv")
