"""What every stage command shares: options, the params/device start-up, user-facing errors."""

from __future__ import annotations

import functools
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from trilemma.errors import Interrupted, TrilemmaError, brief
from trilemma.torchrun import log  # noqa: F401 (the stages' progress lines)

ParamsOption = Annotated[Path, typer.Option("--params", help="Params file to read.")]
DeviceOption = Annotated[str, typer.Option(
    "--device", envvar="TRILEMMA_DEVICE", help="auto | cpu | cuda (auto picks cuda when present).")]
DryRunOption = Annotated[bool, typer.Option(
    "--dry-run", help="Print the resolved settings this stage would use, then stop.")]
FamilyArgument = Annotated[str, typer.Argument(help="Family name, as listed in params.yaml `families`.")]
I2IArgument = Annotated[str, typer.Argument(
    help="Image-to-image family, as listed in params.yaml `i2i_families`.")]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A TrilemmaError becomes one line on stderr and exit code 2, with no traceback; Ctrl-C one
    `interrupted:` line (where training resumes, if it trains) and exit code 130. Every run
    that is not a dry run appends its timing to the stage log (`record_stage`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        body_started, status = time.time(), "error"
        try:
            result = command(*args, **kwargs)
            status = "ok"
            return result
        except (Interrupted, KeyboardInterrupt) as err:  # Ctrl-C: 130, the shell's code for it
            where = brief(err, limit=1000) if isinstance(err, Interrupted) else \
                "stopped; outputs are written whole or not at all"
            typer.echo(f"interrupted: {where}", err=True)
            raise typer.Exit(130) from None
        except TrilemmaError as err:
            typer.echo(f"error: {brief(err, limit=1000, whole=True)}", err=True)  # one line, always
            raise typer.Exit(2) from None
        finally:
            if not kwargs.get("dry_run"):
                record_stage(command.__name__.replace("_", "-"), kwargs, status, body_started)

    return wrapper


STAGE_LOG = Path("logs/stages.jsonl")  # git-ignored; `python -m benchmarks.stages` tabulates it
_previous_end: float | None = None


def stage_log_path(params: Path) -> Path | None:
    """Where this command's stage log is: in the working folder when it is a project (the
    stages write their outputs there), else beside the params file that ran (a command started
    from another folder); None when neither (no logs/ folder is made just anywhere)."""
    if Path("dvc.yaml").is_file() or Path("params.yaml").is_file():
        return STAGE_LOG
    return params.parent / STAGE_LOG if params.is_file() else None


def record_stage(stage: str, kwargs: dict[str, Any], status: str, body_started: float) -> None:
    """Append one JSON line: stage, family, profile, device, status, start time, wall seconds
    (process start to end) and start-up seconds (process start to the command's first line:
    interpreter and imports). A log that cannot be written is skipped: it is never worth failing
    a stage for."""
    from pipeline import STARTED

    from trilemma.torchrun import distributed_module

    distributed = distributed_module()
    if distributed is not None and not distributed.is_rank0():  # one line per command, from rank 0
        return
    # importing torch only to log would add a second to a command that never needed it; such a
    # command ran as one process on no device (device and memory: None)
    torch = sys.modules.get("torch")
    global _previous_end
    ended = time.time()
    # several commands in one process (tests): only the first one paid for the imports
    started = STARTED if _previous_end is None else body_started
    _previous_end = ended
    from trilemma.params_file import read_params_file

    params = Path(kwargs.get("params") or "params.yaml")
    try:
        profile = read_params_file(params).get("profile", "quick")
    except Exception:  # a bad params file was reported by the stage itself
        profile = None
    device, memory = None, {"peak_gpu_memory_gib": None, "peak_rss_gib": None}
    if torch is not None:
        from trilemma.runtime import peak_memory

        gpu = kwargs.get("device") != "cpu" and torch.cuda.is_available()
        device = torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)"
        memory = peak_memory(torch.device("cuda" if gpu else "cpu"))
    entry = {"stage": stage, "family": kwargs.get("family"), "profile": profile, "device": device,
             "status": status, "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
             "wall_seconds": round(ended - started, 2),
             "startup_seconds": round(body_started - started, 2),
             **memory}
    log_path = stage_log_path(params)
    if log_path is None:
        return
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log_file:
            log_file.write(json.dumps(entry) + "\n")
    except OSError as err:
        print(f"warning: stage log {log_path} not written: {err}", file=sys.stderr, flush=True)


def print_settings(settings: dict[str, Any]) -> None:
    typer.echo(json.dumps(settings, indent=2, sort_keys=True, default=str))


def setup(params_path: Path, device_choice: str | None):
    """Validated params, the device, and every RNG seeded: the start of each compute stage.
    Under torchrun this process joins the process group, and the device is its own GPU."""
    from trilemma import distributed
    from trilemma.config import load_params
    from trilemma.runtime import resolve_device, seed_everything

    p = load_params(params_path)
    device = distributed.start(resolve_device(device_choice))
    seed_everything(p.seed, device)  # the same seed on every rank: see `distributed`
    return p, device


def single_process(stage: str) -> None:
    """Stages with nothing to share out refuse torchrun rather than run N times over one file."""
    from trilemma.errors import ConfigError
    from trilemma.torchrun import launched

    if launched():
        raise ConfigError(f"{stage} runs as one process; start it without torchrun "
                          "(train, train-classifier, sample and evaluate take torchrun)")
