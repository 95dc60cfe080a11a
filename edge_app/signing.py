"""Ed25519 signing with key rotation.

A device pins a *keyring*: a set of trusted public keys, each named by its ``key_id``
(the first 16 hex digits of the sha256 of the raw public key). A signed document names
the ``key_id`` that signed it; an unknown key is refused like a bad signature.
Private keys live outside the repository (``partlens keys init``). A key file can be protected by a
passphrase (``keys init --protect``, ``keys protect``): the private key is then stored only as an encrypted
PKCS#8 PEM, and every command that signs reads the passphrase from ``PARTLENS_KEY_PASSPHRASE`` (an unattended
hub gets it from its service's environment; it never goes on a command line).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .atomic import PRIVATE, atomic_write_bytes, atomic_write_json
from .errors import InputError, IntegrityError, UsageError

log = logging.getLogger(__name__)

DEFAULT_KEY_DIR = Path(os.environ.get("PARTLENS_KEY_DIR", Path.home() / ".config" / "partlens" / "keys"))
#: environment variable holding the passphrase of protected private key files
PASSPHRASE_ENV = "PARTLENS_KEY_PASSPHRASE"


def env_passphrase() -> bytes | None:
    """The passphrase from :data:`PASSPHRASE_ENV`, if set and not empty."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _warn_if_readable_by_others(path: Path) -> None:
    """A private key other users can read (e.g. copied with a 0644 umask) signs bundles every tablet trusts:
    say so (the file is left as it is: it is the user's)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s: the private key is readable by other users (mode %o); run `chmod 600 %s`", path, mode, path)


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
    def load(cls, path: str | os.PathLike[str], passphrase: bytes | None = None) -> "SigningKey":
        """Read a key file; a protected one needs ``passphrase`` (else :data:`PASSPHRASE_ENV`)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such private key file (make one with `partlens keys init`)")
        _warn_if_readable_by_others(path)
        try:
            doc = json.loads(path.read_text())
            if "encrypted_private_key" in doc:
                key = cls._decrypt(path, doc["encrypted_private_key"], passphrase or env_passphrase())
                if key.key_id != doc.get("key_id"):
                    raise IntegrityError(f"{path}: the key inside is {key.key_id}, the file says {doc.get('key_id')}")
                return key
            raw = base64.b64decode(doc["private_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}: not a partlens private key file ({exc})") from None
        if len(raw) != 32:
            raise UsageError(f"{path}: private key must be 32 bytes, got {len(raw)}")
        return cls(raw)

    @classmethod
    def _decrypt(cls, path: Path, pem: str, passphrase: bytes | None) -> "SigningKey":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                                  load_pem_private_key)

        if not passphrase:
            raise UsageError(f"{path} is protected by a passphrase: set {PASSPHRASE_ENV}")
        try:
            priv = load_pem_private_key(pem.encode(), password=passphrase)
        except (ValueError, TypeError):
            raise UsageError(f"{path}: wrong passphrase (from {PASSPHRASE_ENV}), or a damaged key file") from None
        if not isinstance(priv, Ed25519PrivateKey):
            raise UsageError(f"{path}: not an Ed25519 key")
        return cls(priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def file_doc(self, passphrase: bytes | None = None) -> dict[str, str]:
        """The key file's JSON: the raw private key, or with ``passphrase`` only its encrypted PKCS#8 PEM."""
        doc = {"key_id": self.key_id, "public_key": base64.b64encode(self.public_raw).decode()}
        if not passphrase:
            return {**doc, "private_key": base64.b64encode(self.private_raw).decode()}
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

        pem = Ed25519PrivateKey.from_private_bytes(self.private_raw).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase))
        return {**doc, "encrypted_private_key": pem.decode()}


#: what a trusted key may sign: model bundles (the export workstation's key) or the hub's own documents
#: (catalogue packages, device settings, TLS offers); a key may hold both (one key for a small site or the demo)
ROLES = ("bundle", "hub")
_ROLE_NAMES = {"bundle": "model bundles", "hub": "hub documents (packages, settings, TLS offers)"}


