"""The sync package format: a catalogue delta or a full snapshot, as one signed tar.

``delta-000012-000015.tar`` (changes after version 12 up to 15) or ``snapshot-000015.tar``
holds two members:

- ``package.json.gz``: header (format, site, versions, bundle id, hub time) and the rows:
  ``parts``, ``inventory`` (the device's site only), ``images``, ``deleted_parts``,
  ``deleted_images``, ``deleted_inventory`` and ``embedding_ids``;
- ``embeddings.npy``: float16 ``(N, D)`` vectors of ``embedding_ids``, computed on the hub
  with the model of bundle ``bundle_id``.

Next to it, ``<name>.sig.json`` holds a descriptor (name, sha256, size, versions, site,
bundle id) and a detached Ed25519 record over the descriptor's canonical JSON. A device
verifies the signature against its pinned keyring, then the file's sha256 and size, then
that the header inside agrees with the signed descriptor.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge_app.atomic import atomic_write_bytes
from edge_app.errors import IntegrityError
from edge_app.signing import Keyring, SigningKey, sign_document, verify_document

log = logging.getLogger(__name__)

FORMAT = "partlens-delta/1"
MAX_MEMBER_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Package:
    """Everything a device at ``from_version`` needs to reach ``to_version``."""

    from_version: int
    to_version: int
    site: str
    bundle_id: str | None
    full: bool
    parts: list[dict[str, Any]]
    inventory: list[dict[str, Any]]
    images: list[dict[str, Any]]
    deleted_parts: list[str]
    deleted_images: list[str]
    deleted_inventory: list[str]
    embedding_ids: list[str]
    embeddings: np.ndarray  # float16 (N, D)
    hub_time: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the hub's catalogue lineage: 0 until the hub is restored from a backup (``hub restore`` starts a
    #: newer one); a device accepts a snapshot of a newer lineage even at a lower version
    epoch: int = 0
    #: the hub that made it (signed in the descriptor): a tablet refuses another hub's package, also one signed
    #: by a key both hubs share (None: a package made before hubs named themselves in it)
    hub_id: str | None = None

    @property
    def name(self) -> str:
        return package_name(self.from_version, self.to_version, self.full, self.epoch)


def package_name(from_version: int, to_version: int, full: bool, epoch: int = 0) -> str:
    lineage = f"e{epoch}-" if epoch else ""
    return (f"snapshot-{lineage}{to_version:06d}.tar" if full
            else f"delta-{lineage}{from_version:06d}-{to_version:06d}.tar")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _header(pkg: Package) -> dict[str, Any]:
    head = {"format": FORMAT, "site": pkg.site, "from_version": pkg.from_version, "to_version": pkg.to_version,
            "full": pkg.full, "bundle_id": pkg.bundle_id, "hub_time": pkg.hub_time}
    if pkg.epoch:  # only after a hub restore: packages of hubs never restored stay byte-identical
        head["epoch"] = int(pkg.epoch)
    if pkg.hub_id:
        head["hub_id"] = str(pkg.hub_id)
    return head


def encode_package(pkg: Package) -> bytes:
    """The tar bytes of a package (deterministic: fixed member order and mtimes)."""
    body = dict(_header(pkg), parts=pkg.parts, inventory=pkg.inventory, images=pkg.images,
                deleted_parts=pkg.deleted_parts, deleted_images=pkg.deleted_images,
                deleted_inventory=pkg.deleted_inventory, embedding_ids=pkg.embedding_ids,
                embedding_dim=int(pkg.embeddings.shape[1]) if pkg.embeddings.size else 0)
    js = gzip.compress(json.dumps(body, separators=(",", ":")).encode(), compresslevel=6, mtime=0)
    npy = io.BytesIO()
    np.save(npy, np.ascontiguousarray(pkg.embeddings, dtype=np.float16), allow_pickle=False)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("package.json.gz", js), ("embeddings.npy", npy.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_package(pkg: Package, out_dir: str | Path, key: SigningKey) -> tuple[Path, dict[str, Any]]:
    """Write ``<name>`` and ``<name>.sig.json`` (immutable: an existing file is kept); return (path, sig doc)."""
    out_dir = Path(out_dir)
    path = out_dir / pkg.name
    sig_path = out_dir / (pkg.name + ".sig.json")
    if path.is_file() and sig_path.is_file():
        return path, json.loads(sig_path.read_text())
    data = encode_package(pkg)
    descriptor = dict(_header(pkg), name=pkg.name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    doc = {"descriptor": descriptor, "signature": sign_document(canonical(descriptor), key)}
    for target, blob in ((path, data), (sig_path, canonical(doc))):
        try:
            atomic_write_bytes(target, blob, overwrite=False)
        except FileExistsError:
            pass  # another request wrote the same immutable file first
    return path, json.loads(sig_path.read_text())


def verify_descriptor(sig_doc: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
    """Check the signature over a package descriptor; return the descriptor."""
    try:
        descriptor = dict(sig_doc["descriptor"])
        record = sig_doc["signature"]
    except (KeyError, TypeError, ValueError):
        raise IntegrityError("package signature file has no descriptor/signature") from None
    verify_document(canonical(descriptor), record, keyring, what=f"package {descriptor.get('name')}", role="hub")
    if descriptor.get("format") != FORMAT:
        raise IntegrityError(f"package {descriptor.get('name')}: unknown format {descriptor.get('format')!r}")
    return descriptor


def read_package(path: str | Path, sig_doc: Mapping[str, Any], keyring: Keyring) -> Package:
    """Verify signature, sha256, size and header of a package file, then decode it."""
    path = Path(path)
    desc = verify_descriptor(sig_doc, keyring)
    size = path.stat().st_size
    if size != desc["size"]:
        raise IntegrityError(f"{path}: {size} bytes, the signed descriptor says {desc['size']} (truncated?)")
    digest = sha256_file(path)
    if digest != desc["sha256"]:
        raise IntegrityError(f"{path}: sha256 {digest[:12]}.. does not match the signed {desc['sha256'][:12]}..")
    try:
        with tarfile.open(path, mode="r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            if set(members) != {"package.json.gz", "embeddings.npy"}:
                raise IntegrityError(f"{path}: unexpected members {sorted(members)}")
            for m in members.values():
                if not m.isfile() or m.size > MAX_MEMBER_BYTES:
                    raise IntegrityError(f"{path}: member {m.name} is not a plain file of sane size")
            body = json.loads(gzip.decompress(tar.extractfile(members["package.json.gz"]).read()))  # type: ignore[union-attr]
            vecs = np.load(io.BytesIO(tar.extractfile(members["embeddings.npy"]).read()),  # type: ignore[union-attr]
                           allow_pickle=False)
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise IntegrityError(f"{path}: cannot read package ({exc})") from None
    for k in ("format", "site", "from_version", "to_version", "full", "bundle_id", "epoch", "hub_id"):
        if body.get(k) != desc.get(k):
            raise IntegrityError(f"{path}: header {k}={body.get(k)!r} disagrees with the signed {desc.get(k)!r}")
    try:
        ids = body["embedding_ids"]
        if not isinstance(ids, list):
            raise TypeError("embedding_ids is not a list")
        if vecs.dtype != np.float16 or (ids and (vecs.ndim != 2 or vecs.shape[0] != len(ids))):
            raise IntegrityError(f"{path}: embeddings {vecs.dtype} {vecs.shape} do not match {len(ids)} ids")
        return Package(from_version=int(body["from_version"]), to_version=int(body["to_version"]),
                       site=body["site"], bundle_id=body["bundle_id"], full=bool(body["full"]), parts=body["parts"],
                       inventory=body["inventory"], images=body["images"], deleted_parts=body["deleted_parts"],
                       deleted_images=body["deleted_images"], deleted_inventory=body["deleted_inventory"],
                       embedding_ids=list(ids), embeddings=vecs, hub_time=body.get("hub_time"),
                       epoch=int(body.get("epoch") or 0), hub_id=body.get("hub_id"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # signed, but not of the format's shape
        raise IntegrityError(f"{path}: package body is malformed ({type(exc).__name__}: {exc})") from None
