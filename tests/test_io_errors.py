"""Writes that fail (a read-only file system, an input missing half-way): the one-line error names
the file that failed and what failed, and removing the temporary files never hides it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trilemma.errors import DataError
from trilemma.io import atomic_dir, atomic_path, remove

READ_ONLY = os.strerror(errno.EROFS)


def refused(path: Path) -> OSError:
    """What writing `path` on a read-only file system raises."""
    return OSError(errno.EROFS, READ_ONLY, str(path))


@pytest.fixture
def read_only(tmp_path, monkeypatch) -> Path:
    """A folder that, like one on a read-only file system, refuses to remove any file in it, even
    one that is not there (the kernel checks the file system before the name)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    unlink = os.unlink

    def refuse_in_folder(path, *args, **kwargs):
        if Path(os.path.abspath(path)).parent == folder:
            raise refused(path)
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_in_folder)
    return folder


def dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()


def test_a_read_only_output_is_one_cannot_write_line(read_only):
    (read_only / f".a.png.tmp{dead_pid()}").write_text("left by a killed writer")
    out = read_only / "a.png"
    with pytest.raises(DataError) as caught, atomic_path(out) as tmp:
        raise refused(tmp)
    assert str(caught.value) == f"{out}: cannot write ({READ_ONLY})"


def test_a_read_only_file_written_inside_a_staged_folder_is_named_not_the_folder(tmp_path,
                                                                                  read_only):
    checkpoint = read_only / "vae.pt"
    with pytest.raises(DataError) as caught, atomic_dir(tmp_path / "reports") as staged:
        (staged / "loss.csv").write_text("epoch\n")
        with atomic_path(checkpoint) as tmp:
            raise refused(tmp)
    assert str(caught.value) == f"{checkpoint}: cannot write ({READ_ONLY})"
    assert not (tmp_path / "reports").exists()


def test_torch_save_that_cannot_open_its_file_is_one_cannot_write_line(tmp_path):
    out = tmp_path / "model.pt"
    (tmp_path / f".model.pt.tmp{os.getpid()}").mkdir()  # torch cannot open a folder as its file
    with pytest.raises(DataError) as caught, atomic_path(out) as tmp:
        torch.save({"state": 1}, tmp)
    assert str(caught.value) == f"{out}: cannot write ({os.strerror(errno.EISDIR)})"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_missing_input_read_while_staging_a_folder_is_not_found_not_cannot_write(tmp_path):
    out, source = tmp_path / "reports" / "images", tmp_path / "per_class.csv"
    with pytest.raises(DataError) as caught, atomic_dir(out):
        source.read_text()
    assert str(caught.value) == f"{source}: not found"


def test_a_file_that_cannot_be_written_in_a_staged_folder_is_named_where_it_was_going(tmp_path):
    out = tmp_path / "reports"
    with pytest.raises(DataError) as caught, atomic_dir(out) as staged:
        open(staged / "figures" / "grid.png", "wb")  # no such subfolder
    assert str(caught.value) == \
        f"{out / 'figures' / 'grid.png'}: cannot write ({os.strerror(errno.ENOENT)})"


def test_remove_skips_a_missing_file_and_names_one_it_cannot_remove(tmp_path, read_only):
    remove(read_only / "vae.pt")  # nothing to remove: no error, even where removal is refused
    (read_only / "vae.pt").write_bytes(b"checkpoint")
    with pytest.raises(DataError) as caught:
        remove(read_only / "vae.pt")
    assert str(caught.value) == f"{read_only / 'vae.pt'}: cannot remove ({READ_ONLY})"
    (tmp_path / "other.pt").write_bytes(b"checkpoint")
    remove(tmp_path / "other.pt")
    assert not (tmp_path / "other.pt").exists()


def test_a_full_disk_while_copying_an_input_into_a_staged_folder_names_the_output(tmp_path):
    """A copy names its source and destination (filename2): the output is what failed."""
    source = tmp_path / "grid.png"
    source.write_bytes(b"png")
    with pytest.raises(DataError) as caught, atomic_dir(tmp_path / "images") as staged:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(source),
                      None, str(staged / "grid.png"))
    assert str(caught.value) == \
        f"{tmp_path / 'images' / 'grid.png'}: cannot write ({os.strerror(errno.ENOSPC)})"


