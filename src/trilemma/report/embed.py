"""The stage images a report shows, copied into the report's own folder: each profile's report
(reports/<profile>/) then keeps its pictures when another profile's run rewrites reports/samples,
reports/train and reports/control."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trilemma import paths
from trilemma.io import atomic_path


def embed(image: Path, out: Path) -> str:
    """Copy `image`, a stage output under reports/, to <out>/figures/<its path under reports/>
    and return the markdown link to the copy, relative to `out`."""
    inside = Path(*[p for p in Path(os.path.relpath(image, paths.REPORTS)).parts if p != ".."])
    copy = Path(out) / "figures" / inside
    with atomic_path(copy) as tmp:
        shutil.copyfile(image, tmp)
    return copy.relative_to(out).as_posix()
