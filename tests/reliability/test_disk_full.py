"""A full disk: nothing lost, nothing half-written. (kill -9 and the other interrupts, at each
phase of a run: test_interrupts.py; three in a row through the sweep: tests/sweep/test_sweep_reliability.py)"""
import errno

import pytest

from harness import io


def test_disk_full_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"fid": 1.0})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(target, {"fid": 2.0, "geneval_overall": 0.5})
    assert io.read_json(target) == {"fid": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_disk_full_while_updating_the_results_table_keeps_the_old_table(tmp_path, monkeypatch):
    from harness.sweep import table

    path = tmp_path / "runs.csv"
    table.upsert(path, [{"run_key": "a", "seed": 0, "status": "completed", "fid": 3.0}])
    before = path.read_text()
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        table.upsert(path, [{"run_key": "b", "seed": 0, "status": "completed", "fid": 4.0}])
    assert path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
