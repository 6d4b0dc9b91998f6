"""rmt_dist.atomic: a reader sees the old file or the whole new one, and a failed write
(a full disk included) leaves no temporary file behind."""

from __future__ import annotations

import errno
import os

import pytest

from rmt_dist import atomic
from rmt_dist.atomic import atomic_path, atomic_write


def test_replaces_whole_file_and_fsyncs_file_and_dir(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    target.write_text("old")
    synced = []
    real = os.fsync
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))
    )
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    assert str(tmp_path) in synced and any(".meta.json.tmp" in s for s in synced)


def test_full_disk_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "COMPLETE"
    target.write_text("old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["COMPLETE"]


def test_writer_failure_inside_atomic_path_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "part.npz", suffix=".npz") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
