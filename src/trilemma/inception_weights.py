"""The FID reference Inception-V3 weights on demand (`evaluate.inception_weights: auto`): the file
torch-fidelity downloads (the TensorFlow 2015-12-05 graph ported by pytorch-fid), fetched once,
checked against the SHA-256 prefix published in its name, and kept in torch's cache directory,
where torch-fidelity keeps its own copy, so either tool finds the other's download."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from urllib.request import Request, urlopen

from trilemma.errors import DataError
from trilemma.io import atomic_path

# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (torch-fidelity 0.3/0.4)
URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
       "weights-inception-2015-12-05-6726825d.pth")
TIMEOUT_S = 30.0  # per connection attempt and per read: a dead network fails, never hangs
CHUNK = 1 << 20


def hash_prefix(url: str) -> str:
    """The published SHA-256 prefix in a file name `name-<hex>.pth` (torch.hub's convention)."""
    match = re.search(r"-([a-f0-9]{8,})\.", url.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"{url}: no hash in the file name")
    return match.group(1)


def cache_dir() -> Path:
    """torch's checkpoint cache: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/...)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


class Unreachable(Exception):
    """The download failed on the network side (offline, refused, timed out)."""


def _chunks(src):
    try:
        while chunk := src.read(CHUNK):
            yield chunk
    except OSError as err:  # a read that failed is the network's, not the disk's
        raise Unreachable(getattr(err, "reason", err)) from None


def download(url: str, dest: Path, expected_prefix: str) -> None:
    """`url` to `dest`, atomically, only if its SHA-256 starts with `expected_prefix`.
    ValueError on a mismatch (nothing written); Unreachable when offline; DataError when `dest`
    cannot be written."""
    digest = hashlib.sha256()
    try:
        src = urlopen(Request(url, headers={"User-Agent": "trilemma"}), timeout=TIMEOUT_S)
    except OSError as err:  # URLError is one
        raise Unreachable(getattr(err, "reason", err)) from None
    with src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for chunk in _chunks(src):
            digest.update(chunk)
            out.write(chunk)
        if not digest.hexdigest().startswith(expected_prefix):
            raise ValueError(f"sha256 {digest.hexdigest()[:16]}… does not start with the "
                             f"published {expected_prefix}")


def fetch(url: str = URL, directory: Path | None = None) -> tuple[Path | None, str]:
    """The cached weights file (downloaded first when absent) and a note; None and the reason
    (with which file to place where) when it cannot be had."""
    name = url.rsplit("/", 1)[-1]
    dest = (directory or cache_dir()) / name
    if dest.exists():
        return dest, f"weights {name}"  # the same note as after a download: metrics.json
    print(f"downloading the FID Inception weights {url} to {dest}", file=sys.stderr, flush=True)
    try:
        download(url, dest, hash_prefix(url))
    except ValueError as err:  # a wrong file: never used
        reason = f"downloaded {name} failed its hash check ({err})"
    except Unreachable as err:  # offline, refused, timed out
        reason = f"could not download {name} ({err})"
    except DataError as err:  # the cache folder cannot be written
        reason = f"could not download {name} ({err})"
    else:
        return dest, f"weights {name}"
    note = f"{reason}; place the file from {url} at {dest}"
    print(f"warning: Inception scores n/a: {note}", file=sys.stderr, flush=True)
    return None, note
