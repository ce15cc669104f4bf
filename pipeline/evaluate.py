"""Stage `evaluate <family>`: the judge's view of a family's samples and of its sampling sweeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.common import (DeviceOption, DryRunOption, FamilyArgument, ParamsOption, log,
                             print_settings, setup, user_errors)
from trilemma import distributed, paths, provenance, tracking
from trilemma.config import SWEEPS
from trilemma.errors import NoJudge
from trilemma.evaluation import (SWEEP_COLUMNS, describe, load_samples, metrics_json,
                                 metrics_json_without_judge, require_scorable, scored_sets,
                                 sweep_rows)
from trilemma.io import atomic_dir, write_csv, write_json


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
    # inputs are checked: the run starts now (a tracker logs it after the stage)
    with tracking.stage_run("evaluate", family, p.profile) as run:
        sets, set_labels, main_index = scored_sets(blob)
        if judge is not None:
            embedded = [metrics.embed(judge, s, dev, bs, shard=True) for s in sets]
        if not distributed.is_rank0():  # the other torchrun ranks only embed their shares
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
