"""Signed bundles: writing, verifying, archiving, and every refusal (no model needed)."""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from edge_app.bundle import (
    MANIFEST_NAME, SIGNATURE_NAME, bundle_id_for, load_bundle, make_bundle_id, manifest_bytes, open_archive, sha256_file,
)
from edge_app.errors import IntegrityError, UsageError
from edge_app.preprocess import PreprocessSpec
from edge_app.signing import Keyring, SigningKey, sign_document
from export.bundle import IndexParams, build_bundle, write_archive

N, D = 12, 8


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def keyring(key: SigningKey) -> Keyring:
    return Keyring({key.key_id: key.public_raw})


def _build(root: Path, key: SigningKey, version: int = 1, kind: str = "device", **kw) -> Path:
    rng = np.random.default_rng(0)
    model = root.parent / f"model-{version}.tflite"
    model.write_bytes(b"TFL3" + rng.bytes(256))
    files = kw.pop("model_files", {"model.tflite": model})
    emb = rng.normal(size=(N, D)).astype(np.float32)
    rows = [{"image_id": f"img{i}.jpg", "part_number": f"P{i % 4}"} for i in range(N)]
    return build_bundle(root, version=version, model_name="tiny", model_files=files, kind=kind,
                        preprocess=PreprocessSpec(size=(64, 64)), labels=["P0", "P1", "P2", "P3"], embeddings=emb,
                        catalogue_rows=rows, key=key, quantization={"format": "tflite-int8"},
                        parity={"tflite-int8": {"passed": True}}, calibration={"threshold": 0.5},
                        index=IndexParams(M=8, ef_construction=50, ef_search=20), **kw)


def _resign(bundle: Path, key: SigningKey, edit) -> None:
    m = json.loads((bundle / MANIFEST_NAME).read_bytes())
    edit(m)
    data = manifest_bytes(m)
    (bundle / MANIFEST_NAME).write_bytes(data)
    (bundle / SIGNATURE_NAME).write_text(json.dumps(sign_document(data, key)))


def test_build_and_load_roundtrip(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "bundles", key)
    b = load_bundle(path, keyring)
    m = b.manifest
    assert path.name == b.bundle_id == bundle_id_for(m)
    assert b.bundle_id.startswith("v1-") and m["schema_version"] == 2 and m["kind"] == "device"
    assert set(m["files"]) == {"model.tflite", "embeddings.npy", "embeddings.json", "index.hnsw"}
    assert m["index"] == {"space": "cosine", "M": 8, "ef_construction": 50, "ef_search": 20}
    assert m["calibration"] == {"threshold": 0.5} and m["key_id"] == key.key_id == b.signed_by
    assert m["outputs"]["embedding"]["normalized"] is False
    assert b.preprocess == PreprocessSpec(size=(64, 64)) and b.labels == ["P0", "P1", "P2", "P3"]
    assert b.model_path("tflite") == path / "model.tflite"
    with pytest.raises(UsageError):
        b.model_path("onnx")
    emb = b.load_embeddings()
    assert emb.dtype == np.float32 and emb.shape == (N, D)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert [r["image_id"] for r in b.load_catalogue_rows()] == [f"img{i}.jpg" for i in range(N)]
    import hnswlib

    idx = hnswlib.Index(space="cosine", dim=D)
    idx.load_index(str(path / "index.hnsw"))
    labels, _ = idx.knn_query(emb, k=1)
    assert labels[:, 0].tolist() == list(range(N))  # each vector finds itself
    assert [p.name for p in (tmp_path / "bundles").iterdir() if p.name.startswith(".")] == [".v1.claim"]


def test_versions_are_immutable_and_monotonic(tmp_path: Path, key: SigningKey,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "b"
    _build(root, key, version=2)
    with pytest.raises(UsageError, match="already exists"):
        _build(root, key, version=2)
    (root / ".v5.claim").touch()  # another builder is writing version 5 right now
    with pytest.raises(UsageError, match=r"being built.*if no build is running.*delete \.v5\.claim"):
        _build(root, key, version=5)
    with pytest.raises(UsageError, match="older"):
        _build(root, key, version=1)
    assert _build(root, key, version=3).name.startswith("v3-")
    import export.bundle as writer

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "build_index", crash)
    with pytest.raises(RuntimeError):  # a failed build leaves no folder, no temp dir, no claim
        _build(root, key, version=4)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [".claims.lock", ".v2.claim", ".v3.claim", ".v5.claim", *(p.name for p in root.iterdir() if p.name[0] == "v")])
    assert not any(p.name.startswith(("v4", ".build")) for p in root.iterdir())


