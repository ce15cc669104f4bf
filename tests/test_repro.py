"""`trilemma repro` on a small DVC repository of its own: stages that record when they ran and
with how many threads, so that the test sees what ran side by side, in which order, and what
DVC recorded. The real pipeline under `trilemma repro` is test_e2e's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

# a stage: sleep, then write its start, end and thread count as JSON to its output
STAGE = textwrap.dedent("""\
    import json, os, sys, time
    started = time.time()
    time.sleep(float(sys.argv[2]))
    if sys.argv[3] != "0":
        sys.exit(int(sys.argv[3]))
    json.dump({"start": started, "end": time.time(),
               "threads": os.environ.get("OMP_NUM_THREADS")}, open(sys.argv[1], "w"))
""")


def stage(name: str, seconds: float, deps: list[str] = (), code: int = 0) -> dict:
    return {"cmd": f"python stage.py {name}.json {seconds} {code}",
            "deps": ["stage.py", *(f"{d}.json" for d in deps)], "outs": [f"{name}.json"]}


def make_repo(root: Path, stages: dict[str, dict]) -> Path:
    env = without_threads()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env=env)
    (root / "stage.py").write_text(STAGE)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return root


def without_threads() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def repro(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["trilemma", "repro", *args], cwd=root, env=without_threads(),
                          capture_output=True, text=True, timeout=300)


def ran(root: Path, name: str) -> dict:
    return json.loads((root / f"{name}.json").read_text())


@pytest.fixture()
def diamond(tmp_path) -> Path:
    """a and b independent, c waits for both."""
    return make_repo(tmp_path, {"a": stage("a", 3), "b": stage("b", 3),
                                "c": stage("c", 0, deps=["a", "b"])})


def test_independent_stages_run_side_by_side_and_dvc_records_them(diamond: Path):
    done = repro(diamond, "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    a, b, c = ran(diamond, "a"), ran(diamond, "b"), ran(diamond, "c")
    assert a["start"] < b["end"] and b["start"] < a["end"], "a and b did not overlap"
    assert c["start"] >= max(a["end"], b["end"]), "c started before what it depends on"
    # each stage has half the cores, c too although it runs alone: results depend on threads
    cores = len(os.sched_getaffinity(0))
    assert a["threads"] == b["threads"] == c["threads"] == str(max(1, cores // 2))
    assert ("3 ran, 0 unchanged, 0 restored from DVC's run cache, 0 failed, 0 not started"
            in done.stdout)
    status = subprocess.run(["dvc", "status"], cwd=diamond, capture_output=True, text=True)
    assert "up to date" in status.stdout
    assert (diamond / "logs/repro/a.log").is_file()

    again = repro(diamond)
    assert again.returncode == 0 and "every stage is up to date" in again.stdout
    # a changed command: a reruns, and c, which waits for it; b stays as it was
    stages = yaml.safe_load((diamond / "dvc.yaml").read_text())["stages"]
    stages["a"]["cmd"] = stages["a"]["cmd"].replace(" 3 ", " 1 ")
    (diamond / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    changed = repro(diamond)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert "a: ran" in changed.stdout and "c: ran" in changed.stdout
    assert "b:" not in changed.stdout and ran(diamond, "b") == b


def test_jobs_1_runs_one_at_a_time(diamond: Path):
    done = repro(diamond, "--force", "--jobs", "1")
    assert done.returncode == 0 and "3 ran" in done.stdout
    a, b = ran(diamond, "a"), ran(diamond, "b")
    assert a["end"] <= b["start"] or b["end"] <= a["start"], "--jobs 1 overlapped stages"


def test_a_target_brings_only_what_it_depends_on(diamond: Path):
    done = repro(diamond, "a")
    assert done.returncode == 0 and "1 ran" in done.stdout
    assert not (diamond / "b.json").exists()


def test_a_failure_starts_nothing_new_and_keeps_what_finished(tmp_path):
    root = make_repo(tmp_path, {"bad": stage("bad", 0, code=3), "after": stage("after", 0, ["bad"]),
                                "good": stage("good", 1)})
    done = repro(root)
    assert done.returncode == 1
    assert "bad exited with" in done.stderr and "logs/repro/bad.log" in done.stderr
    assert ("1 ran, 0 unchanged, 0 restored from DVC's run cache, 1 failed, 1 not started"
            in done.stdout)
    assert ran(root, "good") and not (root / "after.json").exists()
    assert "good" not in subprocess.run(["dvc", "status"], cwd=root, capture_output=True,
                                        text=True).stdout
    # one at a time: the stage still waiting when the failure came does not start, as in dvc repro
    one = tmp_path / "one"
    one.mkdir()
    make_repo(one, {"bad": stage("bad", 0, code=3), "after": stage("after", 0, ["bad"]),
                    "good": stage("good", 0)})  # bad first: the longer chain
    done = repro(one, "--jobs", "1")
    assert done.returncode == 1 and "1 failed, 2 not started" in done.stdout
    assert not (one / "good.json").exists()


def test_an_unknown_target_is_one_line_and_exit_code_2(diamond: Path):
    done = repro(diamond, "nonesuch")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "nonesuch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def stage_log_entries(starts: list[float], seconds: float, before: set) -> list[dict]:
    """One ok entry per stage the report counts, the i-th starting at starts[i % len(starts)]."""
    from datetime import datetime, timezone
    return [{"stage": stage, "family": family, "profile": "quick", "device": "cpu (1 threads)",
             "status": "ok", "wall_seconds": seconds, "startup_seconds": 1.0,
             "started": datetime.fromtimestamp(starts[i % len(starts)], timezone.utc).isoformat()}
            for i, (stage, family) in enumerate(sorted(before, key=str))]


@pytest.mark.parametrize("side_by_side", [True, False])
def test_the_report_states_the_wall_clock_only_when_stages_overlapped(tmp_path, side_by_side,
                                                                      monkeypatch):
    from pipeline.report import pipeline_time
    from trilemma.config import load_params
    from trilemma.stage_log import before_report

    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    p = load_params(params)
    wanted = before_report(p.families, p.i2i_families, p.control.families)
    # side by side: two stages at a time, 60 s each; else one after the other
    starts = [1e9 + 60 * (i // 2 if side_by_side else i) for i in range(len(wanted))]
    span_minutes = math.ceil(len(wanted) / 2) if side_by_side else len(wanted)
    log = tmp_path / "logs/stages.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(e) + "\n" for e in stage_log_entries(starts, 60.0, wanted)))
    monkeypatch.chdir(tmp_path)  # the project the log belongs to
    line = pipeline_time(params, p)
    assert f"**{len(wanted):.1f} min**" in line  # 60 s each, added up
    if side_by_side:
        assert f"{span_minutes:.1f} min from the first start to the last end" in line
        assert "include a neighbour's load" in line
    else:
        assert "first start" not in line and "neighbour" not in line
