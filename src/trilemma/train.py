"""The one training loop: epochs, batching, device, seeding, checkpoint/resume, NaN guard, progress.

A trainee (a generator family or the classifier) only says how to take one step on a batch.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm import tqdm

from trilemma import distributed
from trilemma.config import TrainConfig
from trilemma.errors import STATE_DOES_NOT_FIT, Interrupted, TrainingDiverged, brief
from trilemma.io import atomic_path, is_number, state_problem
from trilemma.optim import adam  # noqa: F401  (re-exported: families import it from here)
from trilemma.runtime import autocast, reset_peak_memory, set_precision


class Trainee(Protocol):
    # the networks trained. `train_step` calls each through this dict (`self.nets["unet"](x)`):
    # under torchrun `fit` puts their DistributedDataParallel wrappers here while it trains.
    # Sampling, EMA and state dicts use the plain modules.
    nets: dict[str, nn.Module]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on x (B,C,S,S) float in [0,1], y (B,) int64; detached losses."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # optional: `plan(total_steps)`, called by `fit` before training with the optimisation steps
    # the run takes (`planned_steps`), for a schedule over the whole run (diffusion's cosine lr)


class Probe(Protocol):
    """A learning-curve callback (trilemma.probes): `fit` calls it at the steps it is `due`, with
    the optimisation step and the training seconds so far, and leaves its time out of those
    seconds. Its `rows` travel in the checkpoint."""
    rows: list[dict[str, float]]

    def due(self, step: int) -> bool: ...

    def __call__(self, step: int, train_seconds: float) -> None: ...


def _rng_state(shuffle_at_epoch_start: torch.Tensor) -> dict[str, Any]:
    """Tensors only: a checkpoint loads with weights_only=True."""
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle_at_epoch_start}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, fingerprint: str, trainee: Trainee, cfg: TrainConfig,
                    full: int) -> dict[str, Any] | None:
    """Load the checkpoint at `path` into `trainee` and return the rest of it (epoch, rng,
    history...), or return None and leave the trainee as it was. A checkpoint is a cache: one
    that is unreadable, written for other settings, damaged (a NaN, a value of the wrong kind, an
    epoch or step outside the run of `cfg` with `full` steps per epoch), or that does not fit the
    trainee (the networks' code changed since) is ignored with one line, never fatal. Read with
    weights_only=True: a planted file cannot run code."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        print(f"ignoring unreadable checkpoint {path}: {brief(err)}", flush=True)
        return None
    if not isinstance(state, dict) or not {"trainee", "rng", "epoch", "history"} <= set(state):
        print(f"ignoring checkpoint {path}: not a training checkpoint", flush=True)
        return None
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring checkpoint {path}: written for other settings", flush=True)
        return None
    before = copy.deepcopy(trainee.state_dict())  # a failed load may have copied part of it
    damaged = _run_problem(state, cfg, full) or state_problem(state["trainee"], before, "trainee")
    if damaged:
        print(f"ignoring checkpoint {path}: damaged ({damaged})", flush=True)
        return None
    try:
        trainee.load_state_dict(state["trainee"])
        _check_optimizer_state(trainee)
    except STATE_DOES_NOT_FIT as err:
        trainee.load_state_dict(before)
        print(f"ignoring checkpoint {path}: it does not fit this model "
              f"({brief(err, whole=True)})", flush=True)
        return None
    return state


def _epoch_count(cfg: TrainConfig, full: int) -> int:
    """The epochs `fit` runs with `full` steps per epoch: cfg.epochs, or fewer if max_steps ends
    the run first."""
    return cfg.epochs if cfg.max_steps is None else min(cfg.epochs, math.ceil(cfg.max_steps / full))


def _epoch_steps(cfg: TrainConfig, full: int, epoch: int) -> int:
    """Steps in epoch `epoch` (from 1): a full pass, except a last one cut short by max_steps."""
    return full if cfg.max_steps is None else min(full, cfg.max_steps - (epoch - 1) * full)


def _run_problem(state: dict[str, Any], cfg: TrainConfig, full: int) -> str | None:
    """Why a checkpoint's record of the run (where it stopped, its RNG states, the rows so far)
    cannot be resumed from in the run of `cfg`, or None."""
    epochs, epoch, step = _epoch_count(cfg, full), state["epoch"], state.get("step", 0)
    if type(epoch) is not int or not 0 <= epoch <= epochs:
        return f"epoch {epoch!r} is not one of 0..{epochs}"
    last = _epoch_steps(cfg, full, epoch + 1) - 1 if epoch < epochs else 0
    if type(step) is not int or not 0 <= step <= last:
        return f"step {step!r} is not one of 0..{last} of epoch {epoch + 1}"
    rows = [("history", state["history"])] + [(k, state[k]) for k in ("trace", "probe") if k in state]
    for key, value in rows:
        if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
            return f"its {key} is not a list of rows"
    if len(state["history"]) != epoch:
        return f"its history has {len(state['history'])} rows for {epoch} epochs"
    partial = state.get("partial", {})
    if not isinstance(partial, dict) or any(not isinstance(partial.get(k, {}), dict) for k in
                                            ("sums", "counts", "chunk_sums", "chunk_counts")) \
            or not is_number(partial.get("seconds", 0.0)):
        return "its record of the interrupted epoch is malformed"
    rng = state["rng"]
    if not isinstance(rng, dict) or not all(
            torch.is_tensor(rng.get(k)) and rng[k].dtype == torch.uint8 and rng[k].shape == like.shape
            for k, like in (("torch", torch.get_rng_state()),
                            ("shuffle", torch.Generator().get_state()))):
        return "its random number states are malformed"
    return state_problem(partial, None, "partial")  # its loss sums carry on into the epoch's row


def _optimizers(obj: Any, depth: int = 2) -> list[torch.optim.Optimizer]:
    """The optimizers among `obj`'s attributes, and among those of its plain (non-network)
    attributes: latent diffusion keeps its diffusion trainee's."""
    found = []
    for value in vars(obj).values():
        if isinstance(value, torch.optim.Optimizer):
            found.append(value)
        elif depth > 1 and hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
            found += _optimizers(value, depth - 1)
    return found


def _check_optimizer_state(trainee: Trainee) -> None:
    """ValueError when an optimizer's loaded state does not have its parameter's shape: torch
    matches the state to the parameters by position without looking, so networks whose code
    declares the same weights in another order load, and the next step corrupts memory."""
    for opt in _optimizers(trainee):
        for group in opt.param_groups:
            for param in group["params"]:
                for key, value in opt.state.get(param, {}).items():
                    if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                        raise ValueError(f"optimizer state {key!r} of shape {list(value.shape)} "
                                         f"for a parameter of shape {list(param.shape)}")


class _Checkpointer:
    """Writes the resumable state (rank 0): after every epoch, and within an epoch once
    `every_seconds` have passed since the last write. Remembers where a rerun would resume."""

    def __init__(self, path: Path, fingerprint: str, every_seconds: float, resumed: str | None):
        self.path, self.fingerprint, self.every = path, fingerprint, every_seconds
        self.last = time.monotonic()
        self.position = resumed  # "after epoch 2, step 40" of the last checkpoint, if any

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, trainee: "Trainee", epoch: int, step: int, shuffle_at_epoch_start: torch.Tensor,
             history: list, trace: list | None, partial: dict | None,
             probe: "Probe | None" = None) -> None:
        """`epoch` epochs done and `step` steps of the next one; `partial` holds that epoch's
        running loss sums (and seconds), so that its row comes out as if never interrupted."""
        with atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, "epoch": epoch, "step": step,
                        "history": history, "trainee": trainee.state_dict(),
                        "rng": _rng_state(shuffle_at_epoch_start), "trace": trace or [],
                        "partial": partial or {}, "probe": probe.rows if probe else []}, tmp)
        self.last = time.monotonic()
        self.position = f"epoch {epoch}" + (f", step {step} of epoch {epoch + 1}" if step else "")

    def interrupted(self, name: str) -> Interrupted:
        where = f"a rerun resumes from {self.path} (after {self.position})" if self.position \
            else "no checkpoint yet, a rerun starts over"
        return Interrupted(f"{name}: training stopped; {where}")


