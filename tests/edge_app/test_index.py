"""VectorIndex: recall, cache stamps, incremental maintenance, ef after load, NumPy fallback."""
from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from edge_app.errors import UsageError
from edge_app.runtime.catalogue import CatalogueDB
from edge_app.runtime.index import IndexStamp, VectorIndex, index_path, sidecar_path

from .conftest import clusters

PARAMS = {"M": 16, "ef_construction": 200, "ef_search": 64}


def brute(base: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ base.T), axis=1)[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.slow
def test_recall_at_10_on_synthetic_clusters_256d():
    base, q = clusters(6000, 256, 60, seed=1, n_queries=200)
    idx = VectorIndex(256, PARAMS)
    idx.add_items(np.arange(len(base)), base)
    labels, sims = idx.search(q, 10)
    r = recall(labels, brute(base, q, 10))
    assert r >= 0.99, r
    np.testing.assert_allclose(sims[:, 0], np.max(q @ base.T, axis=1), atol=1e-4)


def _db_with(tmp_path, vectors, bundle="v1-aaaaaaaaaaaa"):
    db = CatalogueDB(tmp_path / "catalogue.db")
    with db.transaction():
        db.upsert_parts([{"part_number": f"P{i}"} for i in range(len(vectors))])
        db.upsert_images([{"image_id": f"img{i}", "part_number": f"P{i}"} for i in range(len(vectors))])
        labels = db.upsert_embeddings([f"img{i}" for i in range(len(vectors))], vectors, bundle)
        db.set_meta("catalogue_version", 1)
    return db, labels


def test_open_builds_saves_stamps_and_reuses(tmp_path):
    vecs = clusters(300, 32, 10)
    db, labels = _db_with(tmp_path, vecs)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    path = index_path(db.path, "v1-aaaaaaaaaaaa")
    assert path.is_file() and path.parent == db.path.parent
    side = json.loads(sidecar_path(path).read_text())
    assert (side["bundle_id"], side["catalogue_version"]) == ("v1-aaaaaaaaaaaa", 1)
    assert db.get_meta("index_stamp") == "v1-aaaaaaaaaaaa@1"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    mtime = path.stat().st_mtime_ns
    again = VectorIndex.open(db, "v1-aaaaaaaaaaaa", {"ef_search": 77})
    assert path.stat().st_mtime_ns == mtime  # up to date: not rewritten
    assert again.engine.index.ef == 77  # ef comes from the manifest params, hnswlib does not save it
    got, _ = again.search(vecs[:5], 1)
    assert got[:, 0].tolist() == labels[:5].tolist()


def test_incremental_update_on_catalogue_change(tmp_path):
    vecs = clusters(200, 16, 8)
    db, labels = _db_with(tmp_path, vecs)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    extra = clusters(50, 16, 8, seed=5, centre_seed=0)
    with db.transaction():
        db.delete_images(["img0", "img1"])
        db.upsert_parts([{"part_number": "X"}])
        db.upsert_images([{"image_id": f"new{i}", "part_number": "X"} for i in range(50)])
        new_labels = db.upsert_embeddings([f"new{i}" for i in range(50)], extra, "v1-aaaaaaaaaaaa")
        db.set_meta("catalogue_version", 2)
    assert new_labels.min() > labels.max()  # labels are never reused
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    assert idx.stamp == IndexStamp("v1-aaaaaaaaaaaa", 2)
    assert len(idx) == 248
    assert idx.live_labels() == set(db.all_embeddings("v1-aaaaaaaaaaaa")[0].tolist())
    got, _ = idx.search(vecs[:2], 3)
    assert not set(got.ravel().tolist()) & set(labels[:2].tolist())
    got, _ = idx.search(extra[:3], 1)
    assert got[:, 0].tolist() == new_labels[:3].tolist()
    # reloaded from disk, the deletions persist
    idx2 = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    assert len(idx2) == 248 and not idx2.live_labels() & set(labels[:2].tolist())


def test_corrupt_or_foreign_cache_is_rebuilt(tmp_path):
    vecs = clusters(100, 16, 5)
    db, _ = _db_with(tmp_path, vecs)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    path = index_path(db.path, "v1-aaaaaaaaaaaa")
    path.write_bytes(b"garbage")
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    assert len(idx) == 100
    assert path.stat().st_size > 1000


def test_filtered_search_only_returns_allowed(tmp_path):
    vecs = clusters(500, 16, 5)
    idx = VectorIndex(16, PARAMS)
    idx.add_items(np.arange(500), vecs)
    allowed = list(range(0, 500, 7))
    got, sims = idx.search(vecs[:4], 5, allowed_labels=allowed)
    assert set(got.ravel().tolist()) <= set(allowed)
    sub = vecs[allowed]
    np.testing.assert_allclose(sims[:, 0], (vecs[:4] @ sub.T).max(axis=1), atol=1e-5)


def test_numpy_fallback_when_hnswlib_missing(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_hnswlib(name, *a, **kw):
        if name == "hnswlib":
            raise ImportError("no hnswlib here")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_hnswlib)
    vecs = clusters(300, 24, 6)
    db, labels = _db_with(tmp_path, vecs)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    assert idx.engine_name == "numpy"
    got, sims = idx.search(vecs[:10], 10)
    np.testing.assert_array_equal(got, labels[brute(vecs, vecs[:10], 10)])
    with db.transaction():
        db.delete_images(["img3"])
        db.set_meta("catalogue_version", 2)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    assert int(labels[3]) not in idx.search(vecs[3:4], 5)[0].ravel().tolist()
    with pytest.raises(Exception):
        VectorIndex(8, PARAMS, engine="hnswlib")


_TRAIN_SCRIPT = """
import sys
import numpy as np
import torch

d = sys.argv[1]
torch.manual_seed(0)
x = torch.tensor(np.load(d + "/x.npy"))
y = torch.tensor(np.load(d + "/y.npy"))
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
    torch.nn.Flatten(), torch.nn.Linear(512, 256))
head = torch.nn.Linear(256, int(y.max()) + 1)
opt = torch.optim.Adam([*net.parameters(), *head.parameters()], 3e-3)
for _ in range(3):
    for i in torch.randperm(len(x)).split(64):
        loss = torch.nn.functional.cross_entropy(head(net(x[i])), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
with torch.no_grad():
    np.save(d + "/emb.npy", torch.nn.functional.normalize(net(x), dim=1).numpy())
"""


@pytest.mark.slow
def test_recall_on_real_trained_embeddings(tmp_path):
    """Embeddings from a tiny conv net trained here on drawn parts (no downloads).

    The training runs in its own interpreter: in one process with TensorFlow/LiteRT already
    imported (tests/edge_app/test_backends.py), importing torch's optimiser (torch._dynamo ->
    triton) segfaults in this environment.
    """
    import subprocess
    import sys

    pytest.importorskip("torch")
    from . import synthetic as syn

    n_parts, per = 40, 30
    imgs, ys = [], []
    for p in range(n_parts):
        for v in range(per):
            arr = np.asarray(syn.draw_part(p, v, size=32), np.float32) / 127.5 - 1
            imgs.append(arr.transpose(2, 0, 1))
            ys.append(p)
    np.save(tmp_path / "x.npy", np.stack(imgs))
    np.save(tmp_path / "y.npy", np.asarray(ys, np.int64))
    subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, str(tmp_path)], check=True, timeout=300)
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (n_parts * per, 256)
    base, q = emb[:1000], emb[1000:]
    idx = VectorIndex(256, PARAMS)
    idx.add_items(np.arange(len(base)), base)
    labels, _ = idx.search(q, 10)
    assert recall(labels, brute(base, q, 10)) >= 0.99


