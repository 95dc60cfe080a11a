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
