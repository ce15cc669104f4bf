"""The `trilemma` command: one subcommand per pipeline stage, as dvc.yaml calls them."""

from __future__ import annotations

import os
import sys

import typer

from pipeline.control import control, train_referee
from pipeline.download import download
from pipeline.evaluate import evaluate
from pipeline.evaluate_i2i import evaluate_i2i
from pipeline.generate import generate
from pipeline.report import report
from pipeline.sample import sample
from pipeline.sync_mlflow import sync_mlflow
from pipeline.train import train
from pipeline.train_classifier import train_classifier
from pipeline.train_i2i import train_i2i

app = typer.Typer(help="trilemma: train, sample and measure image generator families side by side.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.command("download")(download)
app.command("train-classifier")(train_classifier)
app.command("train")(train)
app.command("sample")(sample)
app.command("evaluate")(evaluate)
app.command("train-i2i")(train_i2i)
app.command("evaluate-i2i")(evaluate_i2i)
app.command("train-referee")(train_referee)
app.command("control")(control)
app.command("report")(report)
app.command("sync-mlflow")(sync_mlflow)
app.command("generate")(generate)


def main() -> None:
    """The `trilemma` console script: the app, then an immediate exit with its code. Python's
    ordinary shutdown spends about 2 s per command unloading torch's libraries (24 commands in a
    `dvc repro`); every output is written and closed, and the MLflow run ended, by then. An
    unexpected exception still leaves the ordinary way, with its traceback."""
    from trilemma import distributed

    try:
        app()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    if code == 0:  # under torchrun: wait for every rank (after a failure torchrun stops them)
        distributed.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
