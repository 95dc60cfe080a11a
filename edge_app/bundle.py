"""Reading and verifying signed model bundles on the device.

A bundle is a folder ``<root>/<bundle_id>/`` holding ``manifest.json``, its detached
signature ``manifest.sig`` and the files the manifest lists with their sha256 and size
(``model.tflite``, optionally ``model.onnx`` on the desktop, ``embeddings.npy``,
``embeddings.json``, ``index.hnsw``). Nothing is trusted before the signature over the
exact manifest bytes checks out against a pinned :class:`~edge_app.signing.Keyring`;
then every file is checked against its hash. ``bundle_id`` is content-addressed:
``v{version}-{sha256(canonical manifest without bundle_id and created_at)[:12]}`` (schema 2), so two
bundles that differ in anything the device uses (files, labels, preprocessing, calibration, index
parameters) never share an id. Schema-1 bundles (ids over the ``files`` section only) are still read.

This module is imported by the device runtime: json, hashlib, tarfile and numpy only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .atomic import fsync_dir
from .errors import InputError, IntegrityError, UsageError
from .preprocess import PreprocessSpec
from .signing import Keyring, verify_document

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: manifests this reader accepts (1: the id covered the files only)
READABLE_SCHEMAS = (1, 2)
#: what the schema-2 content address leaves out: the id itself, and when it was built
ID_EXCLUDED_KEYS = ("bundle_id", "created_at")
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
KINDS = ("device", "desktop")
#: Model kind -> file name inside the bundle.
MODEL_FILES = {"tflite": "model.tflite", "onnx": "model.onnx"}
#: Model files each bundle kind may carry.
ALLOWED_MODELS = {"device": ("model.tflite",), "desktop": ("model.tflite", "model.onnx")}
CATALOGUE_FILES = ("embeddings.npy", "embeddings.json", "index.hnsw")
REQUIRED_KEYS = (
    "schema_version", "bundle_id", "version", "created_at", "model_name", "files", "preprocess", "labels",
    "embedding_dim", "outputs", "quantization", "parity", "accuracy", "index", "calibration", "key_id", "kind",
)
#: A bundle file name: one plain path component, no separators, no leading dot.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BUNDLE_ID_RE = re.compile(r"^v[0-9]{1,12}-[0-9a-f]{12}$")
#: Refuse archives that would unpack to more than this (a tar bomb).
DEFAULT_MAX_ARCHIVE_BYTES = 2 * 1024**3
_CHUNK = 1 << 20


def check_file_name(name: object, what: str = "bundle") -> str:
    """Return ``name`` if it is a plain file name that cannot escape the bundle folder."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise IntegrityError(f"{what}: unsafe file name {name!r} (must be one plain path component)")
    return name


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streamed sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def files_digest(files: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 of the canonical JSON of a manifest ``files`` section (the content address)."""
    canon = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def make_bundle_id(version: int, files: Mapping[str, Mapping[str, Any]]) -> str:
    """The schema-1 id: over the ``files`` section only (kept to read older bundles)."""
    return f"v{int(version)}-{files_digest(files)[:12]}"


def bundle_id_for(manifest: Mapping[str, Any]) -> str:
    """The id a manifest must carry: schema 2 over the whole canonical manifest except
    :data:`ID_EXCLUDED_KEYS`; schema 1 over its files."""
    if manifest.get("schema_version") == 1:
        return make_bundle_id(manifest["version"], manifest["files"])
    body = {k: v for k, v in manifest.items() if k not in ID_EXCLUDED_KEYS}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")  # any text, lone surrogates too
    return f"v{int(manifest['version'])}-{hashlib.sha256(canon).hexdigest()[:12]}"


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes written to ``manifest.json`` (and signed)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def probe_input(spec: PreprocessSpec) -> np.ndarray:
    """The fixed synthetic image (a colour gradient) whose outputs the export machine records in the manifest
    (``probe``) and the device checks after installing a bundle: (1, ...) float32, laid out as ``spec``."""
    from PIL import Image

    from .preprocess import preprocess_image

    h, w = spec.size
    grad = np.linspace(0, 255, w * h * 3, dtype=np.float32).reshape(h, w, 3).astype(np.uint8)
    return preprocess_image(Image.fromarray(grad, "RGB"), spec)[None]


#: the device's probe embedding must be at least this close (cosine) to the export machine's
PROBE_MIN_COSINE = 0.98


def validate_manifest(manifest: object, what: str = "manifest") -> dict[str, Any]:
    """Schema check of a parsed manifest; raise :class:`IntegrityError` naming the problem."""
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{what}: not a JSON object")
    if manifest.get("schema_version") not in READABLE_SCHEMAS:
        raise IntegrityError(
            f"{what}: unknown schema_version {manifest.get('schema_version')!r} (this reader knows "
            f"{', '.join(map(str, READABLE_SCHEMAS))}; update the app)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise IntegrityError(f"{what}: missing keys {', '.join(missing)}")
    kind = manifest["kind"]
    if kind not in KINDS:
        raise IntegrityError(f"{what}: unknown kind {kind!r} (expected one of {KINDS})")
    version = manifest["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise IntegrityError(f"{what}: version must be a positive integer, got {version!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise IntegrityError(f"{what}: 'files' must be a non-empty mapping")
    for name, entry in files.items():
        check_file_name(name, what)
        if name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise IntegrityError(f"{what}: 'files' may not list {name}")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                and isinstance(entry.get("size"), int) and entry["size"] >= 0):
            raise IntegrityError(f"{what}: file entry {name!r} needs a sha256 hex digest and an integer size")
    models = [n for n in files if n in MODEL_FILES.values()]
    if not models:
        raise IntegrityError(f"{what}: lists no model file")
    bad = [n for n in models if n not in ALLOWED_MODELS[kind]]
    if bad:
        raise IntegrityError(f"{what}: a {kind} bundle may not carry {', '.join(bad)}")
    absent = [n for n in CATALOGUE_FILES if n not in files]
    if absent:
        raise IntegrityError(f"{what}: lists no {', '.join(absent)}")
    bid = manifest["bundle_id"]
    if not isinstance(bid, str) or not BUNDLE_ID_RE.match(bid):
        raise IntegrityError(f"{what}: malformed bundle_id {bid!r}")
    labels = manifest["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise IntegrityError(f"{what}: 'labels' must be a non-empty list of strings")
    dim = manifest["embedding_dim"]
    if not isinstance(dim, int) or dim < 1:
        raise IntegrityError(f"{what}: embedding_dim must be a positive integer, got {dim!r}")
    outputs = manifest["outputs"]
    if not isinstance(outputs, dict) or not {"logits", "embedding"} <= set(outputs):
        raise IntegrityError(f"{what}: 'outputs' must describe 'logits' and 'embedding'")
    index = manifest["index"]
    if not isinstance(index, dict) or index.get("space") != "cosine":
        raise IntegrityError(f"{what}: index.space must be 'cosine'")
    catalogue = manifest.get("catalogue", {})
    if not isinstance(catalogue, dict) or not isinstance(catalogue.get("views", "none"), str):
        raise IntegrityError(f"{what}: catalogue.views must be the name of a view set")
    if not isinstance(manifest["preprocess"], dict):
        raise IntegrityError(f"{what}: 'preprocess' must be a mapping")
    try:
        PreprocessSpec.from_dict(manifest["preprocess"])
    except (UsageError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{what}: invalid preprocess spec ({exc})") from None
    expected = bundle_id_for(manifest)  # last: a malformed field is named as such, not as a changed id
    if bid != expected:
        raise IntegrityError(f"{what}: bundle_id {bid} does not match its content ({expected})")
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder. Construct with :func:`load_bundle`."""

    root: Path
    manifest: dict[str, Any]
    signed_by: str

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def catalogue_views(self) -> str:
        """How the catalogue vectors were made (:mod:`edge_app.catalogue_views`; ``none`` in older bundles)."""
        return str((self.manifest.get("catalogue") or {}).get("views", "none"))

    @property
    def paths(self) -> dict[str, Path]:
        """Every listed file name -> its path."""
        return {name: self.root / name for name in self.manifest["files"]}

    @property
    def model_kinds(self) -> list[str]:
        """Model kinds present (``tflite``, ``onnx``)."""
        return [k for k, n in MODEL_FILES.items() if n in self.manifest["files"]]

    def model_path(self, kind: str = "tflite") -> Path:
        """Path of the ``tflite`` or ``onnx`` model; :class:`UsageError` if this bundle has none."""
        if kind not in MODEL_FILES:
            raise UsageError(f"unknown model kind {kind!r} (expected one of {', '.join(MODEL_FILES)})")
        name = MODEL_FILES[kind]
        if name not in self.manifest["files"]:
            raise UsageError(f"bundle {self.bundle_id} has no {kind} model (it has: {', '.join(self.model_kinds)})")
        return self.root / name

    def load_embeddings(self) -> np.ndarray:
        """Catalogue embeddings, float32 (N, D), L2-normalised, row order of :meth:`load_catalogue_rows`."""
        return np.load(self.root / "embeddings.npy", allow_pickle=False)

    def load_catalogue_rows(self) -> list[dict[str, str]]:
        """Rows ``{"image_id", "part_number"}`` in the order of the embeddings."""
        return json.loads((self.root / "embeddings.json").read_text("utf-8"))


def _read_manifest(root: Path) -> tuple[bytes, bytes]:
    mpath, spath = root / MANIFEST_NAME, root / SIGNATURE_NAME
    for p in (mpath, spath):
        if p.is_symlink() or not p.is_file():
            raise IntegrityError(f"{p}: missing (or not a regular file)")
    return mpath.read_bytes(), spath.read_bytes()


def _verified_manifest(data: bytes, sig_raw: bytes, keyring: Keyring, where: str) -> tuple[dict[str, Any], str]:
    """(manifest, signing key id) from the manifest's and its signature record's bytes: the signature by a bundle
    key first, then JSON and schema; ``where`` names the bundle (folder or archive member) in errors."""
    try:
        sig = json.loads(sig_raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{where}/{SIGNATURE_NAME}: not a valid signature record ({exc})") from None
    if not isinstance(sig, dict):
        raise IntegrityError(f"{where}/{SIGNATURE_NAME}: not a valid signature record")
    signed_by = verify_document(data, sig, keyring, what=f"{where}/{MANIFEST_NAME}", role="bundle")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{where}/{MANIFEST_NAME}: not valid JSON ({exc})") from None
    validate_manifest(manifest, what=f"{where}/{MANIFEST_NAME}")
    return manifest, signed_by


def _check_catalogue_shapes(root: Path, manifest: Mapping[str, Any]) -> None:
    try:
        emb = np.load(root / "embeddings.npy", mmap_mode="r", allow_pickle=False)
        rows = json.loads((root / "embeddings.json").read_text("utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{root}: unreadable catalogue embeddings ({exc})") from None
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[1] != manifest["embedding_dim"]:
        raise IntegrityError(f"{root}/embeddings.npy: expected float32 (N, {manifest['embedding_dim']}), "
                             f"got {emb.dtype} {emb.shape}")
    if not isinstance(rows, list) or len(rows) != emb.shape[0]:
        raise IntegrityError(f"{root}/embeddings.json: {len(rows) if isinstance(rows, list) else '?'} rows "
                             f"for {emb.shape[0]} embeddings")


def load_bundle(path: str | os.PathLike[str], keyring: Keyring) -> Bundle:
    """Verify the bundle folder at ``path`` (signature, schema, every file's size and hash)."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: no such bundle folder")
    if not root.is_dir():
        raise IntegrityError(f"{root}: not a bundle folder")
    manifest, signed_by = _verified_manifest(*_read_manifest(root), keyring, str(root))
    if manifest["key_id"] != signed_by:
        raise IntegrityError(f"{root}: manifest names key {manifest['key_id']} but was signed by {signed_by}")
    for name, entry in manifest["files"].items():
        p = root / name
        if p.is_symlink() or not p.is_file():
            raise IntegrityError(f"{p}: listed in the manifest but missing (or not a regular file)")
        size = p.stat().st_size
        if size != entry["size"]:
            raise IntegrityError(f"{p}: size {size} differs from the manifest ({entry['size']})")
        digest = sha256_file(p)
        if digest != entry["sha256"]:
            raise IntegrityError(f"{p}: sha256 {digest[:16]}... differs from the manifest ({entry['sha256'][:16]}...)")
    _check_catalogue_shapes(root, manifest)
    extras = sorted(set(os.listdir(root)) - set(manifest["files"]) - {MANIFEST_NAME, SIGNATURE_NAME})
    if extras:
        log.warning("%s: ignoring files not listed in the manifest: %s", root, ", ".join(extras))
    if root.name != manifest["bundle_id"]:
        log.warning("%s: folder name differs from bundle_id %s", root, manifest["bundle_id"])
    log.info("bundle %s verified (key %s)", manifest["bundle_id"], signed_by)
    return Bundle(root=root, manifest=manifest, signed_by=signed_by)


def _archive_members(tf: tarfile.TarFile, tar_path: Path, max_bytes: int) -> tuple[str, list[tarfile.TarInfo]]:
    """Check every member of a bundle archive before anything is written."""
    top: str | None = None
    files: list[tarfile.TarInfo] = []
    total = 0
    for m in tf:
        parts = m.name.split("/")
        if m.name.startswith("/") or "\\" in m.name or any(p in ("", ".", "..") for p in parts):
            raise IntegrityError(f"{tar_path}: member {m.name!r} escapes the bundle folder")
        if top is None:
            top = parts[0]
        if parts[0] != top:
            raise IntegrityError(f"{tar_path}: members in more than one top folder ({top!r}, {parts[0]!r})")
        if not BUNDLE_ID_RE.match(top):
            raise IntegrityError(f"{tar_path}: top folder {top!r} is not a bundle id")
        if m.isdir() and len(parts) == 1:
            continue
        if not m.isreg() or m.issparse():
            raise IntegrityError(f"{tar_path}: member {m.name!r} is not a regular file (links, devices and sparse "
                                 "files are refused)")
        if len(files) >= MAX_ARCHIVE_MEMBERS:
            raise IntegrityError(f"{tar_path}: more than {MAX_ARCHIVE_MEMBERS} members (a bundle has a few files)")
        if len(parts) != 2:
            raise IntegrityError(f"{tar_path}: member {m.name!r} is nested (bundles are flat)")
        check_file_name(parts[1], what=str(tar_path))
        total += m.size
        if total > max_bytes:
            raise IntegrityError(f"{tar_path}: unpacks to more than {max_bytes} bytes")
        files.append(m)
    if top is None or not files:
        raise IntegrityError(f"{tar_path}: empty archive")
    names = [m.name for m in files]
    if len(set(names)) != len(names):
        raise IntegrityError(f"{tar_path}: duplicate members")
    return top, files


#: members of a bundle archive (a bundle has its manifest, signature, model, embeddings, rows and index)
MAX_ARCHIVE_MEMBERS = 32
#: the largest manifest or signature record read from an archive before its signature is checked
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


#: the largest tar extended header (PAX, GNU long name) accepted: Python's tarfile reads one whole into memory
MAX_TAR_HEADER_BYTES = 64 * 1024


def _refuse_big_headers(tar_path: Path) -> None:
    """Walk the raw tar headers before :mod:`tarfile` does: an extended header (PAX ``x``/``g``, GNU ``L``/``K``)
    is read whole into memory by tarfile, so a forged archive with a 300 MB one took 300 MB and 13 s before any
    check. Refused here, reading only the 512-byte headers."""
    with open(tar_path, "rb") as fh:
        size_total = os.fstat(fh.fileno()).st_size
        pos = 0
        for _ in range(4 * MAX_ARCHIVE_MEMBERS + 8):
            fh.seek(pos)
            block = fh.read(tarfile.BLOCKSIZE)
            if len(block) < tarfile.BLOCKSIZE or not block.strip(b"\0"):
                return  # the end (or a short file: tarfile says so next)
            raw = block[124:136]
            if raw[0] & 0x80:  # base-256 size (over 8 GB)
                size = int.from_bytes(raw[1:], "big")
            else:
                try:
                    size = int(raw.strip(b"\0 ") or b"0", 8)
                except ValueError:
                    return  # not a tar header: tarfile gives the error
            if block[156:157] in (b"x", b"g", b"L", b"K") and size > MAX_TAR_HEADER_BYTES:
                raise IntegrityError(f"{tar_path}: an extended tar header of {size} bytes (bundles have none "
                                     f"over {MAX_TAR_HEADER_BYTES})")
            pos += tarfile.BLOCKSIZE + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if pos > size_total:
                return


def _signed_file_list(tf: tarfile.TarFile, tar_path: Path, top: str, members: list[tarfile.TarInfo],
                      keyring: Keyring) -> None:
    """Verify the archive's manifest signature and check that its members are exactly the files the signed
    manifest lists, at their signed sizes, before anything is written: an unsigned archive (a forged hub, a
    tampered download) cannot make the tablet write what it likes first (it filled the space kept for photos)."""
    by_name = {m.name.split("/")[1]: m for m in members}
    raw = {}
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        m = by_name.get(name)
        if m is None:
            raise IntegrityError(f"{tar_path}: no {name}")
        if m.size > MAX_MANIFEST_BYTES:
            raise IntegrityError(f"{tar_path}: {name} is {m.size} bytes, over {MAX_MANIFEST_BYTES}")
        src = tf.extractfile(m)
        if src is None:
            raise IntegrityError(f"{tar_path}: cannot read member {m.name!r}")
        with src:
            raw[name] = src.read()
    manifest, _ = _verified_manifest(raw[MANIFEST_NAME], raw[SIGNATURE_NAME], keyring, f"{tar_path}:{top}")
    listed = manifest["files"]
    for name, m in by_name.items():
        if name in (MANIFEST_NAME, SIGNATURE_NAME):
            continue
        if name not in listed:
            raise IntegrityError(f"{tar_path}: {name} is not a file of the signed manifest")
        if int(listed[name]["size"]) != m.size:
            raise IntegrityError(f"{tar_path}: {name} is {m.size} bytes, the signed manifest says "
                                 f"{listed[name]['size']}")
    missing = sorted(set(listed) - set(by_name))
    if missing:
        raise IntegrityError(f"{tar_path}: signed files missing from the archive: {', '.join(missing)}")


#: an ``.unpack-*`` folder older than this was left by a killed unpack (one takes seconds): deleted
STALE_UNPACK_S = 3600.0


def sweep_stale_unpacks(dest: str | os.PathLike[str], max_age_s: float = STALE_UNPACK_S) -> int:
    """Delete ``.unpack-*`` folders a killed unpack left in ``dest`` (each up to a whole bundle); a young one
    may be another process's unpack in progress and is left alone (``max_age_s=0``: the caller knows no unpack
    into ``dest`` runs, e.g. a sync holding the device's lock). Returns the bytes freed."""
    import time

    now, freed = time.time(), 0
    for p in Path(dest).glob(".unpack-*"):
        try:
            if p.is_dir() and not p.is_symlink() and now - p.stat().st_mtime >= max_age_s:
                size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
                shutil.rmtree(p)
                freed += size
                log.info("deleted %s, left by an unpack that was stopped", p)
        except OSError as exc:
            log.warning("could not delete %s left by a stopped unpack (%s)", p, exc)
    return freed


def open_archive(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str], keyring: Keyring, *,
                 max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES) -> Bundle:
    """Unpack a bundle ``.tar`` into ``dest/<bundle_id>/`` after checking every member, then verify it.

    The folder appears only once fully written and verified (unpacked into a temporary folder,
    then renamed). If that bundle id is already present and verifies, it is returned unchanged; if it does
    not verify with ``keyring`` (signed by a key no longer trusted), the archive's copy replaces it.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if not tar_path.is_file():
        raise IntegrityError(f"{tar_path}: no such archive")
    dest.mkdir(parents=True, exist_ok=True)
    sweep_stale_unpacks(dest)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
    try:
        try:
            _refuse_big_headers(tar_path)
            with tarfile.open(tar_path, "r:") as tf:
                top, members = _archive_members(tf, tar_path, max_bytes)
                _signed_file_list(tf, tar_path, top, members, keyring)
                out_dir = tmp / top
                out_dir.mkdir()
                for m in members:
                    src = tf.extractfile(m)
                    if src is None:
                        raise IntegrityError(f"{tar_path}: cannot read member {m.name!r}")
                    target = out_dir / m.name.split("/")[1]
                    with src, open(target, "xb") as fh:
                        shutil.copyfileobj(src, fh, _CHUNK)
                        if fh.tell() != m.size:
                            raise IntegrityError(f"{tar_path}: member {m.name!r} is truncated")
                        fh.flush()
                        os.fsync(fh.fileno())
                end = tf.offset  # just past the last member's data
        except (tarfile.TarError, EOFError) as exc:
            raise IntegrityError(f"{tar_path}: truncated or corrupt archive ({exc})") from None
        if tar_path.stat().st_size < end + 2 * tarfile.BLOCKSIZE:
            raise IntegrityError(f"{tar_path}: truncated archive (no end-of-archive marker)")
        fsync_dir(out_dir)
        bundle = load_bundle(out_dir, keyring)
        if top != bundle.bundle_id:
            raise IntegrityError(f"{tar_path}: top folder {top} differs from the bundle id {bundle.bundle_id}")
        final = dest / top
        if final.exists():
            try:
                found = load_bundle(final, keyring)
                log.info("bundle %s already present in %s", top, dest)
                return found
            except IntegrityError as exc:
                # the same content signed by a key this device no longer trusts (e.g. enrolled with another hub
                # since): the archive's verified copy takes its place
                log.warning("bundle %s in %s does not verify (%s); replacing it with the archive's", top, dest, exc)
                stale = tmp / ".stale"
                os.rename(final, stale)
        os.rename(out_dir, final)
        fsync_dir(dest)
        return Bundle(root=final, manifest=bundle.manifest, signed_by=bundle.signed_by)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
