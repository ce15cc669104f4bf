"""Build-time checks of the images against a family: one-line ConfigErrors a user can act on."""

from __future__ import annotations

from trilemma.data import ImageSpec
from trilemma.errors import ConfigError


def require_labels(family: str, image: ImageSpec) -> None:
    """A conditional family draws requested classes: it cannot train on unlabelled images."""
    if not image.labelled:
        raise ConfigError(f"{family} is conditional and needs class labels: the images have none "
                          f"(an image folder without class subfolders); remove {family} from "
                          f"the params' `families`")


def require_patch_divides(family: str, patch: int, image: ImageSpec) -> None:
    """The U-Net's pixel-unshuffle cuts the image into patch x patch blocks."""
    if image.size % patch:
        raise ConfigError(f"{family}.patch {patch} does not divide data.image_size {image.size}; "
                          f"use a patch that does (1 always works)")
