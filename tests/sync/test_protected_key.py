"""A hub whose package-signing key is protected by a passphrase (``keys init --protect``)."""
from __future__ import annotations

import pytest

from edge_app.errors import UsageError

from .helpers import embedder_factory, make_bundle, make_key, write_images


def test_hub_signs_with_a_protected_key_only_with_the_passphrase(tmp_path, monkeypatch) -> None:
    from edge_app.signing import PASSPHRASE_ENV, init_key
    from sync.client import SyncClient, enrol
    from sync.hub.enrol import add_device
    from sync.hub.hub import Hub
    from sync.transport import InMemoryTransport

    monkeypatch.setenv(PASSPHRASE_ENV, "terminal hub passphrase")
    key_path, _ = init_key(tmp_path / "keys", passphrase=b"terminal hub passphrase")
    _, export_key, export_pub = make_key(tmp_path / "keys-export")
    hub = Hub.init(tmp_path / "hub", key_path, trust=[export_pub], url="http://127.0.0.1:9",
                   embedder_factory=embedder_factory)
    (img,) = write_images(tmp_path / "src", [0])
    hub.add_part({"part_number": "P0", "name": "part 0"}, inventory={"site_a": (1, "A0")}, images=[img])
    hub.set_bundle(make_bundle(tmp_path / "export", export_key, 1))
    payload = add_device(hub, "tab1", "site_a")
    enrol(tmp_path / "device", payload)

    # the hub restarted without the passphrase in its environment: packages cannot be signed, and it says why
    monkeypatch.delenv(PASSPHRASE_ENV)
    cold = Hub(tmp_path / "hub", embedder_factory=embedder_factory)
    client = SyncClient(tmp_path / "device", transport=InMemoryTransport(cold, payload["token"]),
                        smoke_test=lambda b: None)
    with pytest.raises(UsageError, match=PASSPHRASE_ENV):
        client.sync()
    monkeypatch.setenv(PASSPHRASE_ENV, "terminal hub passphrase")
    assert client.sync().to_version == cold.store.version()


def test_hub_serve_refuses_to_start_without_the_passphrase(tmp_path, monkeypatch, capsys) -> None:
    from edge_app.cli import main
    from edge_app.signing import PASSPHRASE_ENV, init_key
    from sync.hub.hub import Hub

    monkeypatch.setenv(PASSPHRASE_ENV, "terminal hub passphrase")
    key_path, _ = init_key(tmp_path / "keys", passphrase=b"terminal hub passphrase")
    Hub.init(tmp_path / "hub", key_path, url="http://127.0.0.1:9")
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert main(["hub", "serve", "--hub", str(tmp_path / "hub"), "--port", "9"]) == UsageError.exit_code
    assert PASSPHRASE_ENV in capsys.readouterr().err
