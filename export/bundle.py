"""Writing signed model bundles (the reader and verifier is :mod:`edge_app.bundle`).

:func:`build_bundle` assembles a bundle folder in a temporary directory next to its final place
(every file fsynced), signs the exact manifest bytes and renames the folder into
``<root>/<bundle_id>/``. It never replaces an existing version. :func:`write_archive` packs a
bundle into a ``.tar`` for transport (:func:`edge_app.bundle.open_archive` unpacks it).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_app.atomic import fsync_dir
from edge_app.bundle import (
    ALLOWED_MODELS, KINDS, MANIFEST_NAME, MODEL_FILES, SCHEMA_VERSION, SIGNATURE_NAME, check_file_name,
    bundle_id_for, manifest_bytes, sha256_file, validate_manifest,
)
from edge_app.catalogue_views import check_views
from edge_app.errors import InputError, IntegrityError, UsageError
from edge_app.preprocess import PreprocessSpec
from edge_app.signing import Keyring, SigningKey, sign_document

log = logging.getLogger(__name__)

#: What the exported outputs are; copied into every manifest.
DEFAULT_OUTPUTS: dict[str, dict[str, Any]] = {
    "logits": {"dtype": "float32", "shape": ["batch", "num_classes"],
               "description": "class scores before softmax, in the order of 'labels'"},
    "embedding": {"dtype": "float32", "shape": ["batch", "embedding_dim"], "normalized": False,
                  "description": "PRE-normalisation embedding dequantised to float32; the runtime must "
                                 "L2-normalise it before cosine search (int8 unit vectors lose too much)"},
}


@dataclass(frozen=True)
class IndexParams:
    """hnswlib build and search parameters (stored in the manifest)."""

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    seed: int = 0

    #: bounds beyond which a value is a typo: hnswlib's links per node cost memory on the tablet (M x 8 bytes x
    #: 2 per image at level 0), and ef beyond a few thousand only slows every search
    MAX_M = 128
    MAX_EF = 10_000

    def __post_init__(self) -> None:
        if not 2 <= self.M <= self.MAX_M:
            raise UsageError(f"index M must be 2..{self.MAX_M} (hnswlib links per node; 16 is usual), got {self.M}")
        for name in ("ef_construction", "ef_search"):
            if not 1 <= getattr(self, name) <= self.MAX_EF:
                raise UsageError(f"index {name} must be 1..{self.MAX_EF}, got {getattr(self, name)}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def build_index(embeddings: np.ndarray, path: Path, params: IndexParams) -> None:
    """An hnswlib cosine index over ``embeddings`` (ids are row numbers), saved to ``path``."""
    import hnswlib

    n, dim = embeddings.shape
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=max(n, 1), ef_construction=params.ef_construction, M=params.M,
                     random_seed=params.seed)
    index.set_num_threads(1)  # deterministic graph
    index.add_items(embeddings, np.arange(n))
    index.set_ef(params.ef_search)
    index.save_index(str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def existing_versions(root: Path) -> dict[int, str]:
    """Version -> bundle id of the bundle folders already under ``root`` (by folder name)."""
    out: dict[int, str] = {}
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("v") and "-" in p.name:
                head = p.name[1:].split("-", 1)[0]
                if head.isdigit():
                    out[int(head)] = p.name
    return out


def _check_inputs(kind: str, model_files: Mapping[str, Path], labels: Sequence[str], embeddings: np.ndarray,
                  rows: Sequence[Mapping[str, Any]], version: int) -> None:
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UsageError(f"version must be a positive integer, got {version!r}")
    if not model_files:
        raise UsageError("a bundle needs at least one model file")
    for name, src in model_files.items():
        if name not in MODEL_FILES.values():
            raise UsageError(f"unknown model file name {name!r} (expected {', '.join(MODEL_FILES.values())})")
        if name not in ALLOWED_MODELS[kind]:
            raise UsageError(f"a {kind} bundle may not carry {name} (allowed: {', '.join(ALLOWED_MODELS[kind])})")
        if not Path(src).is_file():
            raise InputError(f"{src}: no such model file")
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise UsageError("labels must be a non-empty list of strings")
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InputError(f"catalogue embeddings must be a non-empty (N, D) array, got shape {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise InputError("catalogue embeddings contain NaN or inf")
    if len(rows) != embeddings.shape[0]:
        raise InputError(f"{len(rows)} catalogue rows for {embeddings.shape[0]} embeddings")
    for i, r in enumerate(rows):
        if not r.get("image_id") or not r.get("part_number"):
            raise InputError(f"catalogue row {i} needs image_id and part_number: {dict(r)!r}")


def build_bundle(
    root: str | os.PathLike[str],
    *,
    version: int,
    model_name: str,
    model_files: Mapping[str, str | os.PathLike[str]],
    kind: str,
    preprocess: PreprocessSpec,
    labels: Sequence[str],
    embeddings: np.ndarray,
    catalogue_rows: Sequence[Mapping[str, Any]],
    key: SigningKey,
    quantization: Mapping[str, Any],
    parity: Mapping[str, Any],
    accuracy: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    index: IndexParams = IndexParams(),
    created_at: str | None = None,
    catalogue_views: str = "none",
    probe: Mapping[str, Any] | None = None,
) -> Path:
    """Write a signed bundle under ``root``; return its folder ``root/<bundle_id>``.

    ``model_files`` maps bundle names (``model.tflite``, ``model.onnx``) to source files.
    ``embeddings`` are the catalogue embeddings computed with the exported model (see
    :func:`export.catalogue.embed_images`); they are stored L2-normalised. ``calibration``
    (confidence thresholds etc.) is owned by the runtime and copied as given. ``catalogue_views``
    names how ``embeddings`` were made (:mod:`edge_app.catalogue_views`); the hub repeats it.
    Refuses (:class:`UsageError`) a version that exists under ``root`` or is not newer than it.
    """
    root = Path(root)
    model_files = {k: Path(v) for k, v in model_files.items()}
    raw = np.asarray(embeddings, dtype=np.float32)
    _check_inputs(kind, model_files, labels, raw, catalogue_rows, version)
    check_views(catalogue_views)
    if not np.all(np.linalg.norm(raw, axis=1) > 0):
        raise InputError("catalogue embeddings contain all-zero rows")
    emb = l2_normalize(raw)
    have = existing_versions(root)
    if version in have:
        raise UsageError(f"version {version} already exists under {root} ({have[version]}); bundles are immutable")
    if have and version < max(have):
        raise UsageError(f"version {version} is older than the newest bundle under {root} (v{max(have)}); "
                         "versions must increase")
    root.mkdir(parents=True, exist_ok=True)
    claim = root / f".v{version}.claim"
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _take_claim(claim, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        for name, src in model_files.items():
            _copy_file(src, tmp / name)
        buf = tmp / "embeddings.npy"
        with open(buf, "xb") as fh:
            np.save(fh, emb, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        rows = [{"image_id": str(r["image_id"]), "part_number": str(r["part_number"])} for r in catalogue_rows]
        _write_file(tmp / "embeddings.json", (json.dumps(rows, indent=1) + "\n").encode())
        build_index(emb, tmp / "index.hnsw", index)
        files = {}
        for name in sorted(os.listdir(tmp)):
            check_file_name(name)
            files[name] = {"sha256": sha256_file(tmp / name), "size": (tmp / name).stat().st_size}
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "bundle_id": "",  # the content address, set below once the manifest is complete
            "version": version,
            "created_at": created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model_name": model_name,
            "kind": kind,
            "files": files,
            "preprocess": preprocess.to_dict(),
            "labels": list(labels),
            "embedding_dim": int(emb.shape[1]),
            "outputs": dict(outputs or DEFAULT_OUTPUTS),
            "quantization": dict(quantization),
            "parity": dict(parity),
            "accuracy": dict(accuracy or {}),
            "index": {"space": "cosine", "M": index.M, "ef_construction": index.ef_construction,
                      "ef_search": index.ef_search},
            "catalogue": {"count": int(emb.shape[0]), "normalized": True,
                          "parts": len({r["part_number"] for r in rows}), "views": catalogue_views},
            "calibration": dict(calibration or {}),
            "key_id": key.key_id,
        }
        if probe:  # the device model's outputs on edge_app.bundle.probe_input: the tablet's smoke test compares
            manifest["probe"] = dict(probe)
        # over the manifest as written (JSON round trip: what a reader hashes)
        manifest["bundle_id"] = bundle_id = bundle_id_for(json.loads(manifest_bytes(manifest)))
        validate_manifest(json.loads(manifest_bytes(manifest)), what="new manifest")
        data = manifest_bytes(manifest)
        _write_file(tmp / MANIFEST_NAME, data)
        _write_file(tmp / SIGNATURE_NAME, (json.dumps(sign_document(data, key), indent=2) + "\n").encode())
        fsync_dir(tmp)
        final = root / bundle_id
        try:
            os.rename(tmp, final)
        except OSError as exc:
            raise UsageError(f"{final} already exists; bundles are immutable ({exc})") from None
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        claim.unlink(missing_ok=True)
        raise
    log.info("wrote bundle %s (%s, %d catalogue images, key %s)", bundle_id, kind, emb.shape[0], key.key_id)
    return final


def _claim_doc(tmp: Path) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "build_dir": tmp.name}


def _take_claim(claim: Path, tmp: Path) -> None:
    """Take ``claim`` for this build (two concurrent builders cannot both take one version). The claim names its
    builder (pid, host, temporary folder): a claim left by a build killed on this machine is taken over, and
    its half-written folder removed, instead of blocking that version until someone deletes it by hand."""
    import fcntl

    def link() -> None:  # created with its content in one step: a reader never sees an empty claim
        staged = tmp / ".claim"
        staged.write_text(json.dumps(_claim_doc(tmp)) + "\n")
        try:
            os.link(staged, claim)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (exFAT/FAT drives, some network shares): create, then fill
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(staged.read_text())
        finally:
            staged.unlink()

    try:
        link()
        return
    except FileExistsError:
        pass
    with open(claim.parent / ".claims.lock", "a+") as lock:  # one takeover at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        owner = _stale_claim_owner(claim)
        if owner is not None:
            log.warning("version claim %s was left by a stopped build (pid %s); taking it over", claim, owner["pid"])
            build_dir = str(owner.get("build_dir") or "")
            if build_dir.startswith(".build-") and "/" not in build_dir:
                shutil.rmtree(claim.parent / build_dir, ignore_errors=True)
            claim.unlink(missing_ok=True)
            try:
                link()
                return
            except FileExistsError:
                pass
    raise UsageError(f"version {claim.name[2:-6]} is being built or was taken under {claim.parent} ({claim}); if "
                     f"no build is running, an earlier one was stopped: delete {claim.name} and any .build-* folder "
                     "there, then build again") from None


def _stale_claim_owner(claim: Path) -> dict[str, Any] | None:
    """The claim's owner when it is a build on this machine whose process is gone; None otherwise (running,
    finished (its version exists), on another machine, or a claim without an owner, as older versions wrote)."""
    try:
        doc = json.loads(claim.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("host") != socket.gethostname():
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    version = int(claim.name[2:-6])
    if version in existing_versions(claim.parent):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return doc
    except PermissionError:
        return None  # alive, someone else's
    return None


#: bundle files that are catalogue data, not the model (rebuilt by :func:`build_bundle`)
CATALOGUE_FILES = ("embeddings.npy", "embeddings.json", "index.hnsw")


def reissue_bundle(src: str | os.PathLike[str], root: str | os.PathLike[str], *, keyring: Keyring, key: SigningKey,
                   version: int) -> Path:
    """The verified bundle ``src`` again under a new, higher ``version``: same model files, preprocessing,
    labels, catalogue vectors, calibration and index parameters; a new id and signature.

    This is how a model is rolled back: tablets (and the hub) refuse any bundle not newer than the one they
    run, so the earlier model comes back as a newer version. ``src`` must verify with ``keyring`` first."""
    from edge_app.bundle import load_bundle

    old = load_bundle(src, keyring)
    m = old.manifest
    if not isinstance(version, int) or version <= int(m["version"]):
        raise UsageError(f"the reissued bundle needs a version above {m['version']} (the bundle's own; tablets take "
                         f"only newer versions), got {version!r}")
    model_files = {name: old.root / name for name in m["files"] if name not in CATALOGUE_FILES}
    idx = m.get("index") or {}
    new = build_bundle(
        root, version=version, model_name=m["model_name"], model_files=model_files, kind=m["kind"],
        preprocess=PreprocessSpec.from_dict(m["preprocess"]), labels=m["labels"],
        embeddings=np.load(old.root / "embeddings.npy", allow_pickle=False),
        catalogue_rows=json.loads((old.root / "embeddings.json").read_text()), key=key,
        quantization=m.get("quantization") or {}, parity=m.get("parity") or {}, accuracy=m.get("accuracy"),
        calibration=m.get("calibration"), outputs=m.get("outputs"),
        index=IndexParams(M=int(idx.get("M", 16)), ef_construction=int(idx.get("ef_construction", 200)),
                          ef_search=int(idx.get("ef_search", 64))),
        catalogue_views=str((m.get("catalogue") or {}).get("views") or "none"), probe=m.get("probe"))
    log.warning("bundle %s (version %s) reissued as %s (version %d)", m["bundle_id"], m["version"], new.name, version)
    return new


def write_archive(bundle_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Pack a bundle folder into an uncompressed, deterministic ``.tar`` (``<bundle_id>/<file>`` members).

    Only the manifest, its signature and the files it lists are packed. The archive is written to a
    temporary file, fsynced and renamed into place.
    """
    bundle_dir, out = Path(bundle_dir), Path(out)
    try:
        manifest = json.loads((bundle_dir / MANIFEST_NAME).read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{bundle_dir}: not a bundle folder ({exc})") from None
    validate_manifest(manifest, what=str(bundle_dir / MANIFEST_NAME))
    bid = manifest["bundle_id"]
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w:", format=tarfile.PAX_FORMAT) as tf:
                for name in [MANIFEST_NAME, SIGNATURE_NAME, *sorted(manifest["files"])]:
                    src = bundle_dir / name
                    if src.is_symlink() or not src.is_file():
                        raise IntegrityError(f"{src}: missing (or not a regular file)")
                    entry = manifest["files"].get(name)
                    if entry is not None and sha256_file(src) != entry["sha256"]:
                        raise IntegrityError(f"{src}: changed since the bundle was built (sha256 differs from its "
                                             "manifest); not packed")
                    info = tarfile.TarInfo(f"{bid}/{name}")
                    info.size = src.stat().st_size
                    info.mode = 0o644
                    info.mtime = 0
                    with open(src, "rb") as f:
                        tf.addfile(info, f)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, out)
        fsync_dir(out.parent)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return out


def describe(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A short summary of a bundle's manifest (unverified; for logs and listings)."""
    m = json.loads((Path(bundle_dir) / MANIFEST_NAME).read_bytes())
    return {k: m.get(k) for k in ("bundle_id", "version", "kind", "model_name", "embedding_dim", "created_at")} | {
        "files": {k: v["size"] for k, v in m.get("files", {}).items()}}


__all__ = ["IndexParams", "DEFAULT_OUTPUTS", "build_bundle", "write_archive", "build_index", "l2_normalize",
           "existing_versions", "describe", "reissue_bundle"]