TRACE_POINTS = 10  # rows per epoch in `trace`: short GAN runs need more than one point per epoch


def _add(sums: dict[str, torch.Tensor], counts: dict[str, int], losses: dict[str, torch.Tensor]):
    """Accumulate on the device: a loss may be reported on some steps only (WGAN-GP's G)."""
    for key, value in losses.items():
        sums[key] = sums[key] + value if key in sums else value
        counts[key] = counts.get(key, 0) + 1


def _means(sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
    sums = distributed.average(sums)  # across ranks: every rank counts the same steps
    return {k: float(v) / counts[k] for k, v in sums.items()}  # a host sync


def planned_steps(cfg: TrainConfig, n_train: int) -> int:
    """The optimisation steps `fit` will take: `epochs` passes of full batches, cut at
    `max_steps` (what a one-cycle schedule must span, and where the probes go)."""
    steps = cfg.epochs * (n_train // min(cfg.batch_size, n_train))
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def fit(trainee: Trainee, x_train: torch.Tensor, y_train: torch.Tensor, cfg: TrainConfig, *,
        name: str, device: torch.device, seed: int, checkpoint: Path, fingerprint: str,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
        trace: list[dict[str, float]] | None = None,
        checkpoint_seconds: float = 60.0,
        probe: Probe | None = None) -> list[dict[str, float]]:
    """Train for cfg.epochs (or cfg.max_steps steps, whichever ends first) over (x_train
    (N,C,S,S) uint8, y_train (N,) int64), resuming from
    `checkpoint` when it matches `fingerprint`. Returns one row per epoch: epoch, mean losses,
    seconds. If `trace` is a list, TRACE_POINTS rows of mean losses per epoch (step, fractional
    epoch) are appended to it, and kept in the checkpoint. The whole data set moves to `device`
    once, as uint8: batches are index lookups, no loader. cfg.precision and cfg.compile apply
    here, so every trainee gets them without a line of its own.

    The checkpoint is written after every epoch and, within an epoch, every `checkpoint_seconds`:
    a run resumed from it ends with the same weights, bit for bit, as one never interrupted.
    Ctrl-C raises `Interrupted`, saying where a rerun resumes.

    Under torchrun (`distributed`), every rank runs this with the same data and seed; cfg.batch_size
    is the global batch, of which each rank trains on its share through DistributedDataParallel.
    Only rank 0 prints, writes the checkpoint and calls `on_epoch` and `probe`; every rank must pass the
    same arguments otherwise (`trace` included: its means are averaged across ranks)."""
    set_precision(cfg.precision)
    if cfg.compile:
        for net in trainee.nets.values():
            net.compile()  # in place: state_dict keys stay those of the plain module
    if x_train.ndim != 4:
        raise ValueError(f"x_train must be (N,C,S,S) uint8, got shape {tuple(x_train.shape)}")
    reset_peak_memory(device)
    x = x_train.to(device)  # (N,C,S,S) uint8
    y = y_train.to(device)  # (N,)
    n = len(x)
    batch = min(cfg.batch_size, n)  # the global batch: this rank trains on `share` of each
    distributed.check_batch(batch, name)
    rank0 = distributed.is_rank0()
    full = n // batch  # drop the ragged last batch: BatchNorm and GAN steps want full batches
    epochs = _epoch_count(cfg, full)
    if hasattr(trainee, "plan"):
        trainee.plan(planned_steps(cfg, n))
    shuffle = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    start, resume = 1, {"step": 0, "partial": {}}
    state = load_checkpoint(checkpoint, fingerprint, trainee, cfg, full)
    saver = _Checkpointer(checkpoint, fingerprint, checkpoint_seconds, None)
    if state is not None:
        _set_rng_state(state["rng"], shuffle)
        history, start = state["history"], state["epoch"] + 1
        resume = {"step": state.get("step", 0), "partial": state.get("partial", {})}
        if trace is not None:
            trace[:] = state.get("trace", [])
        saver.position = f"epoch {state['epoch']}" + \
            (f", step {resume['step']} of epoch {start}" if resume["step"] else "")
        if probe is not None:
            probe.rows[:] = state.get("probe", [])
        if rank0:
            print(f"{name}: resuming after {saver.position} from {checkpoint}", flush=True)

    plain = dict(trainee.nets)
    trainee.nets.update(distributed.wrap(plain, device))
    try:
        _epochs(trainee, x, y, cfg, name, device, shuffle, start, epochs, full, batch, history,
                saver if rank0 else None, resume, on_epoch if rank0 else None, trace,
                probe if rank0 else None)
    except KeyboardInterrupt:
        raise saver.interrupted(name) from None
    finally:
        trainee.nets.update(plain)
    return history


def _epochs(trainee: Trainee, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, name: str,
            device: torch.device, shuffle: torch.Generator, start: int, epochs: int, full: int,
            batch: int, history: list[dict[str, float]], saver: _Checkpointer | None,
            resume: dict, on_epoch: Callable[[dict[str, float]], None] | None,
            trace: list[dict[str, float]] | None, probe: Probe | None = None) -> None:
    """The epochs of `fit` from `start` (from step resume["step"] of it, with the running sums
    of resume["partial"]), appending to `history` (and `trace`); `saver` on rank 0 only;
    `probe` runs between steps, off the clock."""
    n, rank0 = len(x), distributed.is_rank0()
    show_bar = rank0 and sys.stderr.isatty()
    for epoch in range(start, epochs + 1):
        # every epoch is a full pass, except a last one cut short by `max_steps`
        steps = _epoch_steps(cfg, full, epoch)
        for net in trainee.nets.values():
            net.train()
        shuffle_at_start = shuffle.get_state()  # a mid-epoch checkpoint redraws `order` from it
        order = torch.randperm(n, generator=shuffle).to(device)
        partial = resume["partial"] if epoch == start else {}
        first = resume["step"] if epoch == start else 0
        sums, counts = partial.get("sums", {}), partial.get("counts", {})
        chunk_sums, chunk_counts = partial.get("chunk_sums", {}), partial.get("chunk_counts", {})
        trace_ends = {math.ceil(k * steps / TRACE_POINTS) for k in range(1, TRACE_POINTS + 1)}
        t0 = time.perf_counter() - partial.get("seconds", 0.0)
        probing, before = 0.0, sum(r["seconds"] for r in history)
        for i in tqdm(range(first, steps), desc=f"{name} epoch {epoch}/{epochs}",
                      disable=not show_bar, leave=False, initial=first, total=steps):
            idx = distributed.share(order[i * batch:(i + 1) * batch])  # this rank's rows
            xb = x[idx].float().div_(255)  # (B,C,S,S) in [0,1]
            # channels_last: with 1 channel only the strides change, but they pick oneDNN's fast
            # convolutions for the nets kept in that layout (1.2-1.7x on a CPU)
            xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast(cfg.precision, device):
                losses = trainee.train_step(xb, y[idx])
            _add(sums, counts, losses)
            if trace is not None:
                _add(chunk_sums, chunk_counts, losses)
                if i + 1 in trace_ends:
                    trace.append({"step": (epoch - 1) * full + i + 1,
                                  "epoch": round(epoch - 1 + (i + 1) / full, 4),
                                  **_means(chunk_sums, chunk_counts)})
                    chunk_sums, chunk_counts = {}, {}
            step = (epoch - 1) * full + i + 1
            if probe is not None and probe.due(step):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # the steps so far count as training
                paused = time.perf_counter()
                probe(step, before + paused - t0 - probing)
                for net in trainee.nets.values():  # sampling left them in eval mode
                    net.train()
                probing += time.perf_counter() - paused
            # within the epoch, on time; never a state whose losses already went non-finite
            if saver is not None and i + 1 < steps and saver.due() and \
                    all(math.isfinite(float(v)) for v in sums.values()):
                saver.save(trainee, epoch - 1, i + 1, shuffle_at_start, history, trace,
                           {"sums": sums, "counts": counts, "chunk_sums": chunk_sums,
                            "chunk_counts": chunk_counts,
                            "seconds": time.perf_counter() - t0 - probing}, probe)
        means = _means(sums, counts)
        seconds = time.perf_counter() - t0 - probing
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            ckpt = saver.path if saver is not None else None
            kept = f"last good checkpoint kept at {ckpt}" if ckpt is not None and ckpt.exists() \
                else "no checkpoint was written before it"
            raise TrainingDiverged(f"{name}: loss {', '.join(bad)} became non-finite in epoch "
                                   f"{epoch}; training stopped, {kept}")
        row = {"epoch": epoch, **means, "seconds": round(seconds, 2)}
        history.append(row)
        if saver is None:
            continue
        losses = "  ".join(f"{k}={v:.4g}" for k, v in means.items())
        print(f"{name} epoch {epoch}/{epochs}  {losses}  ({seconds:.1f} s)", flush=True)
        saver.save(trainee, epoch, 0, shuffle.get_state(), history, trace, None, probe)
        if on_epoch is not None:
            on_epoch(row)