def _add_to_db(db, vectors, version, prefix="new", bundle="v1-aaaaaaaaaaaa"):
    with db.transaction():
        db.upsert_parts([{"part_number": "X"}])
        db.upsert_images([{"image_id": f"{prefix}{i}", "part_number": "X"} for i in range(len(vectors))])
        labels = db.upsert_embeddings([f"{prefix}{i}" for i in range(len(vectors))], vectors, bundle)
        db.set_meta("catalogue_version", version)
    return labels


@pytest.mark.parametrize("engine", ["hnswlib", "numpy"])
def test_deferred_vectors_are_searchable_before_and_after_flush(engine):
    base = clusters(400, 32, 20, seed=3)
    extra = clusters(120, 32, 20, seed=4, centre_seed=3)
    idx = VectorIndex(32, PARAMS, engine=engine)
    idx.add_items(np.arange(400), base, num_threads=1)
    idx.add_items(np.arange(1000, 1120), extra, defer=True)
    assert idx.pending_count == 120 and len(idx) == 520
    got, sims = idx.search(extra, 1)
    assert got[:, 0].tolist() == list(range(1000, 1120))  # exact over the pending vectors
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    got, _ = idx.search(base[:5], 1)
    assert got[:, 0].tolist() == [0, 1, 2, 3, 4]
    # results merge graph and pending, best first, never more than k
    both = np.vstack([base[:1], extra[:1]])
    labels, sims = idx.search(both, 8)
    assert labels.shape == (2, 8) and np.all(np.diff(sims, axis=1) <= 1e-6)
    # filters see pending labels too
    labels, _ = idx.search(extra[:3], 2, allowed_labels=[1000, 1001, 5])
    assert set(labels.ravel().tolist()) <= {1000, 1001, 5}
    np.testing.assert_allclose(idx.get_vectors([1002, 7]), np.vstack([extra[2], base[7]]), atol=1e-5)
    idx.mark_deleted([1003, 8])
    assert 1003 not in idx.live_labels() and idx.pending_count == 119 and len(idx) == 518
    assert idx.flush(chunk=50) == 119 and idx.pending_count == 0
    assert len(idx) == 518 and 1003 not in idx.live_labels()
    got, _ = idx.search(extra[4:10], 1)
    assert got[:, 0].tolist() == list(range(1004, 1010))


