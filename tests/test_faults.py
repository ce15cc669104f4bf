"""Faults around a stage that must not fail it: a locked MLflow store."""

from __future__ import annotations

import sqlite3

from typer.testing import CliRunner

from pipeline.cli import app
from trilemma import tracking


def test_locked_mlflow_store_gives_one_warning_and_the_stage_still_succeeds(tiny_repo):
    assert CliRunner().invoke(app, ["train", "vae"]).exit_code == 0  # creates mlflow.db
    holder = sqlite3.connect(tiny_repo / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: nobody else may
    try:
        (tiny_repo / "models" / "vae.pt").unlink()
        result = CliRunner().invoke(app, ["train", "vae"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "database is locked" in warnings[0], result.output
    assert "Traceback" not in result.output
    assert (tiny_repo / "models" / "vae.pt").is_file()


def test_a_free_sqlite_store_passes_the_lock_check(tmp_path):
    path = tmp_path / "mlflow.db"
    sqlite3.connect(path).close()
    tracking._check_sqlite_writable(f"sqlite:///{path}")  # no error
    tracking._check_sqlite_writable(f"sqlite:///{tmp_path / 'absent.db'}")  # created later


def test_warnings_are_one_line(capsys):
    tracking.warn("first line\nSQL: SELECT ...\n(Background: ...)")
    assert capsys.readouterr().err == "warning: first line\n"
