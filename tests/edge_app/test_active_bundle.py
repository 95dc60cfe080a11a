"""The device runs the bundle the sync client activated, never merely the newest folder."""
from __future__ import annotations

import json

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


def test_a_running_app_follows_a_bundle_the_nightly_sync_installed(world, tmp_path) -> None:
    """The nightly sync (another process) installs a new bundle while the app runs: the catalogue's vectors are
    now the new model's. Before the fix the app kept the old model and rebuilt its index from the old model's
    vectors, which were gone: every identification said "no confident match" until the app restarted."""
    import shutil

    from edge_app.bundle import load_bundle
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.identify import Identifier
    from edge_app.services import DeviceServices

    from .conftest import _import

    d = tmp_path / "device"
    _import(d / "catalogue.db", world.cat)
    shutil.copy(world.keyring_path, d / "keyring.json")
    v1, v2 = world.uncalibrated, world.bundle
    for b in (v1, v2):
        shutil.copytree(b, d / "bundles" / b.name)
    with CatalogueDB(d / "catalogue.db") as db, db.transaction():
        db.set_meta("bundle_id", v1.name)
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
        Identifier(load_bundle(d / "bundles" / v2.name, world.keyring), sync_db, backend="onnx")
        with sync_db.transaction():
            sync_db.set_meta("bundle_id", v2.name)
            sync_db.set_meta("catalogue_version", 6)
        sync_db.close()
        after = svc.identify([cap])
        assert after.bundle_id == v2.name and after.matches and after.matches[0].part_number == "P0003"
        with CatalogueDB(d / "catalogue.db") as db:  # the app did not put the old model's vectors back
            assert {r[0] for r in db.db.conn.execute("SELECT DISTINCT bundle_id FROM embeddings")} == {v2.name}
    finally:
        svc.close()
