"""Stage `train-classifier`: the judge CNN, its per-digit accuracy, and the real-data FID floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.common import (DeviceOption, DryRunOption, ParamsOption, log, print_settings, setup,
                             user_errors)
from trilemma import data, distributed, figures, paths, tracking
from trilemma.classifier import (ClassifierTrainee, load_judge, pixel_stats, save_judge,
                                 save_no_judge)
from trilemma.config import fingerprint
from trilemma.evaluation import (describe, metrics_json, metrics_json_without_judge,
                                 require_scorable)
from trilemma.io import atomic_dir, remove, write_csv, write_json
from trilemma.runtime import device_name, generator, peak_memory
from trilemma.train import fit


@user_errors
def train_classifier(params: ParamsOption = Path("params.yaml"), device: DeviceOption = "auto",
                     dry_run: DryRunOption = False) -> None:
    """Train the judge CNN on the data set's classes; write models/classifier.pt, the judge's view
    of the test set models/test_embedding.pt, reports/classifier/, and the real-data floor
    reports/eval/real/metrics.json (FID of a train subset against the test set). Images without
    labels get no judge: the files then say why, and the floor is Inception's alone."""
    p, dev = setup(params, device)
    cfg = p.classifier
    settings = {"classifier": cfg.model_dump(), "seed": p.seed, "profile": p.profile,
                "data": p.data.model_dump(), "floor_n": p.sample.n}  # the checkpoint's fingerprint
    scoring = {"evaluate": p.evaluate.model_dump()}  # the floor's: not the training's
    if dry_run:
        return print_settings({**settings, **scoring, "device": str(dev)})
    from trilemma import metrics

    inception = metrics.inception(p.evaluate.inception_weights, dev)  # a bad file fails here
    images = data.load_npz(paths.DATA, p.data)
    if not images.spec.labelled:  # nothing to train; rank 0 writes why
        return no_judge(images, inception, p, dev) if distributed.is_rank0() else None
    # every check that can fail runs before the first output (the old judge) is replaced
    require_scorable(len(images.x_test), "data.test_size", "the real-data floor is scored "
                     "against the test set")
    require_scorable(min(p.sample.n, len(images.x_train)), "data.train_size",
                     "the real-data floor scores min(sample.n, training images) of them")
    trainee = ClassifierTrainee(cfg, dev, len(images.x_train), images.spec,
                                *pixel_stats(images.x_train, images.source))
    x_train, y_train = torch.from_numpy(images.x_train), torch.from_numpy(images.y_train)
    distributed.check_batch(min(cfg.batch_size, len(x_train)), "classifier")  # before MLflow starts

    def train_loop(on_epoch=None) -> list[dict]:
        return fit(trainee, x_train, y_train, cfg, name="classifier", device=dev, seed=p.seed,
                   checkpoint=paths.checkpoint("classifier"), fingerprint=fingerprint(settings),
                   on_epoch=on_epoch, trace=trace,
                   checkpoint_seconds=p.train.checkpoint_seconds)

    trace: list[dict] = []  # the loss curve by optimisation step, for MLflow
    if not distributed.is_rank0():  # the other torchrun ranks train their share; rank 0 writes
        train_loop()
        return
    out = paths.CLASSIFIER_REPORTS
    with tracking.stage_run("train-classifier", None, p.profile) as run:
        run.log_params(tracking.flatten({**settings, **scoring}))
        history = train_loop(lambda row: run.log_training(row, trace))
        save_judge(trainee.net, cfg, images.spec, paths.CLASSIFIER)

        judge = load_judge(paths.CLASSIFIER, dev)  # evaluate exactly what was saved
        test = metrics.embed(judge, images.x_test, dev, p.evaluate.batch_size)
        metrics.save_embedded(test, paths.TEST_EMBEDDING)  # every evaluate stage reads it
        predictions = test.predictions
        classes = images.spec.classes
        per_class = metrics.per_class_accuracy(images.y_test, predictions, classes)
        confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
        np.add.at(confusion, (images.y_test, predictions), 1)
        accuracy = float((predictions == images.y_test).mean())
        summary = {"test_accuracy": round(accuracy, 6),
                   "min_class_accuracy": min(r["accuracy"] for r in per_class),
                   "epochs": cfg.epochs, "classes": list(classes), "data": images.description,
                   "profile": p.profile}
        timing = {"train_seconds": round(sum(r["seconds"] for r in history), 2),
                  "device": device_name(dev), **peak_memory(dev)}
        log(f"classifier test accuracy {accuracy:.4f} (lowest class "
            f"{summary['min_class_accuracy']:.4f})")
        floor = real_data_floor(judge, test, inception, images, p, dev)
        # the models first, then the reports, once every score is computed: both folders are
        # swapped in together (the floor's, then the judge's), a failure leaves the old ones
        with atomic_dir(out) as staged, atomic_dir(paths.REAL_METRICS.parent) as staged_floor:
            write_json(staged / "metrics.json", summary)  # results only: identical on every rerun
            write_json(staged / "timing.json", timing)
            write_csv(staged / "per_class.csv", per_class)
            write_csv(staged / "history.csv", history)
            figures.save_figure(figures.confusion_figure(confusion, list(classes)),
                                staged / "confusion.png")
            write_json(staged_floor / paths.REAL_METRICS.name, {**floor, "profile": p.profile})
        remove(paths.checkpoint("classifier"))  # kept until the reports are in
        log(f"real-data floor ({floor['n']} train images against the test set): "
            f"{describe(floor)}")
        run.log_reports("train-classifier", None)  # read from the swapped-in folders
        for name in ("per_class.csv", "confusion.png", "history.csv"):
            run.log_artifact(out / name)


