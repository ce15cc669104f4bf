"""Start-up: the `trilemma` command imports only the stage it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.cli import STAGES

PROBE = """
import sys
import typer.main
from pipeline.cli import app
typer.main.get_command(app).get_command(None, {command!r})
heavy = [m for m in ("torch", "mlflow", "matplotlib.pyplot", "torchmetrics") if m in sys.modules]
print(",".join(heavy))
"""


def imported_by(command: str) -> list[str]:
    """The heavy modules that building `command` imports, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(command=command)], check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    return [m for m in out.split(",") if m]


def test_listing_the_commands_imports_no_stage():
    assert imported_by("no-such-command") == []


@pytest.mark.parametrize("command", ["download", "report", "sync-mlflow"])
def test_light_commands_never_import_torch(command):
    assert "torch" not in imported_by(command)


# torch imported once, then each command built in a forked child: what the command adds to an
# interpreter that has torch, without paying torch's import 14 times over
FORKED_PROBE = """
import os, sys
import torch
import typer.main
from pipeline.cli import STAGES, app
group = typer.main.get_command(app)
for command in sorted(STAGES):
    pid = os.fork()
    if pid == 0:
        group.get_command(None, command)
        heavy = [m for m in ("matplotlib.pyplot", "mlflow", "torchmetrics") if m in sys.modules]
        print(command, ",".join(heavy), flush=True)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        print(command, "FAILED", flush=True)
"""


