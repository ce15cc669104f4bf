"""The MLflow UI in a real browser: a tiny pipeline run (classifier, then train, sample and evaluate
for two families) fills a store, `mlflow server` serves it on a free loopback port, and headless
Chromium reads it as a user would: the link `make mlflow-ui` prints opens the runs (not GenAI's
Overview) on the evaluate runs' chart view, the scores in their order from FID on; one parent run
groups the stage runs, and the compare view shows each family's FID. Screenshots land in
test-artifacts/mlflow-ui/.

Skipped only where no browser can be driven: /usr/bin/chromium missing (`make browser` installs
Debian's) or the `playwright` package not importable (the test extra of pyproject.toml).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from conftest import ROOT, make_repo
from mlflow_server import start_server, stop, wait_healthy
from pipeline.cli import app
from trilemma import tracking
from trilemma.tracking_view import SCORES, link

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as err:  # the reason shows in the skip line
    PLAYWRIGHT_MISSING = f"playwright not importable ({err}); `make setup` installs it"
else:
    PLAYWRIGHT_MISSING = ""

CHROMIUM = Path("/usr/bin/chromium")


def needs_browser(test):
    """The only skips: no Chromium binary, or no playwright to drive it."""
    test = pytest.mark.skipif(
        not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing: `make browser` installs Debian's "
        "chromium")(test)
    return pytest.mark.skipif(bool(PLAYWRIGHT_MISSING), reason=PLAYWRIGHT_MISSING)(test)


# Keep the browser off the network: this machine has none beyond the loopback server.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAMILIES = ("vae", "cgan")  # one unconditional, one conditional
METRIC = "fid_classifier"
SHOTS = ROOT / "test-artifacts" / "mlflow-ui"
WAIT_MS = 60_000  # the SPA's first paint took 30 s on a 2-core machine at load 8
VIEWPORT = {"width": 1600, "height": 2400}  # the whole compare view, without scrolling the page
ROW_PX = 45  # row height of the compare view's metrics table


def format_metric(value: float) -> str:
    """A metric value as the MLflow UI prints it (its Utils.formatMetric: 3 decimals below 10,
    2 below 100, 1 above; exponent notation with 3 decimals below 1e-3; JavaScript's number
    printing, so 1 not 1.0 and 3.4e-5 as 3.400e-5)."""

    def js_round(x: float, scale: int) -> str:  # Math.round(x * scale) / scale, then toString()
        rounded = math.floor(x * scale + 0.5) / scale
        return str(int(rounded)) if rounded == int(rounded) else repr(rounded)

    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    if abs(value) < 10:
        return js_round(value, 1000)
    if abs(value) < 100:
        return js_round(value, 100)
    return js_round(value, 10)


def test_format_metric_matches_the_ui_rules():
    assert [format_metric(v) for v in (0.0, 0.077405, 2.302585, 1.0, 3.4e-5, -2.5e-4, 12.3456,
                                       345.67)] == ["0", "0.077", "2.303", "1", "3.400e-5",
                                                    "-2.500e-4", "12.35", "345.7"]


def run_stages(root: Path, stages: list[list[str]]) -> None:
    """The real stage commands, in the repo, as tests/test_cli.py runs them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TRILEMMA_DEVICE", "cpu")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for args in stages:
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, f"trilemma {' '.join(args)}:\n{result.output}"
        tracking.wait_for_trackers()  # their runs are in the store