def test_add_items_rejects_bad_thread_count():
    idx = VectorIndex(8, PARAMS)
    with pytest.raises(UsageError):
        idx.add_items([0], np.ones((1, 8), np.float32), num_threads=0)
    with pytest.raises(UsageError):
        idx.flush(chunk=0)


def test_open_updates_a_live_index_in_place_and_persist_writes_later(tmp_path, monkeypatch):
    vecs = clusters(300, 32, 10)
    db, labels = _db_with(tmp_path, vecs)
    live = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    path = index_path(db.path, "v1-aaaaaaaaaaaa")
    mtime = path.stat().st_mtime_ns
    extra = clusters(60, 32, 10, seed=9, centre_seed=0)
    new_labels = _add_to_db(db, extra, 2)

    def no_reload(*a, **kw):
        raise AssertionError("the live index must not be reloaded from its file")

    monkeypatch.setattr(VectorIndex, "load", classmethod(no_reload))
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", {"ef_search": 40}, live=live, defer=True)
    assert idx is live and idx.pending_count == 60 and idx.engine.index.ef == 40
    assert idx.stamp == IndexStamp("v1-aaaaaaaaaaaa", 2) and db.get_meta("index_stamp") == "v1-aaaaaaaaaaaa@2"
    got, _ = idx.search(extra[:5], 1)
    assert got[:, 0].tolist() == new_labels[:5].tolist()
    # the file is a cache: not rewritten yet, its sidecar still names what it holds
    assert path.stat().st_mtime_ns == mtime
    assert json.loads(sidecar_path(path).read_text())["catalogue_version"] == 1
    monkeypatch.undo()
    # a crash here leaves an old cache that the next open repairs from SQLite
    other = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS, index_dir=tmp_path / "copy")
    assert len(other) == 360
    idx.persist()
    assert idx.pending_count == 0
    side = json.loads(sidecar_path(path).read_text())
    assert (side["catalogue_version"], side["count"]) == (2, 360)
    again = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    assert len(again) == 360 and path.stat().st_mtime_ns == again.path.stat().st_mtime_ns


