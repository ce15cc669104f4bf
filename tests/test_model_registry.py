"""The train stages' models in MLflow's model registry (the embedded SQLite store of the pipeline
chain, conftest `pipeline_chain`): loaded in a fresh process and served over HTTP on a loopback
port, they give the images `trilemma generate` writes for the same request; a translator loaded
from the registry translates as `trilemma generate <translator> --input` does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FAMILIES, I2I
from pipeline.cli import app

REQUEST = {"n": 8, "label": 7, "seed": 3}
SERVE_TIMEOUT_S = 240  # start-up of `mlflow models serve` on a busy 2-core machine


@pytest.fixture(scope="module")
def store(pipeline_chain, tmp_path_factory):
    """(repo root, tracking URI, the images `trilemma generate cgan` writes for REQUEST)."""
    root, results = pipeline_chain
    assert all(r.exit_code == 0 for r in results.values()), "the pipeline chain failed"
    out = tmp_path_factory.mktemp("generated") / "cgan.npz"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        result = CliRunner().invoke(app, ["generate", "cgan", "-n", str(REQUEST["n"]), "--label",
                                          str(REQUEST["label"]), "--seed", str(REQUEST["seed"]),
                                          "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as npz:
        expected = npz["images"]
    return root, f"sqlite:///{root / 'mlflow.db'}", expected


def fresh_env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "TRILEMMA_DEVICE": "cpu",
            "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def test_every_train_stage_registered_its_model_in_its_run(store):
    import mlflow

    root, uri, _ = store
    from trilemma.mlflow_model import MODEL_TAG, file_digest

    client = mlflow.MlflowClient(tracking_uri=uri)
    trained = [("train", family) for family in FAMILIES] + [("train-i2i", name) for name in I2I]
    for stage, family in trained:
        (version,) = client.search_model_versions(f"name = 'trilemma-{family}'")
        run = client.get_run(version.run_id)
        assert run.info.run_name == f"{stage}:{family}" and run.data.tags["stage"] == stage
        assert version.tags[MODEL_TAG] == file_digest(root / "models" / f"{family}.pt")


def test_registered_model_in_a_fresh_process_gives_the_images_of_generate(store, tmp_path):
    root, uri, expected = store
    out = tmp_path / "pyfunc.npy"
    code = ("import mlflow, numpy as np, pandas as pd, sys\n"
            "model = mlflow.pyfunc.load_model('models:/trilemma-cgan/latest')\n"
            f"np.save(sys.argv[1], model.predict(pd.DataFrame([{REQUEST!r}])))\n")
    done = subprocess.run([sys.executable, "-c", code, str(out)], env=fresh_env(uri),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    images = np.load(out)
    assert images.dtype == np.uint8 and np.array_equal(images, expected)


INPUT_SIDE = {"pix2pix": 28, "srgan": 7, "cyclegan": 28}  # the tiny params' tasks: SRGAN's is 4x


@pytest.mark.parametrize("name", I2I)
def test_registered_translator_gives_the_translations_of_generate(store, name, tmp_path,
                                                                  monkeypatch):
    """In this process (the cgan test above covers a fresh one): an array, and the nested lists
    of a JSON request as the model server parses them, give `generate --input`'s images."""
    import mlflow
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    root, uri, _ = store
    side = INPUT_SIDE[name]
    inputs = np.random.default_rng(0).integers(0, 256, (3, 1, side, side), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    for k, image in enumerate(inputs):
        Image.fromarray(image[0]).save(tmp_path / "in" / f"{k}.png")
    with monkeypatch.context() as mp:
        mp.chdir(root)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        result = CliRunner().invoke(app, ["generate", name, "--input", str(tmp_path / "in"),
                                          "--out", str(tmp_path / "t.npz")])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "t.npz") as npz:
        assert np.array_equal(npz["inputs"], inputs)
        expected = npz["images"]
    monkeypatch.setenv("TRILEMMA_DEVICE", "cpu")
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading prepends the model's code
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/trilemma-{name}/latest")
    images = model.predict(inputs)
    assert images.dtype == np.uint8 and images.shape == (3, 1, 28, 28)
    assert np.array_equal(images, expected)
    served = infer_and_parse_data({"inputs": inputs.tolist()})  # int64 from JSON
    assert np.array_equal(model.predict(served), expected)
    with pytest.raises(Exception, match=rf"expected uint8 images \(n,1,{side},{side}\)"):
        model.predict(np.zeros((2, 1, side + 1, side + 1), np.uint8))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_model_answers_http_requests_with_the_images_of_generate(store, tmp_path):
    root, uri, expected = store
    port = free_port()
    mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", "models:/trilemma-cgan/latest", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=fresh_env(uri), cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the model server did not start in time"
            time.sleep(1)
        body = json.dumps({"dataframe_records": [REQUEST]}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            predictions = json.loads(reply.read())["predictions"]
        assert np.array_equal(np.asarray(predictions, dtype=np.uint8), expected)
    finally:  # the server and its workers, whatever happened
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
