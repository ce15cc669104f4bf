"""What the bad-input and fault tests check: exit code 2, one `error:` line naming the bad key or
file (printed last), no traceback, and every earlier output byte-identical. The trained repo they
run in is conftest's `trained`, copied afresh for each test by `repo`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from trilemma.params_file import with_overrides
from conftest import TINY, base_params
from pipeline.cli import app

# what the stages write; the repo's inputs (params.yaml, data/) and MLflow's store are left out
OUTPUTS = ("models", "reports", "samples")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file the stages wrote under `root`, by relative path."""
    files = {}
    for top in OUTPUTS:
        for path in sorted((root / top).rglob("*")) if (root / top).is_dir() else []:
            if path.is_file():
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def check_error(output: str, stderr: str, code: int, *names: str) -> str:
    """Exit code 2, one `error:` line naming every one of `names`, printed last on stderr (so a
    message that spans lines fails), and no traceback. Returns the error line."""
    print(output)  # shown with `pytest -rP`
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = error_lines(output)
    assert len(lines) == 1, output
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    assert stderr.rstrip("\n").splitlines()[-1] == lines[0], f"more after the error line:\n{stderr}"
    return lines[0]


def fails(result, *names: str) -> str:
    """The CliRunner result of a command that must stop on bad input."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        err = result.exception
        raise AssertionError(f"uncaught {err!r}\n{result.output}") from err
    return check_error(result.output, result.stderr, result.exit_code, *names)


def refused(root: Path, args: list[str], *names: str) -> str:
    """`trilemma *args` in `root` stops on bad input (see `fails`) and every file the stages wrote
    before stays byte-identical. Returns the error line."""
    before = snapshot(root)
    line = fails(invoke(*args), *names)
    unchanged(root, before)
    return line


def params_raw(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return with_overrides(base_params(), {**TINY, **(overrides or {})})


def write_raw(root: Path, raw: Any) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def unchanged(root: Path, before: dict[str, str]) -> None:
    after = snapshot(root)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("trilemma")
    env = {**os.environ, "TRILEMMA_DEVICE": "cpu"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(exe), *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def proc_fails(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.stdout.strip() == "", proc.stdout
    return check_error(proc.stdout + proc.stderr, proc.stderr, proc.returncode, *names)


