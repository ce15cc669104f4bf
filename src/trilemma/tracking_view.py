"""The view the MLflow UI opens the comparison on: the evaluate runs, in the chart view, one bar
chart per summary score, FID first. The stages write it into the experiment as a shared view
state (the tag that the UI's "Save view" writes, and its saved-views menu lists); `link` is the
URL that opens it. Plain JSON and SQLite, no MLflow import: `make mlflow-ui` prints the link
without delaying the server's start.

The format is MLflow 3.17's UI (its bundle, server/js/build): the tag
`mlflow.sharedViewState.<key>` holds {name, createdAt, updatedAt, state}, `state` being the runs
page's search facets and UI state as JSON; `viewStateShareKey=<key>` in the URL loads it. The
chart view itself (`compareRunsMode`) and the Model training mode (`workflowType`) are URL
parameters, not part of the state, so the link carries them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

VIEW_KEY = "scores"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_NAME = "Scores of the evaluate runs"
EVALUATE_FILTER = "attributes.run_name LIKE 'evaluate:%'"
# the chart order: quality, diversity, class balance, then cost (tracking_files.stage_metrics)
SCORES = ("fid_classifier", "kid_classifier", "is_classifier", "precision", "recall",
          "min_class_fraction", "class_kl_uniform", "label_accuracy", "samples_per_second",
          "train_seconds")
# metrics that stores made before the per-class tables hold: charted nowhere
HIDDEN = tuple(f"class_histogram.{digit}" for digit in range(10))
SECTION = "Model metrics"  # the UI's chart section for metric names without a '/'
SECTION_ID = "trilemma-scores"
DEFAULT_COLUMNS = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`"]


def _bar_chart(metric: str, deleted: bool = False) -> dict:
    """One chart card as the UI stores it (its RunsChartsBarCardConfig)."""
    return {"uuid": f"trilemma-{metric}", "type": "BAR", "runsCountToCompare": 10,
            "metricSectionId": SECTION_ID, "deleted": deleted, "isGenerated": True,
            "metricKey": metric, "displayName": metric}


def view_state() -> dict:
    """The runs page state: evaluate runs only, all of them charted, the scores in SCORES order.
    The section counts as reordered, so metrics not named here (standard deviations, CI bounds,
    sample counts) are appended after the scores instead of sorted in among them."""
    return {
        "searchFilter": EVALUATE_FILTER,
        "selectedColumns": DEFAULT_COLUMNS + [f"metrics.`{m}`" for m in SCORES],
        "compareRunCharts": [_bar_chart(m) for m in SCORES] + [_bar_chart(m, deleted=True)
                                                                for m in HIDDEN],
        "compareRunSections": [{"uuid": SECTION_ID, "name": SECTION, "display": True,
                                "isReordered": True, "deleted": False, "isGenerated": True}],
        "isAccordionReordered": False,
        "runsHiddenMode": "SHOW_ALL",  # the default charts the first 10 rows only
        "hideEmptyCharts": True,
        "useGroupedValuesInCharts": True,
        "groupBy": None,
    }


def view_tag_value(now_ms: int | None = None) -> str:
    """The tag's value: the saved-view envelope around view_state."""
    created = int(time.time() * 1000) if now_ms is None else now_ms
    state = json.dumps(view_state(), separators=(",", ":"))
    return json.dumps({"name": VIEW_NAME, "createdAt": created, "updatedAt": created,
                       "state": state}, separators=(",", ":"))


def link(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The URL that opens the experiment on the view, in Model training mode."""
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&compareRunsMode=CHART&viewStateShareKey={VIEW_KEY}")


def stored_experiment(db: Path, name: str = "trilemma") -> tuple[str, bool] | None:
    """(experiment id, whether it has the view) from MLflow's SQLite store, read-only; None if
    the store or the experiment is not there."""
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            row = con.execute("SELECT experiment_id FROM experiments WHERE name = ? "
                              "AND lifecycle_stage = 'active'", (name,)).fetchone()
            if row is None:
                return None
            tag = con.execute("SELECT 1 FROM experiment_tags WHERE experiment_id = ? AND key = ?",
                              (row[0], VIEW_TAG)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:  # not an MLflow store, or one of another schema
        return None
    return str(row[0]), tag is not None


def main(argv: list[str]) -> None:
    """`python -m trilemma.tracking_view DB [PORT]`: one line saying what to open."""
    db, port = Path(argv[0]), argv[1] if len(argv) > 1 else "5000"
    base = f"http://127.0.0.1:{port}"
    found = stored_experiment(db)
    if found is None:
        print(f"open {base} (no trilemma experiment in {db} yet: `make repro` logs one)")
    elif not found[1]:
        print(f"open {base}/#/experiments/{found[0]}/runs?workflowType=machine_learning "
              "(`trilemma sync-mlflow` adds the scores view to this older store)")
    else:
        print(f"the comparison, once the server is up: {link(found[0], base)}")


if __name__ == "__main__":
    main(sys.argv[1:])
