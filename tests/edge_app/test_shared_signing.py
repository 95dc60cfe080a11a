"""Ed25519 signing with a pinned keyring and key rotation."""
from __future__ import annotations

import json

import pytest

from edge_app.errors import IntegrityError, UsageError
from edge_app.signing import Keyring, SigningKey, init_key, sign_document, verify_document


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate()
    ring = Keyring({key.key_id: key.public_raw})
    rec = sign_document(b"manifest", key)
    assert verify_document(b"manifest", rec, ring) == key.key_id


def test_tampered_data_and_unknown_key_are_refused() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    ring = Keyring({key.key_id: key.public_raw})
    rec = sign_document(b"manifest", key)
    with pytest.raises(IntegrityError, match="bad signature"):
        verify_document(b"manifesT", rec, ring)
    with pytest.raises(IntegrityError, match="unknown key"):
        verify_document(b"manifest", sign_document(b"manifest", other), ring)
    with pytest.raises(IntegrityError, match="malformed"):
        verify_document(b"manifest", {"key_id": key.key_id, "signature": "%%%"}, ring)


def test_rotation_keyring_trusts_old_and_new_keys(tmp_path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    ring = Keyring({old.key_id: old.public_raw})
    ring.add(new.public_raw)
    ring.save(tmp_path / "ring.json")
    loaded = Keyring.load(tmp_path / "ring.json")
    assert loaded.key_ids == sorted([old.key_id, new.key_id])
    for k in (old, new):
        assert verify_document(b"x", sign_document(b"x", k), loaded) == k.key_id


def test_keyring_refuses_mismatched_key_id() -> None:
    key = SigningKey.generate()
    with pytest.raises(IntegrityError, match="does not match"):
        Keyring({"0" * 16: key.public_raw})


def test_init_key_refuses_inside_a_git_repo(tmp_path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(UsageError, match="outside"):
        init_key(tmp_path / "repo" / "keys")
    path, kid = init_key(tmp_path / "keys")
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(path).key_id == kid
    assert json.loads((tmp_path / "keys" / f"{kid}.pub.json").read_text())["keys"].keys() == {kid}