KILLED_BUILD = r'''
import os, signal, sys
import export.bundle as writer
from tests.export.test_bundle import _build
from edge_app.signing import SigningKey
from pathlib import Path

def killed(*a, **k):  # the builder dies half way (power cut, OOM killer, kill -9)
    os.kill(os.getpid(), signal.SIGKILL)

writer.build_index = killed
_build(Path(sys.argv[1]), SigningKey.generate(), version=int(sys.argv[2]))
'''


def test_builds_claim_versions_on_drives_without_hard_links(tmp_path: Path, key: SigningKey,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # exFAT / FAT USB drives

    monkeypatch.setattr(os, "link", no_links)
    assert _build(tmp_path / "b", key, version=3).name.startswith("v3-")
    assert json.loads((tmp_path / "b" / ".v3.claim").read_text())["pid"] == os.getpid()
    with pytest.raises(UsageError, match="already exists"):
        _build(tmp_path / "b", key, version=3)


def test_a_killed_build_does_not_block_its_version(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "b"
    root.mkdir()
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(root), "7"], cwd=repo, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(repo)), capture_output=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    left = sorted(p.name for p in root.iterdir())
    assert ".v7.claim" in left and any(n.startswith(".build-") for n in left)  # what the dead builder left
    bundle = _build(root, key, version=7)  # taken over: no hand clean-up needed
    assert bundle.name.startswith("v7-") and load_bundle(bundle, keyring).manifest["version"] == 7
    assert not any(p.name.startswith(".build-") for p in root.iterdir())
    # A claim whose builder is alive (this process, standing for a build running now) is respected.
    (root / ".v8.claim").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                "build_dir": ".build-x"}))
    with pytest.raises(UsageError, match="being built"):
        _build(root, key, version=8)
    # So is a claim made on another machine (its process cannot be checked from here).
    (root / ".v9.claim").write_text(json.dumps({"pid": 2 ** 22 + 1, "host": "another-hub", "build_dir": ".build-y"}))
    with pytest.raises(UsageError, match="being built"):
        _build(root, key, version=9)


def test_device_bundle_refuses_onnx(tmp_path: Path, key: SigningKey) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(UsageError, match="device bundle may not carry model.onnx"):
        _build(tmp_path / "b", key, model_files={"model.onnx": onnx})
    desk = _build(tmp_path / "d", key, kind="desktop", model_files={"model.onnx": onnx})
    assert "model.onnx" in json.loads((desk / MANIFEST_NAME).read_text())["files"]


