"""`mlflow server` for tests: started on a free loopback port in its own process group, polled
until healthy, and stopped with whatever it spawned."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_S = 60  # its imports take ~25 s on a loaded 2-core machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(uri: str, cwd: Path, log: Path,
                 artifacts: Path | None = None) -> tuple[subprocess.Popen, str]:
    """The server on backend store `uri` (proxying artifacts to `artifacts` if given): the process
    and its base URL. Without its job runner: seven huey consumer processes, each importing
    mlflow, that tracking and the UI do not use and that a 2-core machine pays for in start-up."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    extra = ["--artifacts-destination", str(artifacts)] if artifacts is not None else []
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", uri, *extra],
            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, base: str, log: Path) -> None:
    """Poll /health; fail with the server's output if it exits or never answers."""
    deadline = time.monotonic() + START_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            state = (f"exited with {process.returncode}" if process.poll() is not None
                     else f"not healthy after {START_S} s")
            pytest.fail(f"mlflow server {state}; its output:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.25)


def stop(process: subprocess.Popen) -> None:
    """The server, then whatever is left of the process group it leads (its uvicorn worker)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # it forwards the signal to uvicorn and waits
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group is gone
        pass
    process.wait(timeout=15)
