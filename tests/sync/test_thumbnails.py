"""Catalogue thumbnails reach the device at sync, so the results grid shows them offline."""
from __future__ import annotations

import sqlite3

from PIL import Image

from .test_inmemory import client


def _thumb_paths(device_dir):
    conn = sqlite3.connect(device_dir / "catalogue.db")
    try:
        return [(i, device_dir / p) for i, p in conn.execute("SELECT image_id, path FROM images")]
    finally:
        conn.close()


def test_sync_fetches_every_thumbnail_once(world) -> None:
    res = client(world).sync()
    rows = _thumb_paths(world.device_dir)
    assert len(rows) == 3
    assert res.thumbnails == {"fetched": 3, "failed": 0, "present": 0}
    for _, path in rows:
        with Image.open(path) as im:
            assert im.format == "JPEG" and max(im.size) <= 512
    again = client(world).sync()
    assert again.thumbnails == {"fetched": 0, "failed": 0, "present": 3}


def test_a_broken_thumbnail_is_skipped_and_retried(world) -> None:
    image_id = sorted(p.stem for p in (world.hub.root / "thumbs").glob("*.jpg"))[0]
    thumb = world.hub.thumb_path(image_id)
    good = thumb.read_bytes()
    thumb.write_bytes(b"not a jpeg")
    res = client(world).sync()
    assert res.thumbnails["failed"] == 1 and res.thumbnails["fetched"] == 2
    assert not (world.device_dir / "thumbs" / f"{image_id}.jpg").exists()
    thumb.write_bytes(good)
    res = client(world).sync()
    assert res.thumbnails == {"fetched": 1, "failed": 0, "present": 2}
