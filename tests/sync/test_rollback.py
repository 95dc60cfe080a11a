"""Rolling a model back: the earlier bundle reissued as a newer version reaches the tablets (which refuse any
bundle not newer than the one they run)."""
from __future__ import annotations

import pytest

from edge_app.errors import IntegrityError, UsageError

from .helpers import make_bundle
from .test_inmemory import client


def test_a_model_rolled_back_through_a_reissued_bundle(world, tmp_path, capsys):
    from edge_app.bundle import load_bundle
    from edge_app.cli import main
    from export.bundle import reissue_bundle

    c = client(world)
    c.sync()
    v1 = load_bundle(world.bundle_v1, world.hub.keyring)
    v2_dir = make_bundle(world.root / "export", world.export_key, 2)  # the new model: worse in the field
    world.hub.set_bundle(v2_dir)
    assert c.sync().bundle_installed == world.hub.bundle_id != v1.bundle_id
    with pytest.raises(UsageError):  # the hub refuses going back to v1 itself
        world.hub.set_bundle(world.bundle_v1)
    export_keyring = world.hub.root / "keyring.json"  # holds the export signer's public key
    key_file = next(p for p in (world.root / "keys-export").iterdir() if not p.name.endswith(".pub.json"))
    out = tmp_path / "reissued"
    assert main(["bundle", "reissue", str(world.bundle_v1), "--version", "3", "--keyring", str(export_keyring),
                 "--key", str(key_file), "--out", str(out)]) == 0
    v3_dir = out / capsys.readouterr().out.strip().splitlines()[0].rsplit("/", 1)[1]
    v3 = load_bundle(v3_dir, world.hub.keyring)
    assert v3.version == 3 and v3.bundle_id != v1.bundle_id
    assert (v3.root / "model.tflite").read_bytes() == (v1.root / "model.tflite").read_bytes()
    for k in ("labels", "preprocess", "embedding_dim", "calibration", "model_name", "kind"):
        assert v3.manifest[k] == v1.manifest[k], k
    world.hub.set_bundle(v3_dir)
    r = c.sync()
    assert r.bundle_installed == v3.bundle_id
    active = load_bundle(world.device_dir / "bundles" / v3.bundle_id, c.keyring)
    assert (active.root / "model.tflite").read_bytes() == (v1.root / "model.tflite").read_bytes()
    # refusals: not above the bundle's own version; a tampered source
    with pytest.raises(UsageError, match="version above 1"):
        reissue_bundle(world.bundle_v1, tmp_path / "x", keyring=world.hub.keyring, key=world.export_key, version=1)
    (v3_dir / "model.tflite").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        reissue_bundle(v3_dir, tmp_path / "y", keyring=world.hub.keyring, key=world.export_key, version=9)