def test_refuses_bad_signature(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    m = json.loads((path / MANIFEST_NAME).read_bytes())
    m["labels"][0] = "EVIL"
    (path / MANIFEST_NAME).write_bytes(manifest_bytes(m))  # signature left as it was
    with pytest.raises(IntegrityError, match="bad signature"):
        load_bundle(path, keyring)


def test_refuses_unknown_key(tmp_path: Path, key: SigningKey) -> None:
    path = _build(tmp_path / "b", key)
    other = SigningKey.generate()
    with pytest.raises(IntegrityError, match="unknown key"):
        load_bundle(path, Keyring({other.key_id: other.public_raw}))


def test_refuses_wrong_hash_and_missing_file(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    model = path / "model.tflite"
    data = bytearray(model.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        load_bundle(path, keyring)
    model.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        load_bundle(path, keyring)


def test_refuses_unknown_schema(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    _resign(path, key, lambda m: m.update(schema_version=3))  # validly signed, but a schema we do not know
    with pytest.raises(IntegrityError, match="unknown schema_version 3"):
        load_bundle(path, keyring)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "sub/dir.bin", "..", ".hidden"])
def test_refuses_manifest_path_escape(tmp_path: Path, key: SigningKey, keyring: Keyring, name: str) -> None:
    path = _build(tmp_path / "b", key)
    (tmp_path / "b" / "outside.bin").write_bytes(b"x")

    def edit(m: dict) -> None:
        m["files"][name] = {"sha256": sha256_file(tmp_path / "b" / "outside.bin"), "size": 1}
        m["bundle_id"] = bundle_id_for(m)

    _resign(path, key, edit)
    with pytest.raises(IntegrityError, match="unsafe file name"):
        load_bundle(path, keyring)


def test_refuses_symlinked_file(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    real = tmp_path / "elsewhere.json"
    os.replace(path / "embeddings.json", real)
    os.symlink(real, path / "embeddings.json")
    with pytest.raises(IntegrityError, match="not a regular file"):
        load_bundle(path, keyring)


def test_archive_roundtrip(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    tar = write_archive(path, tmp_path / "bundle.tar")
    with pytest.raises(UsageError, match="pass --overwrite"):
        write_archive(path, tar)  # never silently replaced
    model = path / "model.tflite"
    good = model.read_bytes()
    model.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # a bundle folder changed after it was built
    with pytest.raises(IntegrityError, match="changed since the bundle was built"):
        write_archive(path, tmp_path / "tampered.tar")
    assert not (tmp_path / "tampered.tar").exists() and not list(tmp_path.glob(".tampered.tar.*"))
    model.write_bytes(good)
    b = open_archive(tar, tmp_path / "device", keyring)
    assert b.root == tmp_path / "device" / path.name
    assert b.manifest == load_bundle(path, keyring).manifest
    again = open_archive(tar, tmp_path / "device", keyring)  # already there: verified and returned
    assert again.root == b.root
    assert [p.name for p in (tmp_path / "device").iterdir()] == [path.name]
    # folders killed unpacks left behind (each up to a whole bundle) go at the next unpack; a young one may be
    # another process's unpack in progress and stays
    stale, young = tmp_path / "device" / ".unpack-killed", tmp_path / "device" / ".unpack-running"
    for d in (stale, young):
        d.mkdir()
        (d / "model.tflite").write_bytes(b"x" * 100)
    os.utime(stale, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    open_archive(tar, tmp_path / "device", keyring)
    assert not stale.exists() and young.is_dir()


def _tar_with(tmp_path: Path, src_tar: Path, extra: tarfile.TarInfo, payload: bytes | None = None) -> Path:
    out = tmp_path / "evil.tar"
    with tarfile.open(src_tar) as tin, tarfile.open(out, "w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m))
        tout.addfile(extra, io.BytesIO(payload) if payload is not None else None)
    return out


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "nested-other-top"])
def test_open_archive_refuses_escapes(tmp_path: Path, key: SigningKey, keyring: Keyring, kind: str) -> None:
    path = _build(tmp_path / "b", key)
    tar = write_archive(path, tmp_path / "ok.tar")
    bid = path.name
    info = tarfile.TarInfo()
    payload = None
    if kind == "dotdot":
        info.name, info.size, payload = f"{bid}/../../pwned.txt", 3, b"bad"
    elif kind == "absolute":
        info.name, info.size, payload = "/tmp/pwned.txt", 3, b"bad"
    elif kind == "symlink":
        info.name, info.type, info.linkname = f"{bid}/link", tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.name, info.type, info.linkname = f"{bid}/hard", tarfile.LNKTYPE, "/etc/passwd"
    else:
        info.name, info.size, payload = "v9-000000000000/x.bin", 3, b"bad"
    evil = _tar_with(tmp_path, tar, info, payload)
    dest = tmp_path / "device"
    with pytest.raises(IntegrityError):
        open_archive(evil, dest, keyring)
    assert not (tmp_path / "pwned.txt").exists()
    assert list(dest.iterdir()) == []  # nothing left behind


def test_an_unsigned_archive_writes_nothing_before_its_signature_is_checked(tmp_path: Path, key: SigningKey,
                                                                          keyring: Keyring) -> None:
    """A sparse member declaring 1 GiB, thousands of unlisted members, or a member the signed manifest does
    not list (or lists at another size) is refused before a byte of it is written."""
    path = _build(tmp_path / "b", key)
    tar = write_archive(path, tmp_path / "ok.tar")
    bid = path.name
    dest = tmp_path / "device"
    unlisted = tarfile.TarInfo(f"{bid}/extra.bin")
    unlisted.size = 4
    with pytest.raises(IntegrityError, match="extra.bin is not a file of the signed manifest"):
        open_archive(_tar_with(tmp_path, tar, unlisted, b"junk"), dest, keyring)
    sparse = tarfile.TarInfo(f"{bid}/big.bin")
    sparse.type, sparse.size = tarfile.GNUTYPE_SPARSE, 0
    with pytest.raises(IntegrityError):
        open_archive(_tar_with(tmp_path, tar, sparse, b""), dest, keyring)
    many = tmp_path / "many.tar"
    with tarfile.open(tar) as tin, tarfile.open(many, "w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m))
        for i in range(100):
            tout.addfile(tarfile.TarInfo(f"{bid}/e{i:03d}"), io.BytesIO(b""))
    with pytest.raises(IntegrityError, match="more than 32 members"):
        open_archive(many, dest, keyring)
    other = SigningKey.generate()  # a well-formed bundle by an untrusted signer
    foreign = write_archive(_build(tmp_path / "f", other), tmp_path / "foreign.tar")
    with pytest.raises(IntegrityError, match="unknown key"):
        open_archive(foreign, dest, keyring)
    resized = tmp_path / "resized.tar"  # a model swapped for a bigger one, same name
    with tarfile.open(tar) as tin, tarfile.open(resized, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isreg() else None
            if m.name.endswith("model.tflite"):
                data += b"x" * 1000
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(IntegrityError, match="the signed manifest says"):
        open_archive(resized, dest, keyring)
    assert [p.name for p in dest.iterdir()] == []  # no temporary folder, no file, nothing written


def test_a_huge_extended_tar_header_is_refused_before_tarfile_reads_it(tmp_path: Path, key: SigningKey,
                                                                       keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    tar = write_archive(path, tmp_path / "ok.tar")
    bomb = tmp_path / "pax.tar"
    with tarfile.open(tar) as tin, tarfile.open(bomb, "w", format=tarfile.PAX_FORMAT) as tout:
        for i, m in enumerate(tin.getmembers()):
            if i == 1:
                m.pax_headers = {"comment": "x" * (8 * 1024 * 1024)}  # 8 MB (an attacker's would be 300 MB)
            tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
    with pytest.raises(IntegrityError, match="extended tar header of 83886"):  # refused from its 512-byte header
        open_archive(bomb, tmp_path / "device", keyring)
    assert open_archive(tar, tmp_path / "device", keyring).bundle_id == path.name  # real archives pass


def test_open_archive_refuses_truncated(tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    path = _build(tmp_path / "b", key)
    tar = write_archive(path, tmp_path / "ok.tar")
    data = tar.read_bytes()
    with tarfile.open(tar) as tf:
        last = tf.getmembers()[-1]
    end_of_data = last.offset_data + -(-last.size // 512) * 512  # every member complete, end marker cut off
    for cut in (len(data) // 2, 700, end_of_data):
        short = tmp_path / f"short{cut}.tar"
        short.write_bytes(data[:cut])
        with pytest.raises(IntegrityError):
            open_archive(short, tmp_path / "device", keyring)
    assert list((tmp_path / "device").iterdir()) == []


def test_cli_keys_and_verify(tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_app.cli import main

    kdir = tmp_path / "keys"
    assert main(["keys", "init", "--dir", str(kdir)]) == 0
    priv = next(kdir.glob("*.key"))
    pub = next(kdir.glob("*.pub.json"))
    new_key = SigningKey.load(priv)
    path = _build(tmp_path / "b", new_key)
    assert main(["bundle", "verify", str(path), "--keyring", str(pub)]) == 0
    tar = tmp_path / "x.tar"
    assert main(["bundle", "pack", str(path), str(tar)]) == 0
    assert main(["bundle", "verify", str(tar), "--keyring", str(pub)]) == 0
    other = tmp_path / "other.json"
    Keyring({key.key_id: key.public_raw}).save(other)
    assert main(["bundle", "verify", str(path), "--keyring", str(other)]) == 4
    # pack with --keyring checks the signature too (an audit: a re-signed-by-nobody manifest packed fine)
    assert main(["bundle", "pack", str(path), str(tmp_path / "y.tar"), "--keyring", str(pub)]) == 0
    assert main(["bundle", "pack", str(path), str(tmp_path / "z.tar"), "--keyring", str(other)]) == 4
    assert not (tmp_path / "z.tar").exists()
    (path / "index.hnsw").write_bytes(b"tampered")
    assert main(["bundle", "verify", str(path), "--keyring", str(pub)]) == 4
    assert "error" in capsys.readouterr().err


def test_catalogue_view_set_is_recorded_checked_and_read_back(tmp_path: Path, key: SigningKey,
                                                             keyring: Keyring) -> None:
    old = load_bundle(_build(tmp_path / "a", key), keyring)
    assert old.manifest["catalogue"]["views"] == "none" and old.catalogue_views == "none"
    b = load_bundle(_build(tmp_path / "b", key, catalogue_views="flip-crop5"), keyring)
    assert b.catalogue_views == "flip-crop5"
    with pytest.raises(UsageError, match="unknown catalogue view set"):
        _build(tmp_path / "c", key, catalogue_views="ten-crop")
    # bundles from before the key (their id was over what they held)
    _resign(b.root, key, lambda m: (m["catalogue"].pop("views"), m.update(bundle_id=bundle_id_for(m))))
    assert load_bundle(b.root, keyring).catalogue_views == "none"
    _resign(b.root, key, lambda m: m["catalogue"].update(views=7))
    with pytest.raises(IntegrityError, match="catalogue.views"):
        load_bundle(b.root, keyring)


def _set(path: str | tuple[str, ...], value):
    """An edit that sets ``a.b`` (or the key path ``(a, b)``) in the manifest (``None`` value: delete the key)."""
    def edit(m: dict) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        d = m
        for p in parents:
            d = d[p]
        if value is None:
            del d[last]
        else:
            d[last] = value
    return edit


def _drop_file(name: str):
    def edit(m: dict) -> None:
        del m["files"][name]
        m["bundle_id"] = bundle_id_for(m)  # a consistent id: only the rule can refuse
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("labels", None), "missing keys labels"),
    (_set("kind", "server"), "unknown kind 'server'"),
    (_set("version", 0), "version must be a positive integer"),
    (_set("version", True), "version must be a positive integer"),
    (_set("files", {}), "'files' must be a non-empty mapping"),
    (_set(("files", "model.tflite"), {"sha256": "XYZ", "size": 1}), "needs a sha256 hex digest"),
    (_set(("files", "manifest.sig"), {"sha256": "0" * 64, "size": 1}), "may not list manifest.sig"),
    (_drop_file("model.tflite"), "lists no model file"),
    (_drop_file("embeddings.npy"), "lists no embeddings.npy"),
    (_set("bundle_id", "v1 ; rm -rf"), "malformed bundle_id"),
    (_set("bundle_id", "v2-000000000000"), "does not match its content"),
    (_set("labels", []), "'labels' must be a non-empty list of strings"),
    (_set("embedding_dim", 0), "embedding_dim must be a positive integer"),
    (_set("outputs", {"logits": {}}), "'outputs' must describe 'logits' and 'embedding'"),
    (_set("index.space", "l2"), "index.space must be 'cosine'"),
    (_set("catalogue", {"views": 3}), "catalogue.views must be the name of a view set"),
    (_set("preprocess", "224"), "'preprocess' must be a mapping"),
    (_set("preprocess.size", [-1, 5]), "invalid preprocess spec"),
])
def test_manifest_schema_refusals(tmp_path: Path, key: SigningKey, keyring: Keyring, edit, message: str) -> None:
    """A manifest signed by a trusted key but malformed (a buggy or old signer) is refused, naming the problem."""
    path = _build(tmp_path / "b", key)
    _resign(path, key, edit)
    with pytest.raises(IntegrityError, match=re.escape(message)):
        load_bundle(path, keyring)


def test_the_bundle_id_covers_the_whole_manifest_and_schema_1_bundles_still_load(
        tmp_path: Path, key: SigningKey, keyring: Keyring) -> None:
    """Found by an audit: the id covered the files only, so a bundle with another calibration, label order or
    preprocessing had the same id as the one without (and unpacking one over the other kept the old manifest)."""
    path = _build(tmp_path / "b", key)
    m = json.loads((path / MANIFEST_NAME).read_text())
    for change in ({"calibration": {"threshold": 0.123}}, {"labels": list(reversed(m["labels"]))},
                   {"index": {**m["index"], "ef_search": m["index"]["ef_search"] + 1}}):
        assert bundle_id_for({**m, **change}) != m["bundle_id"]
    assert bundle_id_for({**m, "created_at": "2000-01-01T00:00:00+00:00"}) == m["bundle_id"]
    assert bundle_id_for({**m, "labels": ["\udcff"]}).startswith("v1-")  # a label from a non-UTF-8 folder name

    def edit(doc: dict) -> None:  # another calibration, the id left as it was: refused
        doc["calibration"] = {"threshold": 0.123}

    _resign(path, key, edit)
    with pytest.raises(IntegrityError, match="does not match its content"):
        load_bundle(path, keyring)

    old = _build(tmp_path / "old", key)

    def as_schema_1(doc: dict) -> None:  # a bundle written before schema 2 (id over its files) still loads
        doc["schema_version"] = 1
        doc["bundle_id"] = make_bundle_id(doc["version"], doc["files"])

    _resign(old, key, as_schema_1)
    renamed = old.with_name(json.loads((old / MANIFEST_NAME).read_text())["bundle_id"])
    old.rename(renamed)
    assert load_bundle(renamed, keyring).manifest["schema_version"] == 1


@pytest.mark.parametrize("kw, message", [({"M": 1}, "M must be 2..128"), ({"M": 100_000}, "M must be 2..128"),
                                         ({"ef_search": 0}, "ef_search must be"),
                                         ({"ef_construction": 10**6}, "ef_construction must be")])
def test_index_parameters_out_of_range_are_refused(kw, message) -> None:
    """An audit built a bundle with --M 100000 (hnswlib links per node: memory on every tablet)."""
    from export.bundle import IndexParams

    with pytest.raises(UsageError, match=message):
        IndexParams(**kw)
