"""Fixtures: a hub with a signed bundle and three parts, and an enrolled device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import embedder_factory, make_bundle, make_key, write_images


@dataclass
class World:
    root: Path
    hub: object
    hub_key_path: Path
    export_key: object
    payload: dict
    device_dir: Path
    bundle_v1: Path


def build_world(root: Path, url: str = "http://127.0.0.1:9") -> World:
    from sync.client import enrol
    from sync.hub.enrol import add_device
    from sync.hub.hub import Hub

    hub_key_path, _, _ = make_key(root / "keys-hub")
    _, export_key, export_pub = make_key(root / "keys-export")
    hub = Hub.init(root / "hub", hub_key_path, trust=[export_pub], url=url, embedder_factory=embedder_factory)
    imgs = write_images(root / "src", [0, 1, 2])
    for i, img in enumerate(imgs):
        hub.add_part({"part_number": f"P{i}", "name": f"part {i}", "category": "bolt"},
                     inventory={"site_a": (i + 1, f"A{i}"), "site_b": (10 + i, f"B{i}")}, images=[img])
    bundle_v1 = make_bundle(root / "export", export_key, 1)
    hub.set_bundle(bundle_v1)
    payload = add_device(hub, "tab1", "site_a")
    device_dir = root / "device"
    enrol(device_dir, payload)
    return World(root, hub, hub_key_path, export_key, payload, device_dir, bundle_v1)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)