class Keyring:
    """Trusted public keys, by key id, each with the roles it may sign for.

    A key added without roles (a keyring written before roles existed) may sign anything, as it could then."""

    def __init__(self, keys: Mapping[str, bytes] | None = None,
                 roles: Mapping[str, Iterable[str]] | None = None) -> None:
        self._keys: dict[str, bytes] = {}
        self._roles: dict[str, frozenset[str]] = {}
        for kid, raw in (keys or {}).items():
            self.add(raw, expected_id=kid, roles=(roles or {}).get(kid))

    def add(self, public_raw: bytes, expected_id: str | None = None, roles: Iterable[str] | None = None) -> str:
        """Trust a key (for ``roles``; None = for anything). Adding a trusted key again only widens its roles,
        and adding it again without roles keeps the ones it has (never silently trusted for everything)."""
        if len(public_raw) != 32:
            raise IntegrityError(f"public key must be 32 bytes, got {len(public_raw)}")
        kid = key_id_for(public_raw)
        if expected_id is not None and expected_id != kid:
            raise IntegrityError(f"key id {expected_id} does not match its public key ({kid})")
        wanted = None if roles is None else frozenset(_checked_roles(roles))
        known = kid in self._keys
        if wanted is not None and not (known and kid not in self._roles):  # (a key trusted for anything stays so)
            self._roles[kid] = self._roles.get(kid, frozenset()) | wanted
        self._keys[kid] = public_raw
        return kid

    def remove(self, key_id: str) -> bool:
        """Stop trusting ``key_id`` (a leaked or retired key); False if it was not trusted."""
        self._roles.pop(key_id, None)
        return self._keys.pop(key_id, None) is not None

    def without(self, key_ids: Iterable[str]) -> "Keyring":
        """A copy of this keyring that does not trust ``key_ids`` (this one is unchanged)."""
        ring = Keyring.from_dict(self.to_dict())
        for kid in key_ids:
            ring.remove(kid)
        return ring

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def public_key(self, key_id: str) -> bytes:
        """The raw 32-byte public key ``key_id`` (KeyError if not trusted)."""
        return self._keys[key_id]

    def roles(self, key_id: str) -> frozenset[str] | None:
        """What ``key_id`` may sign; None when it is trusted for anything (a keyring from before roles)."""
        return self._roles.get(key_id)

    def key_ids_for(self, role: str) -> list[str]:
        return [k for k in self.key_ids if k not in self._roles or role in self._roles[k]]

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"schema": 1,
                                "keys": {k: base64.b64encode(v).decode() for k, v in sorted(self._keys.items())}}
        if self._roles:
            d["roles"] = {k: sorted(r) for k, r in sorted(self._roles.items())}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "Keyring":
        keys = d.get("keys") if isinstance(d, Mapping) else None
        if not isinstance(keys, Mapping):
            raise IntegrityError("keyring has no 'keys' mapping")
        roles = d.get("roles", {})
        if not isinstance(roles, Mapping) or not all(isinstance(r, list) for r in roles.values()):
            raise IntegrityError("keyring 'roles' must map key ids to lists of roles")
        for r in roles.values():
            _checked_roles(r)
        try:
            raw = {str(k): base64.b64decode(str(v), validate=True) for k, v in keys.items()}
        except ValueError as exc:  # binascii.Error is a ValueError
            raise IntegrityError(f"keyring holds a key that is not base64 ({exc})") from None
        return cls(raw, roles={str(k): v for k, v in roles.items()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Keyring":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such keyring file")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{path}: keyring is not valid JSON ({exc})") from None
        except IntegrityError as exc:
            raise IntegrityError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    def verify(self, data: bytes, signature: bytes, key_id: str, what: str = "document",
               role: str | None = None) -> None:
        """Raise :class:`IntegrityError` unless ``signature`` over ``data`` is valid for a trusted key that may
        sign for ``role`` (None: any trusted key)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        raw = self._keys.get(key_id)
        if raw is None:
            raise IntegrityError(f"{what} is signed by unknown key {key_id!r} (trusted: {', '.join(self.key_ids) or 'none'})")
        allowed = self._roles.get(key_id)
        if role is not None and allowed is not None and role not in allowed:
            raise IntegrityError(f"{what} is signed by key {key_id}, which is trusted for "
                                 f"{' and '.join(_ROLE_NAMES[r] for r in sorted(allowed))} only, not for "
                                 f"{_ROLE_NAMES[role]}")
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
        except InvalidSignature:
            raise IntegrityError(f"{what} has a bad signature (key {key_id})") from None


def _checked_roles(roles: Iterable[str]) -> list[str]:
    out = list(roles)
    bad = [r for r in out if r not in ROLES]
    if bad or not out:
        raise IntegrityError(f"key roles must be some of {ROLES}, got {out!r}")
    return out


def sign_document(data: bytes, key: SigningKey) -> dict[str, str]:
    """A detached signature record: ``{"key_id", "algorithm", "signature"}``."""
    return {"key_id": key.key_id, "algorithm": "ed25519", "signature": base64.b64encode(key.sign(data)).decode()}


def verify_document(data: bytes, sig_record: Mapping[str, object], keyring: Keyring, what: str = "document",
                    role: str | None = None) -> str:
    """Check a detached signature record (by a key trusted for ``role``); return the key id that signed."""
    try:
        kid = str(sig_record["key_id"])
        alg = str(sig_record.get("algorithm", "ed25519"))
        sig = base64.b64decode(str(sig_record["signature"]), validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise IntegrityError(f"{what}: malformed signature record ({exc})") from None
    if alg != "ed25519":
        raise IntegrityError(f"{what}: unsupported signature algorithm {alg!r}")
    keyring.verify(data, sig, kid, what, role)
    return kid


def _inside_git_repo(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def init_key(key_dir: str | os.PathLike[str] | None = None, *, allow_in_repo: bool = False,
             passphrase: bytes | None = None) -> tuple[Path, str]:
    """Create a new private key file outside any git repository (encrypted with ``passphrase`` if given);
    return (path, key_id)."""
    key_dir = Path(key_dir) if key_dir else DEFAULT_KEY_DIR
    key_dir = key_dir.resolve()
    repo = _inside_git_repo(key_dir)
    if repo is not None and not allow_in_repo:
        raise UsageError(f"{key_dir} is inside the git repository {repo}; private keys must live outside it")
    key = SigningKey.generate()
    path = key_dir / f"{key.key_id}.key"
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_key_file(path, key.file_doc(passphrase), overwrite=False)
    pub = Keyring({key.key_id: key.public_raw})
    pub.save(key_dir / f"{key.key_id}.pub.json")
    log.info("new signing key %s at %s", key.key_id, path)
    return path, key.key_id


def _write_key_file(path: Path, doc: Mapping[str, str], *, overwrite: bool) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode(), overwrite=overwrite, mode=PRIVATE)


def protect_key(path: str | os.PathLike[str], passphrase: bytes) -> str:
    """Encrypt an existing plain key file in place (same key id; written to a temporary file, then renamed, so
    a crash leaves the old file or the new one). Returns the key id. Backups of the plain file stay plain."""
    if not passphrase:
        raise UsageError(f"no passphrase: set {PASSPHRASE_ENV}")
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such private key file")
    try:
        protected = "encrypted_private_key" in json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not a partlens private key file ({exc})") from None
    if protected:
        raise UsageError(f"{path} is already protected by a passphrase")
    key = SigningKey.load(path)
    _write_key_file(path, key.file_doc(passphrase), overwrite=True)
    log.info("key %s at %s is now protected by a passphrase", key.key_id, path)
    return key.key_id
