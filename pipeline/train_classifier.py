"""Stage `train-classifier`: the judge CNN, its per-digit accuracy, and the real-data FID floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.common import (DeviceOption, DryRunOption, ParamsOption, log, print_settings, setup,
                             user_errors)
from pipeline.evaluate import describe, metrics_json
from trilemma import data, distributed, figures, paths, tracking
from trilemma.classifier import ClassifierTrainee, load_judge, save_judge
from trilemma.config import fingerprint
from trilemma.io import write_csv, write_json
from trilemma.runtime import device_name, generator, peak_memory
from trilemma.train import fit


@user_errors
def train_classifier(params: ParamsOption = Path("params.yaml"), device: DeviceOption = "auto",
                     dry_run: DryRunOption = False) -> None:
    """Train the judge CNN; write models/classifier.pt, reports/classifier/, and the real-data floor
    reports/eval/real/metrics.json (FID of a train subset against the test set)."""
    p, dev = setup(params, device)
    cfg = p.classifier
    settings = {"classifier": cfg.model_dump(), "seed": p.seed, "profile": p.profile,
                "data": p.data.model_dump(), "floor_n": p.sample.n}  # the checkpoint's fingerprint
    scoring = {"evaluate": p.evaluate.model_dump()}  # the floor's: not the training's
    if dry_run:
        return print_settings({**settings, **scoring, "device": str(dev)})
    from trilemma import metrics

    inception = metrics.inception(p.evaluate.inception_weights, dev)  # a bad file fails here
    mnist = data.load_npz(paths.DATA, p.data.train_size, p.data.test_size)
    steps = cfg.epochs * (len(mnist.x_train) // min(cfg.batch_size, len(mnist.x_train)))
    trainee = ClassifierTrainee(cfg, dev, total_steps=steps)
    x_train, y_train = torch.from_numpy(mnist.x_train), torch.from_numpy(mnist.y_train)

    def train_loop(on_epoch=None) -> list[dict]:
        return fit(trainee, x_train, y_train, cfg, name="classifier", device=dev, seed=p.seed,
                   checkpoint=paths.checkpoint("classifier"), fingerprint=fingerprint(settings),
                   on_epoch=on_epoch)

    if not distributed.is_main():  # the other torchrun ranks train their share; rank 0 writes
        train_loop()
        return
    out = paths.CLASSIFIER_REPORTS
    with tracking.stage_run("train-classifier", None, p.profile) as run:
        run.log_params(tracking.flatten({**settings, **scoring}))
        run.wait_started()  # MLflow's start-up must not share the CPU with timed training
        history = train_loop(lambda row: run.log_metrics(row, step=row["epoch"]))
        save_judge(trainee.net, cfg, paths.CLASSIFIER)
        paths.checkpoint("classifier").unlink(missing_ok=True)

        judge = load_judge(paths.CLASSIFIER, dev)  # evaluate exactly what was saved
        metrics.preload()  # now that training is timed: it loads while the test set is embedded
        test = metrics.embed(judge, mnist.x_test, dev, p.evaluate.batch_size)
        metrics.save_embedded(test, paths.TEST_EMBEDDING)  # every evaluate stage reads it
        predictions = test.predictions
        per_class = metrics.per_class_accuracy(mnist.y_test, predictions)
        confusion = np.zeros((10, 10), dtype=np.int64)
        np.add.at(confusion, (mnist.y_test, predictions), 1)
        accuracy = float((predictions == mnist.y_test).mean())
        summary = {"test_accuracy": round(accuracy, 6),
                   "min_class_accuracy": min(r["accuracy"] for r in per_class),
                   "epochs": cfg.epochs, "profile": p.profile}
        timing = {"train_seconds": round(sum(r["seconds"] for r in history), 2),
                  "device": device_name(dev), **peak_memory(dev)}
        write_json(out / "metrics.json", summary)  # results only: identical on every rerun
        write_json(out / "timing.json", timing)
        write_csv(out / "per_class.csv", per_class)
        write_csv(out / "history.csv", history)
        figures.save_figure(figures.confusion_figure(confusion), out / "confusion.png")
        log(f"classifier test accuracy {accuracy:.4f} (lowest digit "
            f"{summary['min_class_accuracy']:.4f})")

        floor = real_data_floor(judge, test, inception, mnist, p, dev)
        write_json(paths.REAL_METRICS, {**floor, "profile": p.profile})
        log(f"real-data floor ({floor['n']} train images against the test set): "
            f"{describe(floor)}")
        run.log_reports("train-classifier", None)
        for name in ("per_class.csv", "confusion.png", "history.csv"):
            run.log_artifact(out / name)


def real_data_floor(judge, test, inception: tuple, mnist: data.Mnist, p, dev: torch.device) -> dict:
    """What a perfect generator would score: a random train subset of the samples' size
    (`sample.n`), measured like a family's samples against the test set (`test`: its judge
    embedding). No model can be told apart from real data by less than this."""
    from trilemma import metrics

    n = min(p.sample.n, len(mnist.x_train))
    pick = torch.randperm(len(mnist.x_train), generator=generator(p.seed))[:n].numpy()
    real = metrics.embed(judge, mnist.x_train[pick], dev, p.evaluate.batch_size)
    scores = metrics.score_set(test, real, None, p.seed)
    bootstrap = metrics.fid_bootstrap(test.features, real.features, p.evaluate.bootstrap,
                                      p.seed) if p.evaluate.bootstrap else None
    net, note = inception
    scores_inception = metrics.inception_scores(net, note, mnist.x_test, mnist.x_train[pick], dev,
                                                p.seed)
    return {**metrics_json(scores, bootstrap, scores_inception), "n": n}
