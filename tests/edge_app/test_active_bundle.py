"""The device runs the bundle the sync client activated, never merely the newest folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edge_app.errors import InputError
from edge_app.services import active_bundle_dir


class _Meta:
    def __init__(self, bundle_id=None):
        self.bundle_id = bundle_id

    def get_meta(self, key, default=None):
        return self.bundle_id if key == "bundle_id" else default


def test_active_pointer_wins_over_a_newer_installed_bundle(tmp_path) -> None:
    for b in ("v1-aaaa", "v2-bbbb"):
        (tmp_path / "bundles" / b).mkdir(parents=True)
    (tmp_path / "active.json").write_text(json.dumps({"bundle_id": "v1-aaaa", "version": 1}))
    assert active_bundle_dir(tmp_path, _Meta("v1-aaaa")).name == "v1-aaaa"


def test_catalogue_bundle_id_is_used_without_a_pointer(tmp_path) -> None:
    (tmp_path / "bundles" / "v3-cccc").mkdir(parents=True)
    assert active_bundle_dir(tmp_path, _Meta("v3-cccc")).name == "v3-cccc"


def test_missing_or_corrupt_pointer_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InputError, match="no model bundle installed"):
        active_bundle_dir(tmp_path, _Meta(None))
    with pytest.raises(InputError, match="v9-gone is missing"):
        active_bundle_dir(tmp_path, _Meta("v9-gone"))
    (tmp_path / "active.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable bundle pointer"):
        active_bundle_dir(tmp_path, _Meta("v1"))
    # a bundle id is one folder under bundles/: a path out of it (an audit loaded a bundle elsewhere), or a
    # pointer of the wrong shape, is an unreadable pointer, not "no bundle installed"
    elsewhere = tmp_path / "elsewhere" / "v1-x"
    (elsewhere).mkdir(parents=True)
    (elsewhere / "manifest.json").write_text("{}")
    for doc in ({"bundle_id": "../elsewhere/v1-x"}, {"bundle_id": 5}, []):
        (tmp_path / "active.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match="unreadable bundle pointer"):
            active_bundle_dir(tmp_path, _Meta(None))
    (tmp_path / "active.json").unlink()
    with pytest.raises(InputError, match="no model bundle installed"):
        active_bundle_dir(tmp_path, _Meta("../elsewhere/v1-x"))  # the catalogue's name is checked too


def test_a_running_app_follows_a_bundle_the_nightly_sync_installed(world, tmp_path) -> None:
    """The nightly sync (another process) installs a new bundle while the app runs: the catalogue's vectors are
    now the new model's. Before the fix the app kept the old model and rebuilt its index from the old model's
    vectors, which were gone: every identification said "no confident match" until the app restarted."""
    from edge_app.bundle import load_bundle
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.identify import Identifier
    from edge_app.services import DeviceServices

    d, v1, v2 = _device_with_two_bundles(world, tmp_path)
    with CatalogueDB(d / "catalogue.db") as db, db.transaction():
        db.set_meta("catalogue_version", 5)
    (d / "active.json").write_text(json.dumps({"bundle_id": v1.name, "version": 1}))
    svc = DeviceServices(d, backend="onnx")
    try:
        cap = svc.captures.add_file(world.field["P0003"][0])
        first = svc.identify([cap])
        assert first.bundle_id == v1.name and first.matches[0].part_number == "P0003"
        # the sync process: v2's vectors replace v1's and the catalogue moves on, in one transaction (the pointer
        # follows a moment later: not yet here)
        sync_db = CatalogueDB(d / "catalogue.db")
        with sync_db.transaction():
            sync_db.set_meta("bundle_id", v2.name)
        # (the catalogue names v2 now: the bundle's own vectors stand in for the ones a sync brings)
        Identifier(load_bundle(d / "bundles" / v2.name, world.keyring), sync_db, backend="onnx")
        with sync_db.transaction():
            sync_db.set_meta("catalogue_version", 6)
        sync_db.close()
        after = svc.identify([cap])
        assert after.bundle_id == v2.name and after.matches and after.matches[0].part_number == "P0003"
        with CatalogueDB(d / "catalogue.db") as db:  # the app did not put the old model's vectors back
            assert {r[0] for r in db.db.conn.execute("SELECT DISTINCT bundle_id FROM embeddings")} == {v2.name}
    finally:
        svc.close()


def test_a_model_loading_while_a_sync_switches_the_bundle_never_deletes_the_syncs_vectors(world, tmp_path,
                                                                                          monkeypatch) -> None:
    """Found by an audit racing two processes: the app read bundle v1 from the catalogue, a sync committed v2 and
    its vectors while the model loaded, then the app's first-open import found no v1 vectors, imported v1's own
    sample vectors and deleted every other bundle's: v2's hub vectors were gone until a full snapshot."""
    from edge_app.runtime import backends as B
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.services import DeviceServices

    d, v1, v2 = _device_with_two_bundles(world, tmp_path)  # v1 is the catalogue's, with no vectors stored yet
    real_create = B.create_backend
    switched = []

    def slow_load(bundle, prefer=None):  # the sync commits while the app loads v1's model
        if bundle.bundle_id == v1.name and not switched:
            switched.append(1)
            with CatalogueDB(d / "catalogue.db") as sync_db, sync_db.transaction():
                sync_db.set_meta("bundle_id", v2.name)
                sync_db.set_meta("managed_by_hub", "1")  # as sync.apply does: the hub sends every vector
                rng = np.random.default_rng(0)
                vecs = rng.normal(size=(3, bundle.embedding_dim)).astype(np.float32)
                sync_db.upsert_images([{"image_id": f"hub-{i}", "part_number": "P0001", "kind": "catalogue"}
                                       for i in range(3)])
                sync_db.upsert_embeddings([f"hub-{i}" for i in range(3)], vecs, v2.name)
                sync_db.set_meta("catalogue_version", 9)
        return real_create(bundle, prefer=prefer)

    monkeypatch.setattr(B, "create_backend", slow_load)
    svc = DeviceServices(d, backend="onnx")
    try:
        ident = svc._get_identifier()  # v1 refused at its import (the catalogue moved on), v2 opened
        assert ident.bundle_id == v2.name and switched
        with CatalogueDB(d / "catalogue.db") as db:
            rows = db.db.conn.execute("SELECT bundle_id, count(*) FROM embeddings GROUP BY bundle_id").fetchall()
        assert rows == [(v2.name, 3)]  # the sync's vectors are all there, and no v1 sample vectors came back
    finally:
        svc.close()


def _device_with_two_bundles(world, tmp_path):
    """A device folder with the generated catalogue, the keyring and bundles v1 and v2 installed; the catalogue
    names v1. Returns (folder, v1, v2)."""
    import shutil

    from edge_app.runtime.catalogue import CatalogueDB

    from .conftest import _import

    d = tmp_path / "device"
    _import(d / "catalogue.db", world.cat)
    shutil.copy(world.keyring_path, d / "keyring.json")
    v1, v2 = world.uncalibrated, world.bundle
    for b in (v1, v2):
        shutil.copytree(b, d / "bundles" / b.name)
    with CatalogueDB(d / "catalogue.db") as db, db.transaction():
        db.set_meta("bundle_id", v1.name)
    return d, v1, v2