@pytest.fixture(scope="module")
def imported_to_start() -> dict[str, set[str]]:
    """command -> which of pyplot, MLflow and torchmetrics building it imports."""
    out = subprocess.run([sys.executable, "-c", FORKED_PROBE], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    found = {}
    for line in out.splitlines():
        command, _, modules = line.partition(" ")
        found[command] = {m for m in modules.split(",") if m}
    return found


@pytest.mark.parametrize("command", sorted(STAGES))
def test_no_command_imports_pyplot_mlflow_or_torchmetrics_to_start(imported_to_start, command):
    # pyplot and MLflow are imported where they are used: figures when they are drawn, MLflow on
    # the thread that logs; torchmetrics nowhere (next test)
    assert imported_to_start[command] == set()


def test_every_stage_module_resolves():
    import importlib

    for target in STAGES.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


OPTIMISER_PROBE = """
import sys, torch
from trilemma.optim import adam
net = torch.nn.Linear(4, 4)
opt = adam(net.parameters(), 1e-3)
schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=4)
for _ in range(2):
    opt.zero_grad()
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    schedule.step()
opt.load_state_dict(opt.state_dict())
print("torch._dynamo" in sys.modules)
"""


def test_training_steps_never_import_the_compiler():
    out = subprocess.run([sys.executable, "-c", OPTIMISER_PROBE], check=True, capture_output=True,
                         text=True, timeout=120).stdout.strip()
    assert out == "False"


def test_adam_steps_exactly_as_torch_adamw():
    import torch

    from trilemma.optim import adam

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = adam(ours.parameters(), 1e-2, (0.5, 0.99), weight_decay=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-2, betas=(0.5, 0.99),
                                   weight_decay=1e-4, fused=True)
    for _ in range(10):
        x = torch.randn(4, 8)
        for net, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


GRID_PROBE = """
import sys, numpy as np
from trilemma.figures import save_grid
save_grid(np.zeros((5, 1, 28, 28), np.uint8), sys.argv[1])
print(",".join(m for m in ("torchvision", "torch._dynamo") if m in sys.modules))
"""


def test_drawing_an_image_grid_imports_neither_torchvision_nor_the_compiler(tmp_path):
    out = subprocess.run([sys.executable, "-c", GRID_PROBE, str(tmp_path / "grid.png")],
                         check=True, capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == "" and (tmp_path / "grid.png").stat().st_size > 0


SCORING_PROBE = """
import sys, torch
from trilemma import metrics
from trilemma.i2i.scores import psnr, ssim
g = torch.Generator().manual_seed(0)
real, fake = (metrics.Embedded(torch.randn(40, 8, generator=g, dtype=torch.float64),
                               torch.randn(40, 10, generator=g, dtype=torch.float64)) for _ in "rf")
metrics.score_set(real, fake, None, seed=0)
x = torch.rand(3, 1, 28, 28, generator=g)
psnr(x, x.flip(0)), ssim(x, x.flip(0))
print(",".join(m for m in ("torchmetrics", "torchvision", "torch._dynamo", "scipy.signal")
               if m in sys.modules))
"""


def test_scoring_imports_neither_torchmetrics_nor_torchvision():
    # torchmetrics' import costs a stage 4-5 s of CPU: scores follow its formulas without it
    out = subprocess.run([sys.executable, "-c", SCORING_PROBE], check=True, capture_output=True,
                         text=True, timeout=120).stdout.strip()
    assert out == ""


@pytest.mark.parametrize("n,channels,nrow", [(1, 1, None), (5, 1, None), (16, 1, 4), (7, 3, None),
                                             (10, 1, 3), (3, 3, 8)])
def test_image_grid_is_torchvisions_make_grid_byte_for_byte(tmp_path, n, channels, nrow):
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from trilemma.figures import save_grid

    images = np.random.default_rng(n).integers(0, 256, (n, channels, 28, 20), dtype=np.uint8)
    save_grid(images, tmp_path / "ours.png", nrow=nrow)
    grid = make_grid(torch.from_numpy(images), nrow=nrow or int(np.ceil(np.sqrt(n))), padding=2,
                     pad_value=255)
    pixels = grid[0].numpy() if channels == 1 else grid.permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(tmp_path / "theirs.png", format="PNG")
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "theirs.png").read_bytes()


def test_dvc_reads_its_lock_file_with_libyaml():
    """DVC parses dvc.lock (10,000+ lines) several times per stage: ruamel.yaml's pure-Python
    parser takes 2.4 s for it, libyaml (ruamel.yaml.clib, pinned in pyproject.toml) 0.4 s."""
    from ruamel.yaml import YAML

    assert YAML(typ="safe").Parser.__name__ == "CParser"


LOG_PROBE = """
import json, sys, time
from pipeline.common import record_stage
record_stage("download", {{"params": {params!r}}}, "ok", time.time())
print("torch" in sys.modules)
"""


def test_logging_a_stage_that_never_imported_torch_does_not_import_it(tmp_path):
    """A command that never imported torch: its stage-log line must not cost that import."""
    params = tmp_path / "params.yaml"
    params.write_text("profile: quick\n")
    out = subprocess.run([sys.executable, "-c", LOG_PROBE.format(params=str(params))],
                         check=True, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path).stdout
    assert out.strip() == "False"
    log = (tmp_path / "logs/stages.jsonl").read_text()
    [entry] = [json.loads(line) for line in log.splitlines()]
    assert entry["stage"] == "download" and entry["profile"] == "quick"
    assert entry["device"] is None and entry["peak_gpu_memory_gib"] is None
    assert entry["wall_seconds"] >= entry["startup_seconds"] >= 0


WORK_PROBE = """
import sys
from pipeline.common import log, single_process
single_process("download")
log("a progress line")
print("torch" in sys.modules)
"""


def test_the_common_steps_of_a_light_command_do_not_import_torch():
    """The torchrun refusal and the progress lines of every command read the environment and
    the imported modules only: a command that needs no tensor never pays for torch's import."""
    out = subprocess.run([sys.executable, "-c", WORK_PROBE], check=True, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "WORLD_SIZE": "1"}).stdout
    assert out.splitlines() == ["a progress line", "False"]


def test_progress_lines_before_joining_a_group_come_from_rank_0_only():
    """Under torchrun, before `setup` joins the process group: the other ranks stay quiet."""
    probe = "from pipeline.common import log\nlog('a progress line')\n"
    lines = {rank: subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                  text=True, timeout=120, env={**os.environ, "RANK": rank}).stdout
             for rank in ("0", "1")}
    assert lines == {"0": "a progress line\n", "1": ""}
