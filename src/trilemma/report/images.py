"""The stage images a report shows (sample grids, family figures, control and image-to-image
examples, the judge's confusion matrix), copied into the report's own images/ folder: each
profile's report (reports/<profile>/) then keeps its pictures when another profile's run rewrites
the stage outputs under reports/. The report builds the folder whole and swaps it in
(`io.atomic_dir`), so no copy outlives the report that linked it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trilemma import paths
from trilemma.errors import DataError

FOLDER = "images"  # beside the report's README.md


class Images:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)  # where the copies go (the report's images/ being built)

    def link(self, image: Path) -> str:
        """Copy `image`, a stage output under reports/, to images/<its path under reports/> and
        return the markdown link to the copy, relative to the report's README.md."""
        image = Path(image)
        inside = Path(os.path.relpath(image, paths.REPORTS))
        if inside.parts[0] == "..":
            raise ValueError(f"{image}: the report shows only stage outputs under {paths.REPORTS}/")
        if not image.is_file():
            raise DataError(f"{image}: not found (the report shows it: run the stage that "
                            f"writes it, or `dvc repro`)")
        copy = self.folder / inside
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, copy)
        return f"{FOLDER}/{inside.as_posix()}"
