"""The `trilemma` command: one subcommand per pipeline stage, as dvc.yaml calls them."""

from __future__ import annotations

import typer

from pipeline.download import download
from pipeline.evaluate import evaluate
from pipeline.report import report
from pipeline.sample import sample
from pipeline.sync_mlflow import sync_mlflow
from pipeline.train import train
from pipeline.train_classifier import train_classifier

app = typer.Typer(help="trilemma: train, sample and measure image generator families side by side.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.command("download")(download)
app.command("train-classifier")(train_classifier)
app.command("train")(train)
app.command("sample")(sample)
app.command("evaluate")(evaluate)
app.command("report")(report)
app.command("sync-mlflow")(sync_mlflow)
