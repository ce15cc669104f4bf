"""Command `sync-mlflow`: put the current reports/ into MLflow, for stages that DVC skipped."""

from __future__ import annotations

from pathlib import Path

from pipeline.common import ParamsOption, log, single_process, user_errors
from trilemma.config import load_params
from trilemma.errors import TrilemmaError, brief


class TrackingError(TrilemmaError):
    pass


@user_errors
def sync_mlflow(params: ParamsOption = Path("params.yaml")) -> None:
    """Log the metric files of the classifier and of every family's train and evaluate stages
    (the image-to-image families', the referee's and the control stage's too) to MLflow, one
    run each, unless a finished run with the same files is there already (a stage run by `dvc
    repro`, or an earlier sync); register each family's and translator's model as
    trilemma-<family> unless a version holds it already: running it twice adds nothing. Uses
    $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in this directory."""
    single_process("sync-mlflow")
    p = load_params(params)
    from trilemma import mlflow_model, tracker, tracking, tracking_files

    stages = tracking_files.read_stages(p.families, p.i2i_families, p.control.families)
    tracking.wait_for_trackers()  # the runs stages handed over are in the store: none twice
    try:
        done = tracker.sync(stages, p.profile)
        models = mlflow_model.sync_registry(p.families, p, p.i2i_families)  # train runs exist now
    except TrilemmaError:  # a bad input, named already
        raise
    except Exception as err:  # here MLflow is the whole job: its failure is the command's
        raise TrackingError(f"MLflow: {brief(err)}") from None
    for name, what in done + models:
        log(f"{name}: {what}")
    log(f"{sum(what == 'registered' for _, what in models)} model(s) registered, "
        f"{sum(what == 'up to date' for _, what in models)} up to date")
    logged = sum(what == "logged" for _, what in done)
    log(f"{logged} run(s) logged, {sum(what == 'up to date' for _, what in done)} up to date")