def read_store(uri: str) -> dict:
    """The experiment id and kind, the parent run's name, the stage run names, per family the
    evaluate run's id and METRIC, and the metric names of the evaluate runs, as the store holds
    them (through mlflow's client)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trilemma")
    assert experiment is not None, f"no experiment 'trilemma' in {uri}"
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in found if "pipeline_run" in run.data.tags]
    runs = {run.info.run_name: run for run in found if run is not parent}
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} == {parent.info.run_id}
    evaluate, metrics = {}, set()
    for family in FAMILIES:
        run = runs.get(f"evaluate:{family}")
        assert run is not None, f"no run evaluate:{family} in {uri}: {sorted(runs)}"
        assert METRIC in run.data.metrics, f"evaluate:{family} lacks {METRIC}: {run.data.metrics}"
        evaluate[family] = {"run_id": run.info.run_id, METRIC: run.data.metrics[METRIC]}
        metrics |= set(run.data.metrics)
    return {"experiment_id": experiment.experiment_id, "run_names": sorted(runs),
            "kind": experiment.tags.get("mlflow.experimentKind"),
            "parent": parent.info.run_name, "evaluate": evaluate,
            "evaluate_metrics": sorted(metrics)}


@pytest.fixture(scope="module")
def served(tmp_path_factory, mnist_npz):
    """A tiny repo after train-classifier and train/sample/evaluate for FAMILIES, its MLflow store
    filled by the stages themselves, served by `mlflow server`: (base URL, read_store's dict).

    The store's tables are created here first; then the server starts, and comes up (slowly: its
    imports, ~25 s on a loaded 2-core machine) while the stages run. They add rows; it only reads
    them, once the browser asks."""
    from mlflow.tracking import MlflowClient

    root = make_repo(tmp_path_factory.mktemp("ui-repo"), mnist_npz)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables: one creator only
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    process, base = start_server(uri, root, log)
    try:
        run_stages(root, [["train-classifier"], *[[stage, f] for f in FAMILIES
                                                  for stage in ("train", "sample", "evaluate")]])
        store = read_store(uri)
        wait_healthy(process, base, log)
        yield base, store
    finally:
        stop(process)


def new_page(browser):
    """A page in a new browser context: a user who has not opened this MLflow before (no local
    storage), with a viewport tall enough that the compare view fits in it."""
    context = browser.new_context(viewport=VIEWPORT)
    # the assistant side panel opens itself on first load and hides half the page
    context.add_init_script(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
    context.set_default_timeout(WAIT_MS)
    return context.new_page()


@pytest.fixture(scope="module")
def page(served):
    """A headless Chromium page that the tests share, as one user's browser."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield new_page(browser)
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    print(f"screenshot: {path}")
    return path


# The UI's GenAI / Model training mode: MLflow 3.17 takes it from this URL parameter (else the
# browser's last choice, else GenAI), not from the experiment's kind tag; links carry it.
MODEL_TRAINING = "workflowType=machine_learning"


def expand(page, parent: str, child: str) -> None:
    """Open the parent run's group in the runs table (its name cell's +) unless it is open (the
    UI remembers it): `child` shows."""
    cell = page.get_by_role("gridcell").filter(has_text=parent)
    expect(cell).to_be_visible(timeout=WAIT_MS)
    next_frames(page)  # the rows of an open group render with their parent
    if page.get_by_text(child, exact=True).count() == 0:
        cell.get_by_role("button").first.click()
    expect(page.get_by_text(child, exact=True).first).to_be_visible(timeout=WAIT_MS)


def chart_titles(page) -> list[str]:
    """The titles of the chart view's charts, in the order shown."""
    titles = page.locator('[data-testid="draggable-chart-cards-grid"]').first.locator("h4[title]")
    expect(titles.first).to_be_visible(timeout=WAIT_MS)
    return titles.evaluate_all("hs => hs.map(h => h.title)")


@needs_browser
def test_the_link_opens_the_runs_table(page, served):
    server, store = served
    assert store["kind"] == "custom_model_development"
    page.goto(link(store["experiment_id"], server))  # what `make mlflow-ui` prints; no clicks
    expect(page).to_have_url(re.compile(f"/experiments/{store['experiment_id']}/runs"),
                             timeout=WAIT_MS)
    expect(page.get_by_text(store["parent"], exact=True)).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("Overview", exact=True)).to_have_count(0)  # not GenAI's landing page


@needs_browser
def test_a_parent_run_groups_the_stage_runs(page, served):
    server, store = served
    page.goto(f"{server}/#/experiments/{store['experiment_id']}/runs?{MODEL_TRAINING}")
    page.reload()  # MLflow 3.17 stays blank when the URL leaves a shared view without a load
    names = ["train-classifier"] + [f"{stage}:{f}" for f in FAMILIES
                                    for stage in ("train", "sample", "evaluate")]
    assert sorted(names) == store["run_names"]  # the store holds what the stages logged
    expect(page.get_by_text(f"{len(names) + 1} matching runs")).to_be_visible(timeout=WAIT_MS)
    expand(page, store["parent"], names[0])  # open on a first visit: evaluate runs unfold it
    for name in names:
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=WAIT_MS)
    page.get_by_role("gridcell").filter(has_text=store["parent"]).get_by_role("button").first \
        .click()
    expect(page.get_by_text(names[0], exact=True)).to_have_count(0)  # folded into the parent
    expand(page, store["parent"], names[0])
    page.set_viewport_size({"width": 1600, "height": 900})  # a short list: no blank page below
    screenshot(page, "runs.png")
    page.set_viewport_size(VIEWPORT)


