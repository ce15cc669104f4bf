"""The `trilemma` command: one subcommand per pipeline stage, as dvc.yaml calls them."""

from __future__ import annotations

import importlib
import os
import sys

import typer
from typer.core import DEFAULT_MARKUP_MODE, TyperGroup
from typer.main import CommandInfo, get_command_from_info

# command -> "module:function". A stage's module (and torch, MLflow, the families it needs) is
# imported only when that command runs: importing every stage cost each command seconds of start-up.
STAGES = {
    "download": "pipeline.download:download",
    "train-classifier": "pipeline.train_classifier:train_classifier",
    "train": "pipeline.train:train",
    "sample": "pipeline.sample:sample",
    "evaluate": "pipeline.evaluate:evaluate",
    "train-i2i": "pipeline.train_i2i:train_i2i",
    "evaluate-i2i": "pipeline.evaluate_i2i:evaluate_i2i",
    "train-referee": "pipeline.control:train_referee",
    "control": "pipeline.control:control",
    "report": "pipeline.report:report",
    "sync-mlflow": "pipeline.sync_mlflow:sync_mlflow",
    "repro": "pipeline.repro:repro",
    "generate": "pipeline.generate:generate",
    "seed-spread": "pipeline.seed_spread:seed_spread",
}


class LazyStages(TyperGroup):
    """The stage commands, each built from its module on first use."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(STAGES)

    def get_command(self, ctx: typer.Context, cmd_name: str):
        if cmd_name not in STAGES:
            return None
        if cmd_name not in self.commands:
            module, function = STAGES[cmd_name].split(":")
            callback = getattr(importlib.import_module(module), function)
            self.commands[cmd_name] = get_command_from_info(
                CommandInfo(name=cmd_name, callback=callback),
                pretty_exceptions_short=True, rich_markup_mode=DEFAULT_MARKUP_MODE)
        return self.commands[cmd_name]


app = typer.Typer(help="trilemma: train, sample and measure image generator families side by side.",
                  cls=LazyStages, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.callback()
def stages() -> None:
    """trilemma: train, sample and measure image generator families side by side."""

def usage_error(err: typer.TyperException) -> str:
    """A bad command line in one line, with where to read the right one, in place of Typer's
    boxed usage panel."""
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        command = ctx.command_path
    else:  # raised before the command had its context (an option's value missing)
        command = " ".join(["trilemma", *[word for word in sys.argv[1:2] if word in STAGES]])
    message = " ".join(err.format_message().split())
    return f"{command}: {message} (see '{command} --help')"


def main() -> None:
    """The `trilemma` console script: the app, then an immediate exit with its code. Python's
    ordinary shutdown spends about 2 s per command unloading torch's libraries (24 commands in a
    `dvc repro`); every output is written and closed, and the MLflow run ended, by then. An
    unexpected exception still leaves the ordinary way, with its traceback."""
    from trilemma.torchrun import distributed_module

    try:
        # not standalone: a usage error comes back here, to be told in one line. The commands
        # return None, so what comes back is an exit code (typer.Exit's) or None (done)
        code = app(standalone_mode=False) or 0
    except typer.TyperException as err:  # click's ClickException, as Typer ships it
        if type(err).__name__ != "NoArgsIsHelpError":  # a bare `trilemma`: the help is out
            print(f"error: {usage_error(err)}", file=sys.stderr)
        code = err.exit_code
    except typer.Abort:  # end of input at a prompt
        code = 1
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    distributed = distributed_module()  # None: this command never imported torch
    if code == 0 and distributed is not None:  # under torchrun: wait for every rank (after a
        distributed.stop()                      # failure torchrun stops them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
