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


def test_private_files_never_exist_with_wider_permissions(tmp_path, monkeypatch) -> None:
    """A secret (key, token, hub secret) is mode 0600 from before its first byte: the moment it appears under its
    name it is already private (a chmod after the rename left a window, and a kill there left it readable)."""
    import stat

    from edge_app import atomic
    from edge_app.atomic import PRIVATE

    seen = []
    real_replace, real_link = os.replace, os.link

    def spy_replace(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real_replace(src, dst)

    def spy_link(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real_link(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy_replace)
    monkeypatch.setattr(atomic.os, "link", spy_link)
    atomic_write_bytes(tmp_path / "k", b"secret", mode=PRIVATE)
    atomic_write_json(tmp_path / "d.json", {"token": "t"}, mode=PRIVATE)
    atomic_write_bytes(tmp_path / "once", b"x", overwrite=False, mode=PRIVATE)
    atomic_write_bytes(tmp_path / "plain", b"x")
    assert seen[:3] == [0o600, 0o600, 0o600] and seen[3] != 0o600
    assert all(stat.S_IMODE(os.stat(tmp_path / n).st_mode) == 0o600 for n in ("k", "d.json", "once"))


def test_secret_writers_use_private_mode(tmp_path, monkeypatch) -> None:
    """Every writer of a secret asks for it: signing keys, the hub's token secret, device.json, TLS keys, QR PNG."""
    import stat

    from edge_app.signing import init_key
    from sync.hub.auth import load_or_create_secret

    key, _ = init_key(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    secret = tmp_path / "secret.bin"
    load_or_create_secret(secret)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    os.chmod(secret, 0o644)  # as an older version could leave it after a kill between write and chmod
    load_or_create_secret(secret)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
