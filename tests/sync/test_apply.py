"""apply_package on the device DB (batched writes) and the live, deferred index update after it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BUNDLE = "v1-aaaaaaaaaaaa"
DIM = 16


def _vecs(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)


def _pkg(from_v: int, to_v: int, full: bool, *, parts=(), inventory=(), images=(), deleted_parts=(),
         deleted_images=(), deleted_inventory=(), emb_ids=(), seed=0):
    from sync.package import Package

    return Package(from_v, to_v, "site_a", BUNDLE, full, list(parts), list(inventory), list(images),
                   list(deleted_parts), list(deleted_images), list(deleted_inventory), list(emb_ids),
                   _vecs(len(emb_ids), seed) if emb_ids else np.zeros((0, DIM), np.float16), hub_time="2024-01-01")


def _snapshot(n: int = 20):
    return _pkg(0, 1, True,
                parts=[{"part_number": f"P{i}", "name": f"part {i}", "category": "bolt", "size_mm": str(i)}
                       for i in range(n)],
                inventory=[{"part_number": f"P{i}", "site": "site_a", "stock": i, "bin": f"A{i}", "as_of": "t0"}
                           for i in range(n)],
                images=[{"image_id": f"img{i}", "part_number": f"P{i}", "kind": "catalogue"} for i in range(n)],
                emb_ids=[f"img{i}" for i in range(n)])


def test_delta_upserts_and_deletions_in_one_transaction(tmp_path: Path):
    from edge_app.runtime.catalogue import CatalogueDB
    from sync.apply import apply_package

    db = CatalogueDB(tmp_path / "catalogue.db")
    apply_package(db, _snapshot(), site="site_a", bundle_id=BUNDLE)
    assert (db.count("parts"), db.count("inventory"), db.count("embeddings")) == (20, 20, 20)
    assert db.part("P3")["size_mm"] == 3.0
    delta = _pkg(1, 2, False,
                 parts=[{"part_number": "P1", "name": "renamed", "category": "nut"},  # no size_mm: NULL
                        {"part_number": "NEW", "name": "new", "description": ["a", "b"]}],
                 inventory=[{"part_number": "P1", "site": "site_a", "stock": 9, "bin": "Z", "as_of": "t1"}],
                 images=[{"image_id": "new0", "part_number": "NEW", "kind": "field"}],
                 deleted_parts=["P2", "P2", "P3"], deleted_images=["img4"], deleted_inventory=["P5"],
                 emb_ids=["new0"], seed=1)
    stats = apply_package(db, delta, site="site_a", bundle_id=BUNDLE)
    assert stats["deleted_parts"] == 3 and stats["parts"] == 2
    p1 = db.part("P1")
    assert (p1["name"], p1["category"], p1["size_mm"], p1["version"]) == ("renamed", "nut", None, 2)
    assert p1["inventory"] == [{"site": "site_a", "stock": 9, "bin": "Z", "as_of": "t1"}]
    assert json.loads(db.part("NEW")["description"]) == ["a", "b"]  # containers as JSON, like sqlite-utils
    assert db.part("P2") is None and db.part("P3") is None
    assert db.part("P4")["images"] == [] and db.part("P5")["inventory"] == []
    ids = {r[0] for r in db.db.conn.execute("SELECT image_id FROM embeddings")}
    assert ids == {f"img{i}" for i in range(20) if i not in (2, 3, 4)} | {"new0"}
    assert db.count("inventory") == 19 - 2 + 0  # P2, P3 deleted with their part; P5's row deleted
    assert db.catalogue_version == 2 and db.get_meta("index_stamp") == f"{BUNDLE}@2"
    db.close()


def test_failed_delta_changes_nothing(tmp_path: Path):
    from edge_app.errors import InputError
    from edge_app.runtime.catalogue import CatalogueDB
    from sync.apply import apply_package

    db = CatalogueDB(tmp_path / "catalogue.db")
    apply_package(db, _snapshot(), site="site_a", bundle_id=BUNDLE)
    bad = _pkg(1, 2, False, parts=[{"part_number": "P1", "name": "changed"}], deleted_parts=["P7"],
               inventory=[{"part_number": "P1", "site": "site_a", "stock": "many"}])
    try:
        apply_package(db, bad, site="site_a", bundle_id=BUNDLE)
    except InputError as exc:
        assert "stock" in str(exc)
    else:
        raise AssertionError("a non-integer stock must be refused")
    assert db.part("P1")["name"] == "part 1" and db.part("P7") is not None and db.catalogue_version == 1
    db.close()


def test_delta_updates_the_live_index_in_place_deferred_then_persisted(tmp_path: Path):
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.index import sidecar_path
    from sync.apply import DevicePaths, apply_package, update_index

    paths = DevicePaths(tmp_path)
    db = CatalogueDB(paths.db)
    apply_package(db, _snapshot(), site="site_a", bundle_id=BUNDLE)
    live = update_index(paths, db, BUNDLE)
    delta = _pkg(1, 2, False, images=[{"image_id": f"n{i}", "part_number": "P0"} for i in range(30)],
                 deleted_images=["img0", "img1"], emb_ids=[f"n{i}" for i in range(30)], seed=2)
    apply_package(db, delta, site="site_a", bundle_id=BUNDLE)
    index = update_index(paths, db, BUNDLE, index=live, defer=True)
    assert index is live and index.pending_count == 30 and len(index) == 48
    labels = dict(db.db.conn.execute("SELECT image_id, label FROM embeddings"))
    got, _ = index.search(delta.embeddings.astype(np.float32), 1)
    assert got[:, 0].tolist() == [labels[f"n{i}"] for i in range(30)]
    assert json.loads(sidecar_path(index.path).read_text())["catalogue_version"] == 1  # file not yet rewritten
    index.persist()
    side = json.loads(sidecar_path(index.path).read_text())
    assert (side["catalogue_version"], side["count"]) == (2, 48)
    reopened = update_index(paths, db, BUNDLE)
    assert reopened is not live and reopened.live_labels() == live.live_labels()
    db.close()


def test_a_package_leaving_rows_that_point_at_nothing_is_refused(tmp_path: Path):
    """Signed deltas with an image, a stock row or a vector of something the catalogue does not hold were
    accepted silently (identification could return an image of no part)."""
    import pytest

    from edge_app.errors import SyncError
    from edge_app.runtime.catalogue import CatalogueDB
    from sync.apply import apply_package

    db = CatalogueDB(tmp_path / "catalogue.db")
    apply_package(db, _snapshot(), site="site_a", bundle_id=BUNDLE)
    for bad, what in (
            (_pkg(1, 2, False, images=[{"image_id": "x1", "part_number": "GHOST", "kind": "field"}]), "image row"),
            (_pkg(1, 2, False, inventory=[{"part_number": "GHOST", "site": "site_a", "stock": 1, "bin": "A",
                                           "as_of": "t"}]), "stock row"),
            (_pkg(1, 2, False, emb_ids=["no-such-image"], seed=3), "vector"),
            (_pkg(1, 2, False, deleted_parts=["P1"], images=[{"image_id": "img1b", "part_number": "P1"}]),
             "image row")):
        with pytest.raises(SyncError, match=f"{what}.*refused, the catalogue stays at version 1"):
            apply_package(db, bad, site="site_a", bundle_id=BUNDLE)
        assert db.catalogue_version == 1 and db.count("parts") == 20 and db.count("embeddings") == 20
    db.close()
