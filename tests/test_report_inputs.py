"""Broken stage outputs under reports/: `trilemma report` names the file in one line and leaves the
last report whole (it reads every input before it writes anything); a file that may be absent
reads as a note when it is, and as an error when it is there and broken. `sync-mlflow` names a
broken metric file too."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from badinput import error_lines, invoke
from conftest import write_params
from test_report_data import OUT, write_reports
from trilemma.errors import DataError
from trilemma.report import build

FAMILIES = {"cgan": {"sweeps": ["truncation"], "conditional": True}}
CONTROL_RESULT = {"family": "cgan", "kind": "classifier-free", "profile": "quick",
                  "guidance": [{"method": "cfg", "scale": 0.0, "n": 20, "judge_accuracy": 0.5,
                                "referee_accuracy": 0.4, "fid_classifier": 30.0}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A report built once from synthetic stage outputs (test_report_data's)."""
    root = tmp_path_factory.mktemp("built")
    write_reports(root, FAMILIES, [str(d) for d in range(10)], {"real": None, "cgan": None})
    _write(root / "reports/train/cgan/curve.csv",
           "step,images_seen,train_seconds,n,fid_classifier\n10,640,1.0,50,90.0\n"
           "20,1280,2.0,50,80.0\n")
    _write(root / "reports/control/cgan/metrics.json", json.dumps(CONTROL_RESULT))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "git_commit", lambda: "0" * 12)
        mp.chdir(root)
        build.build(["cgan"], OUT, control=["cgan"], i2i=["pix2pix"])
    return root


@pytest.fixture
def reports(built, tmp_path, monkeypatch) -> Path:
    """A copy of `built` to break, the working directory."""
    shutil.copytree(built / "reports", tmp_path / "reports")
    monkeypatch.setattr(build, "git_commit", lambda: "0" * 12)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _fid(path: Path, value) -> None:
    """A new FID in a family's metrics.json: a report that got as far as writing would show it."""
    scores = json.loads(path.read_text())
    scores["fid_classifier"] = value
    path.write_text(json.dumps(scores))


GARBAGE = "a,b\n1,2\n"
BROKEN = [  # (file under reports/, its new text or None to delete it, the error's end)
    ("classifier/timing.json", None, "not found"),
    ("train/cgan/curve.csv", "", "empty (not even a header)"),
    ("train/cgan/curve.csv", GARBAGE, "no column 'step'"),
    ("train/cgan/curve.csv", "step,train_seconds,fid_classifier\nten,1.0,9.0\n",
     "column 'step' holds 'ten', not a number"),
    ("train/cgan/curve.csv", "step,images_seen,train_seconds,n,fid_classifier\n"
     "10,640,1.0,50,-inf\n", "a FID of -inf; a probe's FID is a finite number above 0"),
    ("train/cgan/curve.csv", "step,images_seen,train_seconds,n,fid_classifier\n"
     "10,640,1.0,50,90.0\n20,1280,2.0,50,-4.5\n", "a FID of -4.5; a probe's FID is a finite"),
    ("train/cgan/loss_steps.csv", "", "empty (not even a header)"),
    ("eval/cgan/per_class.csv", "", "empty (not even a header)"),
    ("eval/cgan/per_class.csv", GARBAGE, "no column 'digit'"),
    ("eval/cgan/per_class.csv", "digit,generated,fraction,accuracy\n0,200,0.1,0.9\n1,190\n",
     "a row's fields do not match the header"),  # pandas alone would read blanks into the row
    ("eval/cgan/truncation_sweep.csv", "", "empty (not even a header)"),
    ("eval/cgan/truncation_sweep.csv", GARBAGE, "no column 'setting'"),
    ("eval/cgan/metrics.json", "{}", "no key 'n_samples'"),
    ("eval/cgan/timing.json", "[1]", "not a JSON object"),
    ("eval/real/metrics.json", "{bad", "not valid JSON"),
    ("classifier/per_class.csv", "", "empty (not even a header)"),
    ("control/cgan/metrics.json", "", "empty"),
    ("control/cgan/metrics.json", "{bad", "not valid JSON"),
    ("control/cgan/metrics.json", '{"kind": "classifier-free"}', "no key 'guidance'"),
    ("control/cgan/timing.json", "{bad", "not valid JSON"),
    ("control/referee/metrics.json", "{bad", "not valid JSON"),
    ("eval/pix2pix/metrics.json", "", "empty"),
    ("eval/pix2pix/metrics.json", '{"psnr": "high"}', "'psnr' is 'high', not a number"),
    ("train/pix2pix/timing.json", "{bad", "not valid JSON"),
]


