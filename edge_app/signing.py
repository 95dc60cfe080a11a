"""Ed25519 signing with key rotation.

A device pins a *keyring*: a set of trusted public keys, each named by its ``key_id``
(the first 16 hex digits of the sha256 of the raw public key). A signed document names
the ``key_id`` that signed it; an unknown key is refused like a bad signature.
Private keys live outside the repository (``partlens keys init``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .atomic import atomic_write_bytes, atomic_write_json
from .errors import IntegrityError, UsageError

log = logging.getLogger(__name__)

DEFAULT_KEY_DIR = Path(os.environ.get("PARTLENS_KEY_DIR", Path.home() / ".config" / "partlens" / "keys"))


def key_id_for(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key and its id."""

    private_raw: bytes

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        priv = Ed25519PrivateKey.from_private_bytes(self.private_raw)
        return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.private_raw).sign(data)

    @classmethod
    def generate(cls) -> "SigningKey":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        priv = Ed25519PrivateKey.generate()
        return cls(priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "SigningKey":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: no such private key file (make one with `partlens keys init`)")
        try:
            raw = base64.b64decode(json.loads(path.read_text())["private_key"])
        except (ValueError, KeyError) as exc:
            raise UsageError(f"{path}: not a partlens private key file ({exc})") from None
        if len(raw) != 32:
            raise UsageError(f"{path}: private key must be 32 bytes, got {len(raw)}")
        return cls(raw)


class Keyring:
    """Trusted public keys, by key id."""

    def __init__(self, keys: Mapping[str, bytes] | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        for kid, raw in (keys or {}).items():
            self.add(raw, expected_id=kid)

    def add(self, public_raw: bytes, expected_id: str | None = None) -> str:
        if len(public_raw) != 32:
            raise IntegrityError(f"public key must be 32 bytes, got {len(public_raw)}")
        kid = key_id_for(public_raw)
        if expected_id is not None and expected_id != kid:
            raise IntegrityError(f"key id {expected_id} does not match its public key ({kid})")
        self._keys[kid] = public_raw
        return kid

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def to_dict(self) -> dict[str, object]:
        return {"schema": 1, "keys": {k: base64.b64encode(v).decode() for k, v in sorted(self._keys.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "Keyring":
        keys = d.get("keys") if isinstance(d, Mapping) else None
        if not isinstance(keys, Mapping):
            raise IntegrityError("keyring has no 'keys' mapping")
        return cls({str(k): base64.b64decode(str(v)) for k, v in keys.items()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Keyring":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: no such keyring file")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{path}: keyring is not valid JSON ({exc})") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    def verify(self, data: bytes, signature: bytes, key_id: str, what: str = "document") -> None:
        """Raise :class:`IntegrityError` unless ``signature`` over ``data`` is valid for a trusted key."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        raw = self._keys.get(key_id)
        if raw is None:
            raise IntegrityError(f"{what} is signed by unknown key {key_id!r} (trusted: {', '.join(self.key_ids) or 'none'})")
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
        except InvalidSignature:
            raise IntegrityError(f"{what} has a bad signature (key {key_id})") from None


def sign_document(data: bytes, key: SigningKey) -> dict[str, str]:
    """A detached signature record: ``{"key_id", "algorithm", "signature"}``."""
    return {"key_id": key.key_id, "algorithm": "ed25519", "signature": base64.b64encode(key.sign(data)).decode()}


def verify_document(data: bytes, sig_record: Mapping[str, object], keyring: Keyring, what: str = "document") -> str:
    """Check a detached signature record; return the key id that signed."""
    try:
        kid = str(sig_record["key_id"])
        alg = str(sig_record.get("algorithm", "ed25519"))
        sig = base64.b64decode(str(sig_record["signature"]), validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise IntegrityError(f"{what}: malformed signature record ({exc})") from None
    if alg != "ed25519":
        raise IntegrityError(f"{what}: unsupported signature algorithm {alg!r}")
    keyring.verify(data, sig, kid, what)
    return kid


def _inside_git_repo(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def init_key(key_dir: str | os.PathLike[str] | None = None, *, allow_in_repo: bool = False) -> tuple[Path, str]:
    """Create a new private key file outside any git repository; return (path, key_id)."""
    key_dir = Path(key_dir) if key_dir else DEFAULT_KEY_DIR
    key_dir = key_dir.resolve()
    repo = _inside_git_repo(key_dir)
    if repo is not None and not allow_in_repo:
        raise UsageError(f"{key_dir} is inside the git repository {repo}; private keys must live outside it")
    key = SigningKey.generate()
    path = key_dir / f"{key.key_id}.key"
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"key_id": key.key_id, "private_key": base64.b64encode(key.private_raw).decode(),
           "public_key": base64.b64encode(key.public_raw).decode()}
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode(), overwrite=False)
    os.chmod(path, 0o600)
    pub = Keyring({key.key_id: key.public_raw})
    pub.save(key_dir / f"{key.key_id}.pub.json")
    log.info("new signing key %s at %s", key.key_id, path)
    return path, key.key_id