def test_cleanup_that_cannot_even_look_at_the_temporary_file_keeps_the_first_error(
        tmp_path, monkeypatch):
    out = tmp_path / "metrics.json"
    with pytest.raises(DataError) as caught, atomic_path(out) as tmp:
        monkeypatch.setattr(Path, "is_dir", lambda self: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))))
        raise refused(tmp)
    assert str(caught.value) == f"{out}: cannot write ({READ_ONLY})"


def failing_rename_of(source: Path, monkeypatch, also_back: bool = False) -> None:
    """os.replace fails for `source` (a full disk, say), and, with `also_back`, for the rename
    that would put the old set back."""
    replace = os.replace

    def refuse(src, dst, *args, **kwargs):
        if Path(src) == source or (also_back and Path(src).name.startswith(".reports.old")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refuse)


def test_a_new_folder_that_cannot_take_the_old_ones_place_leaves_the_old_one_whole(
        tmp_path, monkeypatch):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    with pytest.raises(DataError) as caught, atomic_dir(out) as staged:
        (staged / "metrics.json").write_text("new")
        failing_rename_of(staged, monkeypatch)
    assert str(caught.value) == f"{out}: cannot write ({os.strerror(errno.ENOSPC)})"
    assert (out / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_an_old_folder_that_cannot_go_back_stays_aside_and_the_next_run_restores_it(
        tmp_path, monkeypatch):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    with pytest.raises(DataError), atomic_dir(out) as staged:
        (staged / "metrics.json").write_text("new")
        failing_rename_of(staged, monkeypatch, also_back=True)
    monkeypatch.undo()
    aside = sorted(p.name for p in tmp_path.iterdir())
    pid = os.getpid()
    assert aside == [f".reports.old{pid}", f".reports.tmp{pid}"]  # the old set is not deleted
    gone = dead_pid()  # as if that process had been killed there: the next writer mends it
    for kind in ("old", "tmp"):
        os.replace(tmp_path / f".reports.{kind}{pid}", tmp_path / f".reports.{kind}{gone}")
    with pytest.raises(RuntimeError), atomic_dir(out):
        raise RuntimeError("this run fails too")
    assert (out / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_a_folder_set_aside_by_a_killed_writer_is_discarded_when_the_new_one_is_in(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text("new")
    aside = tmp_path / f".reports.old{dead_pid()}"
    aside.mkdir()
    (aside / "metrics.json").write_text("old")
    with atomic_dir(out) as staged:
        (staged / "metrics.json").write_text("newer")
    assert (out / "metrics.json").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_ctrl_c_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    replace = os.replace

    def interrupted(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".reports.tmp"):
            raise KeyboardInterrupt
        return replace(src, dst, *args, **kwargs)

    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as staged:
        (staged / "metrics.json").write_text("new")
        monkeypatch.setattr(os, "replace", interrupted)
    assert (out / "metrics.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]


def test_a_set_aside_folder_whose_new_set_went_in_is_never_brought_back(tmp_path):
    """Killed after the second rename, then the folder removed (`dvc repro` removes a stage's
    outputs before it runs it): the folder set aside is two runs old, not the last whole set."""
    out = tmp_path / "reports"
    aside = tmp_path / f".reports.old{dead_pid()}"
    aside.mkdir()
    (aside / "metrics.json").write_text("two runs ago")
    with pytest.raises(RuntimeError), atomic_dir(out):
        raise RuntimeError("this run fails")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_csv_table_reads_past_blank_lines_and_refuses_a_ragged_row(tmp_path):
    from trilemma.io import read_csv_rows

    table = tmp_path / "per_class.csv"
    table.write_text('digit,name\n0,"zero, nought"\n  \n1,one\n\n', encoding="utf-8")
    assert read_csv_rows(table) == [["digit", "name"], ["0", "zero, nought"], ["1", "one"]]
    table.write_text("digit,name\n,\n1,one\n")  # a row of empty fields is a row, not a gap
    assert read_csv_rows(table) == [["digit", "name"], ["", ""], ["1", "one"]]
    from trilemma.tracking_files import tables

    tables_dir = tmp_path / "reports" / "classifier"  # what sync-mlflow logs from such a file
    tables_dir.mkdir(parents=True)
    (tables_dir / "per_class.csv").write_text("digit,accuracy\n0,0.9\n   \n1,0.8\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert tables("train-classifier", None) == {
            "per_class.json": {"digit": [0, 1], "accuracy": [0.9, 0.8]}}
    table.write_text("digit,name\n0,zero\n1\n")
    with pytest.raises(DataError) as caught:
        read_csv_rows(table)
    assert str(caught.value) == f"{table}: a row's fields do not match the header"
