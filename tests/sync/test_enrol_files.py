"""Enrolment files as a hub admin makes them (an audit of the admin's first day, 23rd session)."""
from __future__ import annotations

import json
import stat

from edge_app.cli import main


def test_the_payload_file_is_private_and_enrol_takes_the_terminal_output_too(world, tmp_path, capsys) -> None:
    out = tmp_path / "tab-x.json"
    assert main(["hub", "add-device", "--hub", str(world.hub.root), "tab-x", "--site", "site_a", "--out", str(out),
                 "--ascii"]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the token inside (a `> FILE` left it 0644)
    assert json.loads(out.read_text())["token"].startswith("pl1.tab-x.")
    # `--ascii > FILE` (docs/sync.md's quick start) gave a file enrol refused: the QR code, then the JSON line
    (tmp_path / "with-qr.out").write_text(printed)
    assert main(["sync", "enrol", "--data-dir", str(tmp_path / "dev"), str(tmp_path / "with-qr.out")]) == 0
    assert json.loads((tmp_path / "dev" / "device.json").read_text())["site"] == "site_a"
    (tmp_path / "junk.txt").write_text("not a payload at all\n")
    assert main(["sync", "enrol", "--data-dir", str(tmp_path / "dev2"), str(tmp_path / "junk.txt")]) == 2
    assert "pass the JSON line `partlens hub add-device` printed" in capsys.readouterr().err


def test_a_backup_says_how_to_restore_it_in_words_that_work(world, tmp_path, capsys) -> None:
    assert main(["hub", "backup", "--hub", str(world.hub.root), str(tmp_path / "b")]) == 0
    hint = json.loads(capsys.readouterr().out)["restore"]
    assert hint.startswith(f"partlens hub restore {tmp_path / 'b'} --hub ")
    argv = hint.split(" (")[0].split()[1:]
    argv[argv.index("NEW_HUB_DIR")] = str(tmp_path / "restored")
    assert main(argv) == 0


def test_a_bundle_of_an_untrusted_signer_names_the_fix(world, tmp_path) -> None:
    """The admin got "signed by unknown key" and had to guess `hub trust` (an audit of the first day)."""
    import pytest

    from edge_app.errors import IntegrityError

    from .helpers import make_bundle, make_key

    _, stranger, _ = make_key(tmp_path / "other-keys")
    bundle = make_bundle(tmp_path / "export-x", stranger, 5)
    with pytest.raises(IntegrityError, match=r"signed by unknown key .*partlens hub trust --hub .* SIGNER\.pub\.json"):
        world.hub.set_bundle(bundle)


def test_the_hub_folder_and_its_backups_are_the_admin_s_alone(tmp_path, capsys) -> None:
    """hub.db (engineers' notes) and the field photos were readable by every user of the hub computer (an audit
    of the admin's first day)."""
    from sync.hub.hub import Hub

    from .helpers import make_key

    key, _, _ = make_key(tmp_path / "keys")
    hub = Hub.init(tmp_path / "hub", key)
    assert stat.S_IMODE((tmp_path / "hub").stat().st_mode) == 0o700
    assert main(["hub", "backup", "--hub", str(hub.root), str(tmp_path / "bk")]) == 0
    assert stat.S_IMODE((tmp_path / "bk").stat().st_mode) == 0o700
    assert hub.status()["folder_open_to_others"] is False
    (tmp_path / "hub").chmod(0o755)  # a hub made before hubs were 0700: said by `hub status`
    assert Hub(tmp_path / "hub").status()["folder_open_to_others"] is True


def test_review_list_names_each_photo_file_and_has_a_brief_form(world, capsys) -> None:
    """45 kB of JSON for 50 records and no path to the photos (uploads/<uuid>.blob, no .jpg) (an audit)."""
    from pathlib import Path

    from .helpers import part_image, upload_items

    uid = upload_items(world, [("photo", {"part_number": "P1", "capture_id": "c1"}, part_image(1, noise=5)),
                               ("feedback", {"part_number": "P0", "verdict": "wrong", "capture_ids": ["c2"]}, None)])
    capsys.readouterr()
    assert main(["hub", "review", "list", "--hub", str(world.hub.root)]) == 0
    rows = json.loads(capsys.readouterr().out)
    photo = next(r for r in rows if r["uuid"] == uid[0])["photo"]
    assert Path(photo).read_bytes() == part_image(1, noise=5)
    assert next(r for r in rows if r["uuid"] == uid[1])["photo"] is None
    assert main(["hub", "review", "list", "--hub", str(world.hub.root), "--brief"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and uid[0] in lines[0] and "P1" in lines[0] and lines[0].endswith(photo)
    assert "P0 wrong" in lines[1]


def test_a_model_change_names_every_catalogue_image_it_cannot_decode(world, tmp_path) -> None:
    """`set-bundle` stopped at the first image it could not decode (an audit: one at a time, each a re-run of the
    whole re-embedding); every one is named now, and nothing changes."""
    import pytest

    from edge_app.errors import ImageError

    from .helpers import make_bundle

    rows = world.hub.store.live_images()
    for r in rows[:2]:
        (world.hub.root / "images" / r["path"]).write_bytes(b"not an image any more")
    before = world.hub.bundle_id
    with pytest.raises(ImageError, match=r"2 catalogue image\(s\) cannot be decoded, nothing was changed: "):
        world.hub.set_bundle(make_bundle(tmp_path / "export2", world.export_key, 2))
    assert world.hub.bundle_id == before