def test_live_index_of_another_bundle_is_not_reused(tmp_path):
    vecs = clusters(100, 16, 5)
    db, _ = _db_with(tmp_path, vecs)
    foreign = VectorIndex(16, PARAMS)
    foreign.add_items(np.arange(5000, 5010), vecs[:10])
    foreign.stamp = IndexStamp("v0-other", 1)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS, live=foreign)
    assert idx is not foreign and len(idx) == 100 and not idx.live_labels() & set(range(5000, 5010))


def test_persist_in_background_while_searching(tmp_path):
    vecs = clusters(300, 32, 10)
    db, _ = _db_with(tmp_path, vecs)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    extra = clusters(400, 32, 10, seed=11, centre_seed=0)
    new_labels = _add_to_db(db, extra, 2)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS, live=idx, defer=True)
    thread = idx.persist_in_background()
    for i in range(0, 400, 20):  # searches keep answering (exactly or from the graph) during the flush
        got, _ = idx.search(extra[i:i + 1], 1)
        assert got[0, 0] == new_labels[i]
    thread.join(60)
    assert not thread.is_alive() and idx.pending_count == 0
    assert json.loads(sidecar_path(idx.path).read_text())["catalogue_version"] == 2


def test_incremental_fetch_of_non_contiguous_labels(tmp_path):
    vecs = clusters(100, 16, 5)
    db, _ = _db_with(tmp_path, vecs)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    extra = clusters(30, 16, 5, seed=21, centre_seed=0)
    new_labels = _add_to_db(db, extra, 2)
    with db.transaction():
        db.delete_images([f"new{i}" for i in range(0, 30, 3)])  # holes in the new label range
        db.set_meta("catalogue_version", 3)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    kept = [i for i in range(30) if i % 3]
    assert len(idx) == 120 and idx.live_labels() >= set(new_labels[kept].tolist())
    np.testing.assert_allclose(idx.get_vectors(new_labels[kept]), extra[kept], atol=1e-5)


@pytest.mark.parametrize("older", ["stamp", "file"])
def test_an_index_file_its_stamp_does_not_describe_is_rebuilt(tmp_path, older):
    """The file and its stamp are written by two renames: killed between them (or two processes saving at once),
    one is newer than the other. Before the fix, a file with deletion marks its stamp did not list made every
    later open fail ('already deleted') until the file was deleted by hand; a file older than its stamp would
    have hidden the stamp's newer vectors."""
    pytest.importorskip("hnswlib")

    vecs = clusters(120, 16, 6)
    db, labels = _db_with(tmp_path, vecs)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    path = index_path(db.path, "v1-aaaaaaaaaaaa")
    old_file, old_side = path.read_bytes(), sidecar_path(path).read_text()
    extra = clusters(10, 16, 6, seed=9, centre_seed=0)
    with db.transaction():
        db.delete_images(["img0", "img1", "img2"])
        db.upsert_parts([{"part_number": "X"}])
        db.upsert_images([{"image_id": f"new{i}", "part_number": "X"} for i in range(10)])
        new_labels = db.upsert_embeddings([f"new{i}" for i in range(10)], extra, "v1-aaaaaaaaaaaa")
        db.set_meta("catalogue_version", 2)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)  # saves file + stamp at version 2
    if older == "stamp":  # the new file landed, the stamp did not: the old one lists no deletions
        sidecar_path(path).write_text(old_side)
    else:  # the new stamp landed over an old file (the other process's save)
        path.write_bytes(old_file)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    want = set(db.all_embeddings("v1-aaaaaaaaaaaa")[0].tolist())
    assert idx.live_labels() == want and len(idx) == 127
    got, _ = idx.search(extra[:3], 1)
    assert got[:, 0].tolist() == new_labels[:3].tolist()
    got, _ = idx.search(vecs[:3], 5)
    assert not set(got.ravel().tolist()) & set(labels[:3].tolist())
    again = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)  # and the repaired pair is consistent
    assert again.live_labels() == want


