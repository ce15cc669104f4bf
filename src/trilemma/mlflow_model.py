"""A trained model as an MLflow model, registered as `trilemma-<family>` and linked to its train
run. A family's is a `pyfunc` whose `predict` takes one request {n, label, seed, truncation,
steps, sampler, eta, guidance} (a dict or a one-row DataFrame; what is left out takes the params'
value) and returns uint8 images (n,C,S,S), the images `trilemma generate` writes for the same
request; a translator's takes uint8 input images (n,C,s,s) (an array, or the nested lists of a
JSON request) and returns their uint8 translations (n,C,S,S), as `trilemma generate <translator>
--input` does (`trilemma.mlflow_pyfunc`). It carries the model file, its settings, the project's
code and pinned requirements. This module imports no MLflow: stages call it, the tracker
logs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

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
    """What a family's `predict` takes from params (`p`, the validated params): the seed and the
    `sample` section (the defaults of every request)."""
    return {"kind": "generator", "family": family, "seed": p.seed,
            "sample": p.sample.model_dump(mode="json")}


def translator_settings(family: str, p) -> dict[str, Any]:
    """What a translator's `predict` takes from params: the batch size `trilemma generate`
    translates in."""
    return {"kind": "translator", "family": family, "batch_size": p.evaluate.batch_size}


def carried_files(model_file: Path, settings: dict) -> dict[str, Path]:
    """The files the logged model carries, by artifact name: the model file, and the judge's
    for a translator that is built with it (SRGAN)."""
    from trilemma import i2i, paths

    files = {"model": Path(model_file)}
    if settings["kind"] == "translator" and i2i.needs_judge(settings["family"]):
        files["judge"] = paths.CLASSIFIER
    return files


def log_model(mlflow_module, family: str, files: dict[str, Path], settings: dict) -> None:
    """Log the model (`files`: see `carried_files`) as its pyfunc into the active run and
    register it (called by the tracker with the `mlflow` module, or by `sync-mlflow`)."""
    from trilemma.mlflow_pyfunc import KINDS  # imports mlflow.pyfunc: seconds

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not in stage logs
    # its warnings (no signature inferred, a pickled model) are by design here: not in stage logs
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="trilemma-model-") as tmp:
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(settings, sort_keys=True))
        info = mlflow_module.pyfunc.log_model(
            name=settings["kind"], python_model=KINDS[settings["kind"]](),
            artifacts={**{k: str(v) for k, v in files.items()}, "settings": str(settings_file)},
            code_paths=[str(Path(trilemma.__file__).parent)], pip_requirements=requirements(),
            registered_model_name=registered_name(family), await_registration_for=60)
    mlflow_module.MlflowClient().set_model_version_tag(
        registered_name(family), info.registered_model_version, MODEL_TAG,
        file_digest(files["model"]))


def snapshot(model_file: Path, settings: dict) -> tuple[dict[str, Path], Path]:
    """Copies of the files the logged model carries (see `carried_files`), taken now since a
    later stage may rewrite them before the tracker gets to them, and the folder holding them."""
    folder = Path(tempfile.mkdtemp(prefix="trilemma-model-"))
    copies = {name: Path(shutil.copy2(path, folder / f"{name}{Path(path).suffix}"))
              for name, path in carried_files(model_file, settings).items()}
    return copies, folder


def is_registered(client, family: str, digest: str) -> bool:
    """Whether some version of `trilemma-<family>` holds the model file with this digest."""
    versions = client.search_model_versions(f"name = '{registered_name(family)}'")
    return any(v.tags.get(MODEL_TAG) == digest for v in versions)


def sync_registry(families: list[str], p, i2i: list[str] = ()) -> list[tuple[str, str]]:
    """Register the model of every trained family and translator (`i2i`) whose current file no
    registered version holds (DVC skipped its train stage, or it ran untracked), into the train
    run that has the current training reports (`tracker.sync` logs it first). Running it again
    adds nothing. Returns (registered name, what happened) per model. Call it after
    `tracker.sync`."""
    import mlflow

    from trilemma import paths, tracker, tracking_files

    client, done = mlflow.MlflowClient(), []
    trained = ([(family, "train", settings(family, p)) for family in families]
               + [(family, "train-i2i", translator_settings(family, p)) for family in i2i])
    for family, stage, wanted in trained:
        name, files = registered_name(family), carried_files(paths.model(family), wanted)
        reports = tracking_files.report_files(stage, family)
        missing = [path for path in (*files.values(), *reports) if not path.exists()]
        if missing:
            done.append((name, f"skipped: {missing[0]} not found (not trained yet)"))
            continue
        if is_registered(client, family, file_digest(files["model"])):
            done.append((name, "up to date"))
            continue
        runs = mlflow.search_runs(
            experiment_names=[tracker.EXPERIMENT], max_results=1, output_format="list",
            filter_string=f"tags.reports_digest = '{tracking_files.reports_digest(stage, family)}' and "
                          f"tags.stage = '{stage}' and tags.family = '{family}'")
        if not runs:
            done.append((name, f"skipped: no {stage} run with the current reports"))
            continue
        with mlflow.start_run(run_id=runs[0].info.run_id):
            log_model(mlflow, family, files, wanted)
        done.append((name, "registered"))
    return done
