"""Atomic writes: no partial file under the final name, immutability when asked."""
from __future__ import annotations

import os

import pytest

from edge_app.atomic import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path) -> None:
    p = tmp_path / "a" / "f.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(p.parent) == ["f.bin"]


def test_immutable_write_refuses_existing(tmp_path) -> None:
    p = tmp_path / "v1.json"
    atomic_write_json(p, {"v": 1}, overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write_json(p, {"v": 2}, overwrite=False)
    assert '"v": 1' in p.read_text()
    assert os.listdir(tmp_path) == ["v1.json"]


def test_failed_write_keeps_old_content(tmp_path, monkeypatch) -> None:
    p = tmp_path / "f.txt"
    atomic_write_bytes(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.txt"]