@pytest.mark.parametrize("name, text, error", BROKEN, ids=[f"{b[0]}:{b[2]}" for b in BROKEN])
def test_a_broken_input_is_named_and_the_last_report_stays_whole(reports, name, text, error):
    before = _files(OUT)
    _fid(Path("reports/eval/cgan/metrics.json"), 1.234)
    path = Path("reports") / name
    if text is None:
        path.unlink()
    else:
        _write(path, text)
    with pytest.raises(DataError) as raised:
        build.build(["cgan"], OUT, control=["cgan"], i2i=["pix2pix"])
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and error in message, message
    assert "\n" not in message
    assert _files(OUT) == before  # summary.csv, README.md, figures/ and images/ as they were


@pytest.mark.parametrize("value, error", [
    (float("nan"), "fid_classifier is nan, not a score"),
    (-5.0, "a FID is never negative"),
    (1e300, "fid_classifier is 1e+300, not a score"),  # crashed the figures half-way
])
def test_a_score_that_is_no_score_stops_the_report_before_it_writes(reports, value, error):
    before = _files(OUT)
    _fid(Path("reports/eval/cgan/metrics.json"), value)
    with pytest.raises(DataError, match=f"^reports/eval/cgan/metrics.json: .*{re.escape(error)}"):
        build.build(["cgan"], OUT, control=["cgan"], i2i=["pix2pix"])
    assert _files(OUT) == before


def test_absent_optional_files_are_notes_and_the_report_is_written(reports):
    shutil.rmtree("reports/control")
    Path("reports/train/cgan/curve.csv").unlink()
    _fid(Path("reports/eval/cgan/metrics.json"), 1.234)
    readme = build.build(["cgan"], OUT, control=["cgan"], i2i=["pix2pix"])
    assert "No control results for cgan: run `trilemma control cgan`" in readme
    assert "No referee metrics: run `trilemma train-referee`" in readme
    assert "| pix2pix | not evaluated yet |" in readme and "No learning curves" in readme
    assert "1.234" in (OUT / "summary.csv").read_text()


def test_sync_mlflow_names_a_broken_metric_file_before_it_starts_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_params(tmp_path / "params.yaml")
    _write(tmp_path / "reports/classifier/metrics.json", "{bad")
    _write(tmp_path / "reports/classifier/timing.json", '{"train_seconds": 1.0}')
    _write(tmp_path / "reports/eval/real/metrics.json", '{"n": 10}')
    result = invoke("sync-mlflow")
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        "error: reports/classifier/metrics.json: not valid JSON (Expecting property name "
        "enclosed in double quotes, line 1)"]
    assert not (tmp_path / "mlflow.db").exists()  # no run left open for the broken files


def test_report_names_a_judge_metrics_file_that_is_no_json_object(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path / "params.yaml")
    _write(tmp_path / "reports/classifier/metrics.json", "[1]")
    result = invoke("report")
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == ["error: reports/classifier/metrics.json: not a JSON "
                                          "object"]


def test_sync_reads_a_per_class_table_only_when_its_rows_fit_its_header(tmp_path, monkeypatch):
    from trilemma.tracking_files import tables

    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "reports/classifier/per_class.csv", "digit,n\n0,5\n1,6,7\n")
    with pytest.raises(DataError, match=r"^reports/classifier/per_class.csv: a row's fields"):
        tables("train-classifier", None)
    _write(tmp_path / "reports/classifier/per_class.csv", "digit,n\n0,1_0\n")
    assert tables("train-classifier", None)["per_class.json"]["n"] == ["1_0"]  # not 10
    shutil.rmtree("reports/classifier")
    Path("reports/classifier/per_class.csv").mkdir(parents=True)  # a folder: named, not skipped
    with pytest.raises(DataError, match=r"^reports/classifier/per_class.csv: cannot read as CSV"):
        tables("train-classifier", None)
