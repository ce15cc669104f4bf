"""A trained family as an MLflow model, registered as `trilemma-<family>` and linked to its train
run: a `pyfunc` whose `predict` takes one request {n, label, seed, truncation, steps, sampler,
eta, guidance} (a dict or a one-row DataFrame; what is left out takes the params' value) and
returns uint8 images (n,C,S,S), the images `trilemma generate` writes for the same request
(`trilemma.mlflow_pyfunc`). It carries the model file, the sampling params, the project's code
and pinned requirements. This module imports no MLflow: stages call it on their main thread."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import trilemma

REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pydantic", "pyyaml",
                "pillow")
MODEL_TAG = "model_sha256"  # on each registered version: what `sync-mlflow` compares


def registered_name(family: str) -> str:
    return f"trilemma-{family}"


def requirements() -> list[str]:
    """The packages `predict` imports, pinned to the versions it was logged with."""
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings(family: str, p) -> dict[str, Any]:
    """What `predict` takes from params (`p`, the validated params): the family, the seed and
    the `sample` section (the defaults of every request)."""
    return {"family": family, "seed": p.seed, "sample": p.sample.model_dump(mode="json")}


def log_generator(mlflow_module, family: str, model_file: Path, settings: dict) -> None:
    """Log `model_file` as the pyfunc into the active run and register it (called on the
    tracking thread with the `mlflow` module, or by `sync-mlflow`)."""
    from trilemma.mlflow_pyfunc import Generator  # imports mlflow.pyfunc: seconds

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not in stage logs
    # its warnings (no signature inferred, a pickled model) are by design here: not in stage logs
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="trilemma-model-") as tmp:
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(settings, sort_keys=True))
        info = mlflow_module.pyfunc.log_model(
            name="generator", python_model=Generator(),
            artifacts={"model": str(model_file), "settings": str(settings_file)},
            code_paths=[str(Path(trilemma.__file__).parent)], pip_requirements=requirements(),
            registered_model_name=registered_name(family), await_registration_for=60)
    mlflow_module.MlflowClient().set_model_version_tag(
        registered_name(family), info.registered_model_version, MODEL_TAG, file_digest(model_file))


def queued(family: str, model_file: Path, settings: dict) -> tuple[Callable, Callable]:
    """(log, cleanup) for the tracking thread: the model file is copied now, since a later
    stage may rewrite it before the thread gets to it."""
    snapshot = Path(tempfile.mkdtemp(prefix="trilemma-model-"))
    copy = Path(shutil.copy2(model_file, snapshot / Path(model_file).name))
    def log_model(mlflow_module) -> None:
        log_generator(mlflow_module, family, copy, settings)

    return log_model, lambda: shutil.rmtree(snapshot, ignore_errors=True)


def is_registered(client, family: str, digest: str) -> bool:
    """Whether some version of `trilemma-<family>` holds the model file with this digest."""
    versions = client.search_model_versions(f"name = '{registered_name(family)}'")
    return any(v.tags.get(MODEL_TAG) == digest for v in versions)


def sync_registry(families: list[str], p) -> list[tuple[str, str]]:
    """Register the model of every trained family whose current file no registered version
    holds (DVC skipped its train stage, or it ran untracked), into the train run that has the
    current training reports (`tracking.sync` logs it first). Running it again adds nothing.
    Returns (registered name, what happened) per family. Call it after `tracking.sync`."""
    import mlflow

    from trilemma import paths, tracking

    client, done = mlflow.MlflowClient(), []
    for family in families:
        name, model_file = registered_name(family), paths.model(family)
        reports = tracking.report_files("train", family)
        if not model_file.exists() or not all(path.exists() for path in reports):
            done.append((name, f"skipped: {model_file} or its reports not found (not trained yet)"))
            continue
        if is_registered(client, family, file_digest(model_file)):
            done.append((name, "up to date"))
            continue
        runs = mlflow.search_runs(
            experiment_names=[tracking.EXPERIMENT], max_results=1, output_format="list",
            filter_string=f"tags.reports_digest = '{tracking.reports_digest(reports)}' and "
                          f"tags.stage = 'train' and tags.family = '{family}'")
        if not runs:
            done.append((name, "skipped: no train run with the current reports"))
            continue
        with mlflow.start_run(run_id=runs[0].info.run_id):
            log_generator(mlflow, family, model_file, settings(family, p))
        done.append((name, "registered"))
    return done