def test_the_numpy_engine_takes_a_live_update_like_hnswlib(tmp_path) -> None:
    """Found by an audit: without hnswlib, every sync that applied a package failed after its commit
    (``_ExactEngine`` had no ``set_ef``), leaving the index behind the catalogue until the next start."""
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.index import VectorIndex

    db = CatalogueDB(tmp_path / "catalogue.db")
    rng = np.random.default_rng(0)
    with db.transaction():
        db.upsert_parts([{"part_number": "P1", "name": "one", "version": 1}])
        db.upsert_images([{"image_id": f"i{i}", "part_number": "P1", "kind": "catalogue"} for i in range(5)])
        db.upsert_embeddings([f"i{i}" for i in range(4)], rng.normal(size=(4, 16)).astype(np.float32), "v1-aaaaaaaaaaaa")
        db.set_meta("catalogue_version", 1)
    live = VectorIndex.open(db, "v1-aaaaaaaaaaaa", {"ef_search": 32}, engine="numpy")
    with db.transaction():
        db.upsert_embeddings(["i4"], rng.normal(size=(1, 16)).astype(np.float32), "v1-aaaaaaaaaaaa")
        db.set_meta("catalogue_version", 2)
    updated = VectorIndex.open(db, "v1-aaaaaaaaaaaa", {"ef_search": 48}, engine="numpy", live=live)
    assert updated is live and len(updated) == 5 == db.count("embeddings")
    db.close()


@pytest.mark.parametrize("engine", ["hnswlib", "numpy"])
def test_an_index_mostly_of_deleted_entries_is_rebuilt_compact(tmp_path, engine, monkeypatch) -> None:
    import edge_app.runtime.index as I
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.index import VectorIndex

    monkeypatch.setattr(I, "COMPACT_MIN_DELETED", 50)
    db = CatalogueDB(tmp_path / "catalogue.db")
    rng = np.random.default_rng(1)
    ids = [f"i{i}" for i in range(200)]
    with db.transaction():
        db.upsert_parts([{"part_number": "P1", "name": "one", "version": 1}])
        db.upsert_images([{"image_id": i, "part_number": "P1", "kind": "catalogue"} for i in ids])
        db.upsert_embeddings(ids, rng.normal(size=(200, 16)).astype(np.float32), "v1-aaaaaaaaaaaa")
        db.set_meta("catalogue_version", 1)
    VectorIndex.open(db, "v1-aaaaaaaaaaaa", engine=engine)
    with db.transaction():
        db.delete_images(ids[:40])  # fewer deleted than live: updated in place
        db.set_meta("catalogue_version", 2)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", engine=engine)
    assert len(idx.engine.deleted) == 40 and len(idx) == 160
    with db.transaction():
        db.delete_images(ids[40:150])  # now 150 deleted beside 50 live
        db.set_meta("catalogue_version", 3)
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", engine=engine)
    assert len(idx.engine.deleted) == 0 and len(idx) == 50 == len(idx.engine.all_labels)
    labels, _ = idx.search(rng.normal(size=(1, 16)).astype(np.float32), 10)
    live = set(db.embedding_labels("v1-aaaaaaaaaaaa"))
    assert set(labels[0].tolist()) <= live
    db.close()


def test_a_live_index_follows_a_catalogue_replaced_at_the_same_version(tmp_path) -> None:
    """A sync audit: a snapshot of another site replaced every vector at the same catalogue version (same stamp,
    same count), and a live index passed to open() kept answering with labels SQLite no longer had."""
    vecs = clusters(40, 32, 4)
    db, old = _db_with(tmp_path, vecs)
    live = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS)
    with db.transaction():  # the snapshot: same images re-sent, new labels, version unchanged
        db.delete_embeddings()
        new = db.upsert_embeddings([f"img{i}" for i in range(len(vecs))], vecs, "v1-aaaaaaaaaaaa")
    assert db.catalogue_version == 1 and not set(old.tolist()) & set(new.tolist())
    idx = VectorIndex.open(db, "v1-aaaaaaaaaaaa", PARAMS, live=live, defer=True)
    assert idx.live_labels() == set(new.tolist())
    got, _ = idx.search(vecs[:3], 1)
    assert got[:, 0].tolist() == new[:3].tolist()