def floor_pick(images: data.ImageData, n: int, seed: int) -> np.ndarray:
    """The random training images that stand for a perfect generator's samples: as many as a
    family's (`sample.n`), at most the whole training set."""
    n = min(n, len(images.x_train))
    return torch.randperm(len(images.x_train), generator=generator(seed))[:n].numpy()


def real_data_floor(judge, test, inception: tuple, images: data.ImageData, p,
                    dev: torch.device) -> dict:
    """What a perfect generator would score: a random train subset of the samples' size
    (`sample.n`), measured like a family's samples against the test set (`test`: its judge
    embedding). No model can be told apart from real data by less than this."""
    from trilemma import metrics

    pick = floor_pick(images, p.sample.n, p.seed)
    n = len(pick)
    real = metrics.embed(judge, images.x_train[pick], dev, p.evaluate.batch_size)
    scores = metrics.score_set(test, real, None, p.seed)
    bootstrap = metrics.fid_bootstrap(test.features, real.features, p.evaluate.bootstrap,
                                      p.seed) if p.evaluate.bootstrap else None
    net, note = inception
    scores_inception = metrics.inception_scores(net, note, images.x_test, images.x_train[pick],
                                                dev, p.seed)
    return {**metrics_json(scores, bootstrap, scores_inception), "n": n}


def no_judge(images: data.ImageData, inception: tuple, p, dev: torch.device) -> None:
    """Unlabelled images: no classifier can be trained. Every output of the stage is still
    written, saying why, so the pipeline goes on; the floor is Inception's when it is there."""
    from trilemma import metrics

    reason = (f"{images.description} has no class labels (no class subfolders), so no judge "
              "classifier was trained and its scores (FID/KID/IS/precision/recall/class "
              "coverage in judge features) cannot be computed")
    log(f"no judge: {reason}")
    save_no_judge(reason, images.spec, paths.CLASSIFIER)
    metrics.save_embedded(metrics.Embedded(torch.zeros(0, 0), torch.zeros(0, 0)),
                          paths.TEST_EMBEDDING)
    pick = floor_pick(images, p.sample.n, p.seed)
    n = len(pick)
    net, note = inception
    floor = metrics.inception_scores(net, note, images.x_test, images.x_train[pick], dev, p.seed)
    out = paths.CLASSIFIER_REPORTS
    with atomic_dir(out) as staged, atomic_dir(paths.REAL_METRICS.parent) as staged_floor:
        write_json(staged / "metrics.json", {"judge": False, "reason": reason,
                                             "data": images.description, "profile": p.profile})
        write_json(staged / "timing.json", {"train_seconds": 0.0, "device": device_name(dev)})
        write_csv(staged / "per_class.csv", [],
                  columns=["digit", "class", "n", "correct", "accuracy"])
        write_csv(staged / "history.csv", [], columns=["epoch", "loss"])
        figures.save_figure(figures.message_figure(f"no judge: {reason}"),
                            staged / "confusion.png")
        write_json(staged_floor / paths.REAL_METRICS.name,
                   {**metrics_json_without_judge(floor, reason), "n": n, "profile": p.profile})
    log(f"real-data floor ({n} train images against the test set): "
        + (f"Inception FID {floor['fid_inception']:.3f}" if floor["fid_inception"] is not None
           else f"n/a ({note})"))
    with tracking.stage_run("train-classifier", None, p.profile) as run:
        run.log_params({"judge": "none", "reason": reason})
        run.log_reports("train-classifier", None)
