"""What every stage command shares: options, the params/device start-up, user-facing errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from trilemma.errors import TrilemmaError, brief

ParamsOption = Annotated[Path, typer.Option("--params", help="Params file to read.")]
DeviceOption = Annotated[str, typer.Option(
    "--device", envvar="TRILEMMA_DEVICE", help="auto | cpu | cuda (auto picks cuda when present).")]
DryRunOption = Annotated[bool, typer.Option(
    "--dry-run", help="Print the resolved settings this stage would use, then stop.")]
FamilyArgument = Annotated[str, typer.Argument(help="Family name, as listed in params.yaml `families`.")]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A TrilemmaError becomes one line on stderr and exit code 2, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TrilemmaError as err:
            typer.echo(f"error: {brief(err, limit=1000)}", err=True)  # one line, always
            raise typer.Exit(2) from None

    return wrapper


def print_settings(settings: dict[str, Any]) -> None:
    typer.echo(json.dumps(settings, indent=2, sort_keys=True, default=str))


def log(message: str) -> None:
    print(message, flush=True)


def setup(params_path: Path, device_choice: str | None):
    """Validated params, the device, and every RNG seeded: the start of each compute stage."""
    from trilemma.config import load_params
    from trilemma.runtime import resolve_device, seed_everything

    p = load_params(params_path)
    device = resolve_device(device_choice)
    seed_everything(p.seed)
    return p, device
