"""Stage `evaluate-i2i <family>`: an image-to-image family and its no-learning baseline scored on
the test digits: PSNR and SSIM against the derived targets, the judge's accuracy on the outputs
(is the digit kept?) and FID to the real targets in the judge's features."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.common import (DeviceOption, DryRunOption, I2IArgument, ParamsOption, log,
                             print_settings, setup, single_process, user_errors)
from trilemma import loader, paths, tracking
from trilemma.io import write_json
from trilemma.runtime import device_name

SCORES = ("psnr", "ssim", "judge_accuracy", "fid_classifier")


def score(metrics, judge, device, batch_size: int, images: np.ndarray, targets: np.ndarray,
          labels: np.ndarray, real) -> dict[str, float]:
    """PSNR/SSIM of uint8 `images` against uint8 `targets` (both (n,C,S,S)), the judge's accuracy
    on `images` against the digits' `labels`, and FID to `real` (the targets embedded)."""
    from trilemma.i2i.scores import psnr, ssim

    pred, true = torch.from_numpy(images).float() / 255, torch.from_numpy(targets).float() / 255
    embedded = metrics.embed(judge, images, device, batch_size)
    return {"psnr": float(psnr(pred, true).mean()), "ssim": float(ssim(pred, true).mean()),
            "judge_accuracy": float((embedded.predictions == labels).mean()),
            "fid_classifier": metrics.fid(real.features, embedded.features)}


@user_errors
def evaluate_i2i(family: I2IArgument, params: ParamsOption = Path("params.yaml"),
                 device: DeviceOption = "auto", dry_run: DryRunOption = False) -> None:
    """Translate the task inputs of `evaluate.i2i_test_n` test digits (seeded draw) with
    models/<family>.pt; write reports/eval/<family>/
    metrics.json (psnr, ssim, judge_accuracy, fid_classifier of the outputs, the same with a
    `baseline_` prefix for the task's no-learning answer, the judge's accuracy on the targets;
    CycleGAN also `back_`: B -> A), timing.json (translations per second) and examples.png
    (input | baseline | output | target)."""
    single_process("evaluate-i2i")
    p, dev = setup(params, device)
    cfg = loader.config(p, family, "translator")
    if dry_run:
        return print_settings({family: cfg.model_dump(), "evaluate": p.evaluate.model_dump(),
                               "data": p.data.model_dump(), "device": str(dev)})
    from trilemma import data, figures, i2i, metrics, pixels
    from trilemma.classifier import judge_for, load_judge
    from trilemma.i2i.scores import EXAMPLES, examples_figure

    images = data.load_npz(paths.DATA, p.data)
    judge = load_judge(paths.CLASSIFIER, dev)
    model = i2i.load(family, cfg, paths.model(family), dev, judge_for(family, dev))
    bs, task = p.evaluate.batch_size, model.task
    n = min(p.evaluate.i2i_test_n or len(images.x_test), len(images.x_test))
    # a seeded random share: the test set's order is not random (MNIST's first half is neater)
    picked = np.sort(np.random.default_rng(p.seed).permutation(len(images.x_test))[:n])
    digits, labels = images.x_test[picked], images.y_test[picked]  # uint8 (n,C,S,S), (n,)
    x = torch.from_numpy(digits).float() / 255
    outputs, baselines, targets, backs, seconds = [], [], [], [], 0.0
    back = getattr(model, "translate_back", None)  # CycleGAN's second generator
    for start in range(0, len(x), bs):
        inputs, target = task.pair(x[start:start + bs])
        t0 = time.perf_counter()
        out = model.translate(inputs).cpu()  # the copy waits for the device
        seconds += time.perf_counter() - t0
        outputs.append(pixels.from_unit(out))
        baselines.append(pixels.from_unit(task.baseline(inputs)))
        targets.append(pixels.from_unit(target))
        if back is not None:
            backs.append(pixels.from_unit(back(target).cpu()))
    out_u8, base_u8, target_u8 = (torch.cat(t).numpy() for t in (outputs, baselines, targets))
    # the judge's view of the test digits, embedded once by train-classifier
    test_digits = metrics.load_embedded(paths.TEST_EMBEDDING, len(images.x_test)).take(picked)
    with tracking.stage_run("evaluate-i2i", family, p.profile) as run:
        real = (test_digits if np.array_equal(target_u8, digits)  # targets: the digits themselves
                else metrics.embed(judge, target_u8, dev, bs))
        result = {"task": task.name, "baseline": task.baseline_name, "n": n,
                  "paired_training": task.paired_training, "profile": p.profile,
                  "target_judge_accuracy": float((real.predictions == labels).mean())}
        result.update(score(metrics, judge, dev, bs, out_u8, target_u8, labels, real))
        result.update({f"baseline_{k}": v for k, v in score(
            metrics, judge, dev, bs, base_u8, target_u8, labels, real).items()})
        if back is not None:  # B -> A against the original digits
            result.update({f"back_{k}": v for k, v in score(
                metrics, judge, dev, bs, torch.cat(backs).numpy(), digits, labels,
                test_digits).items()})
        result = {k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}
        timing = {"translations_per_second": round(n / max(seconds, 1e-9), 2),
                  "device": device_name(dev)}
        out = paths.eval_reports(family)
        write_json(out / "metrics.json", result)
        write_json(out / "timing.json", timing)
        figure = examples_figure(task, model.translate, x[:EXAMPLES],
                                 f"{family}: {task.description} (test digits)")
        figures.save_figure(figure, out / "examples.png")
        log(f"{family}: " + ", ".join(
            f"{k} {result[k]:.4g} (baseline {result['baseline_' + k]:.4g})" for k in SCORES)
            + f"; targets' judge accuracy {result['target_judge_accuracy']:.4f}")
        run.log_params(tracking.flatten({family: cfg.model_dump(), "seed": p.seed,
                                         "data": p.data.model_dump()}))
        run.log_reports("evaluate", family)
        run.log_artifact(out / "examples.png")
