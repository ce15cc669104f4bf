"""`evaluate.inception_weights: auto`: the reference weights downloaded once, hash checked, cached;
n/a with the place to put the file when that cannot be done."""

from __future__ import annotations

import hashlib
import socket
import threading
from functools import partial
from pathlib import Path
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from trilemma import inception_weights, metrics
from trilemma.errors import DataError

PAYLOAD = b"not really Inception, but bytes with a known hash\n" * 100


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server of the folder `tmp_path/served`; yields its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, as on a machine without a network."""
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_url_is_torch_fidelitys_and_its_name_carries_the_published_hash():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert inception_weights.URL == URL_INCEPTION_V3
    assert inception_weights.hash_prefix(inception_weights.URL) == "6726825d"


def test_a_file_with_the_published_hash_is_downloaded_once_then_read_from_the_cache(
        server, tmp_path):
    served, base = server
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    (served / f"weights-test-{prefix}.pth").write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    path, note = inception_weights.fetch(f"{base}/weights-test-{prefix}.pth", cache)
    assert path == cache / f"weights-test-{prefix}.pth" and path.read_bytes() == PAYLOAD
    assert note == f"weights weights-test-{prefix}.pth"
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no partial file left
    (served / f"weights-test-{prefix}.pth").unlink()  # a second call never asks the server
    assert inception_weights.fetch(f"{base}/weights-test-{prefix}.pth", cache) == (path, note)


def test_a_file_with_another_hash_is_refused_and_not_kept(server, tmp_path, capsys):
    served, base = server
    wrong = "0" * 8 if not hashlib.sha256(PAYLOAD).hexdigest().startswith("0" * 8) else "1" * 8
    (served / f"weights-test-{wrong}.pth").write_bytes(PAYLOAD)
    cache = tmp_path / "cache"
    url = f"{base}/weights-test-{wrong}.pth"
    path, note = inception_weights.fetch(url, cache)
    assert path is None
    assert "failed its hash check" in note and f"does not start with the published {wrong}" in note
    assert f"place the file from {url} at {cache / f'weights-test-{wrong}.pth'}" in note
    assert list(cache.iterdir()) == []  # neither the file nor a partial one
    assert capsys.readouterr().err.count("warning: Inception scores n/a") == 1


def test_auto_offline_gives_n_a_saying_which_file_to_place_where(tmp_path, monkeypatch,
                                                                 no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net, note = metrics.inception("auto", torch.device("cpu"))
    assert net is None
    dest = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert note.startswith("could not download weights-inception-2015-12-05-6726825d.pth")
    assert note.endswith(f"place the file from {inception_weights.URL} at {dest}")
    assert not dest.exists()


def test_auto_uses_a_cached_file_and_names_it_when_it_is_not_the_weights(tmp_path, monkeypatch,
                                                                         no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = inception_weights.cache_dir() / inception_weights.URL.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    with pytest.raises(DataError, match="weights-inception-2015-12-05-6726825d.pth: not a "
                                        "readable Inception-V3 weights file"):
        metrics.inception("auto", torch.device("cpu"))


def test_params_accept_auto_a_path_and_null(tmp_path):
    from conftest import write_params
    from trilemma.config import load_params

    for value in ("auto", "some/weights.pth", None):
        p = load_params(write_params(tmp_path / "params.yaml",
                                     {"evaluate.inception_weights": value}))
        assert p.evaluate.inception_weights == (value if value in ("auto", None) else Path(value))