@needs_browser
def test_the_link_charts_the_evaluate_runs_scores_in_order(page, served):
    server, store = served
    fresh = new_page(page.context.browser)  # a new user's browser: no click after the link
    try:
        fresh.goto(link(store["experiment_id"], server))
        for family in FAMILIES:
            expect(fresh.get_by_role("link", name=f"evaluate:{family}", exact=True)).to_be_visible(
                timeout=WAIT_MS)  # in the runs list, unfolded; the charts' legends name it too
        expect(fresh.get_by_text(f"train:{FAMILIES[0]}", exact=True)).to_have_count(0)  # filtered
        shown = chart_titles(fresh)
        fresh.set_viewport_size({"width": 1600, "height": 1000})
        path = screenshot(fresh, "charts.png")
    finally:
        fresh.context.close()
    # a chart without data is hidden (label accuracy needs a conditional family)
    scores = [m for m in SCORES if m in store["evaluate_metrics"]]
    assert shown[0] == METRIC, f"first chart {shown[0]!r} of {shown} (screenshot {path})"
    assert shown[:len(scores)] == scores, f"charts {shown} (screenshot {path})"
    assert not [t for t in shown if t.startswith("class_histogram")], shown


def cells(grid) -> list[dict]:
    """The rendered cells of a (virtualized) grid: text and box in page coordinates."""
    return grid.evaluate("""g => [...g.querySelectorAll('[role="rowgroup"] > *')].map(c => {
        const r = c.getBoundingClientRect();
        return {text: c.innerText.trim(), x: r.x, y: r.y, w: r.width, h: r.height};
    })""")


def next_frames(page) -> None:
    """Two animation frames: React has rendered what the last event changed."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def scroll_to_row(page, names, values, metric: str) -> dict:
    """Wheel the metrics table down until `metric`'s row shows whole; its name cell.

    The table is two virtualized grids side by side, names and values; the values grid owns the
    scroll bar and the names grid follows it. In MLflow 3.17 the names follow one scroll event
    late (they copy the values grid's scroll position before React has updated it), so each
    row-high step ends with a 1 px step: the names then lag 1 px, as after a smooth scroll."""
    values.scroll_into_view_if_needed()
    values.hover()
    for _ in range(100):
        table = names.bounding_box()
        found = [c for c in cells(names) if c["text"] == metric]
        if found and table["y"] - 2 <= found[0]["y"] \
                and found[0]["y"] + found[0]["h"] <= table["y"] + table["height"] + 2:
            return found[0]
        for step in (ROW_PX - 1, 1):
            page.mouse.wheel(0, step)
            next_frames(page)
    pytest.fail(f"row {metric} never scrolled into the metrics table; it shows "
                f"{[c['text'] for c in cells(names)]}")


@needs_browser
def test_compare_view_shows_fid_of_each_family(page, served):
    server, store = served
    evaluate = store["evaluate"]
    run_ids = json.dumps([evaluate[f]["run_id"] for f in FAMILIES], separators=(",", ":"))
    experiments = json.dumps([store["experiment_id"]])
    page.goto(f"{server}/#/compare-runs?runs={quote(run_ids)}&experiments={quote(experiments)}")
    expect(page.get_by_text(f"Comparing {len(FAMILIES)} Runs from 1 Experiment")).to_be_visible(
        timeout=WAIT_MS)
    columns = {}  # family -> the left edge of its run's column, from the Run details table
    for family in FAMILIES:
        name = page.get_by_text(f"evaluate:{family}", exact=True)
        expect(name).to_be_visible(timeout=WAIT_MS)
        columns[family] = name.bounding_box()["x"]

    grids = page.locator('[role="grid"]')  # the metrics table: names, values
    expect(grids).to_have_count(2, timeout=WAIT_MS)
    names, values = grids.nth(0), grids.nth(1)
    label = scroll_to_row(page, names, values, METRIC)
    shown = {}  # family -> the text in the metric's row, in the run's column
    for family, x in columns.items():
        hits = [c["text"] for c in cells(values)
                if abs(c["y"] - label["y"]) <= 2 and c["x"] <= x + 2 < c["x"] + c["w"]]
        shown[family] = hits[0] if len(hits) == 1 else hits
    expected = {f: format_metric(evaluate[f][METRIC]) for f in FAMILIES}
    path = screenshot(page, "compare.png")
    assert shown == expected, (f"{METRIC} in the compare view {shown}, in the store {expected} "
                               f"(screenshot {path})")
