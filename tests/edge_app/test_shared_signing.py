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


def test_passphrase_protected_key_files(tmp_path, monkeypatch) -> None:
    """A protected key file holds no usable private key without the passphrase; signing reads it from the env."""
    import base64
    import stat

    from edge_app.signing import PASSPHRASE_ENV, protect_key

    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    path, kid = init_key(tmp_path / "keys", passphrase=b"correct horse")
    doc = json.loads(path.read_text())
    assert "private_key" not in doc and doc["encrypted_private_key"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match=f"protected by a passphrase: set {PASSPHRASE_ENV}"):
        SigningKey.load(path)
    with pytest.raises(UsageError, match="wrong passphrase"):
        SigningKey.load(path, b"wrong horse")
    key = SigningKey.load(path, b"correct horse")
    raw_b64 = base64.b64encode(key.private_raw).decode()
    assert key.key_id == kid and raw_b64 not in path.read_text()
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse")
    ring = Keyring.load(tmp_path / "keys" / f"{kid}.pub.json")
    assert verify_document(b"m", sign_document(b"m", SigningKey.load(path)), ring) == kid
    # a file whose key was swapped for another one under the same name is refused
    other = SigningKey.generate().file_doc(b"correct horse")
    path.write_text(json.dumps({**other, "key_id": kid}))
    with pytest.raises(IntegrityError, match="the key inside is"):
        SigningKey.load(path)

    # protecting an existing plain key keeps its id; a second time is refused
    plain, pid = init_key(tmp_path / "plain")
    before = SigningKey.load(plain)
    with pytest.raises(UsageError, match="no passphrase"):
        protect_key(plain, b"")
    assert protect_key(plain, b"correct horse") == pid
    assert "private_key" not in json.loads(plain.read_text())
    assert SigningKey.load(plain).private_raw == before.private_raw  # env passphrase from above
    with pytest.raises(UsageError, match="already protected"):
        protect_key(plain, b"correct horse")


def test_keys_cli_protect(tmp_path, monkeypatch, capsys) -> None:
    from edge_app.cli import main
    from edge_app.signing import PASSPHRASE_ENV

    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["keys", "init", "--protect", "--dir", str(tmp_path / "k")]) == UsageError.exit_code
    assert f"set {PASSPHRASE_ENV}" in capsys.readouterr().err and not (tmp_path / "k").exists()
    monkeypatch.setenv(PASSPHRASE_ENV, "short")  # the prompt's rule (8 characters) holds for the variable too
    assert main(["keys", "init", "--protect", "--dir", str(tmp_path / "k")]) == UsageError.exit_code
    assert "too short" in capsys.readouterr().err and not (tmp_path / "k").exists()
    monkeypatch.setenv(PASSPHRASE_ENV, "a long passphrase")
    assert main(["keys", "init", "--protect", "--dir", str(tmp_path / "k")]) == 0
    assert "passphrase-protected" in capsys.readouterr().out
    assert main(["keys", "init", "--dir", str(tmp_path / "p")]) == 0
    (plain,) = (tmp_path / "p").glob("*.key")
    assert main(["keys", "protect", str(plain)]) == 0
    assert "encrypted_private_key" in json.loads(plain.read_text())
    assert main(["keys", "protect", str(plain)]) == UsageError.exit_code


def test_a_private_key_other_users_can_read_is_named(tmp_path, caplog) -> None:
    import os

    from edge_app.signing import SigningKey, init_key

    path, _kid = init_key(tmp_path / "k")
    with caplog.at_level("WARNING", logger="edge_app.signing"):
        SigningKey.load(path)
        assert "readable by other users" not in caplog.text  # made 0600
        os.chmod(path, 0o644)
        SigningKey.load(path)
    assert "readable by other users (mode 644)" in caplog.text and "chmod 600" in caplog.text
    assert os.stat(path).st_mode & 0o777 == 0o644  # said, not changed behind the user's back
