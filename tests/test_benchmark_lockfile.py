"""The dvc.lock benchmark: it times DVC's own rewrite of a copy and of a copy with the code deps
as one directory, and leaves the lock file itself alone. Its seconds are the benchmark's business."""

from __future__ import annotations

import yaml

from benchmarks import lockfile

LOCK = {"schema": "2.0", "stages": {
    "train@vae": {"cmd": "trilemma train vae", "deps": [
        {"path": "data/images.npz", "hash": "md5", "md5": "a" * 32, "size": 10},
        {"path": "src/trilemma/config.py", "hash": "md5", "md5": "b" * 32, "size": 20},
        {"path": "src/trilemma/nets", "hash": "md5", "md5": "c" * 32 + ".dir", "size": 30,
         "nfiles": 3}],
        "outs": [{"path": "models/vae.pt", "hash": "md5", "md5": "d" * 32, "size": 40}]},
    "report": {"cmd": "trilemma report", "deps": [
        {"path": "pipeline/report.py", "hash": "md5", "md5": "e" * 32, "size": 50}]}}}


def test_code_deps_become_one_directory_entry_per_stage():
    coarse = lockfile.with_source_as_one_dep(LOCK)
    train = coarse["stages"]["train@vae"]["deps"]
    assert [d["path"] for d in train] == ["data/images.npz", "src"]
    assert train[-1]["size"] == 50 and train[-1]["nfiles"] == 2
    assert coarse["stages"]["report"]["deps"] == LOCK["stages"]["report"]["deps"]


def test_main_times_both_locks_and_leaves_the_lock_as_it_was(tmp_path, capsys):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump(LOCK, sort_keys=False))
    before = lock.read_bytes()
    assert lockfile.main(["--lock", str(lock), "--rounds", "2", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "lockfile.md").read_text()
    assert "| as it is | 2 |" in table and "| src/ deps as one directory | 2 |" in table
    assert "| 4 (2) |" in table and "| 3 (1) |" in table  # deps in all (of them under src/)
    assert lock.read_bytes() == before


def test_a_missing_lock_file_exits_2(tmp_path, capsys):
    assert lockfile.main(["--lock", str(tmp_path / "nope.lock")]) == 2
    assert "nope.lock: no such lock file" in capsys.readouterr().err
