"""The tablet app on the REAL device services (catalogue, outbox, identifier on a tiny signed ONNX bundle), driven
with simulated touches offscreen: what ``ui_flow.py`` checks on the drawn preview catalogue, checked here where the
screens meet the real runtime (a bug class the preview cannot show: it was a real-services screenshot that showed
"Last sync: never" on a synced tablet).

Not collected directly: ``test_app_ui.py`` runs it in a fresh process (tablet profile), like ``ui_flow.py``.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from tests.edge_app.ui_flow import (PROFILE, accessibility_problems, pick, pump, status_fits, tap,  # noqa: E402
                                    wait_for, walk)

pytestmark = pytest.mark.ui
N_PARTS = 8


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from edge_app.app.main import PartlensApp
    from edge_app.runtime.catalogue import CatalogueDB
    from edge_app.runtime.importer import import_catalogue
    from edge_app.services import DeviceServices
    from tests.edge_app import synthetic as syn

    base = tmp_path_factory.mktemp("real")
    cat = syn.write_catalogue(base / "gen", N_PARTS)
    model = syn.make_onnx_model(base / "model.onnx", N_PARTS)
    key, keyring = syn.make_keys()
    keyring.save(base / "keyring.json")
    bundle = syn.build_test_bundle(base / "bundles", model, cat, key, version=1)
    device = base / "device"
    with CatalogueDB(device / "catalogue.db") as db:
        with db.transaction():
            db.set_meta("site", "site_a")
        import_catalogue(db, cat.parts_csv, cat.images_csv)
    # enrolled; the hub's policy (as the last sync brought it) asks a spot check for every identification
    (device / "device.json").write_text(json.dumps({"hub": "http://127.0.0.1:9", "token": "t", "device": "tab-1",
                                                    "site": "site_a", "policy": {"spot_check_rate": 1.0}}))
    photos = base / "photos"
    photos.mkdir()
    field = syn.field_images(cat)
    shutil.copy(field["P0003"][0], photos / "P0003.jpg")
    services = DeviceServices(device, site="site_a", bundle_dir=bundle, keyring=base / "keyring.json",
                              backend="onnx", spot_rng=random.Random(0))
    # Android stopped partlens while the camera app was in front: the photo it took is adopted at this start
    camera_id, camera_file = services.captures.camera_path(".jpg")
    shutil.copy(field["P0003"][1], camera_file)
    app = PartlensApp(services)
    app._run_prepare()
    recovered = (list(app.captures), app.message)
    app.screen("identify").start_folder = str(photos)
    pump(25)
    yield {"app": app, "services": services, "device": device, "camera_id": camera_id, "recovered": recovered}
    app.stop()
    services.close()


def _pending(services) -> list[dict]:
    return services.outbox.pending()


def test_identify_spot_check_and_feedback_reach_the_real_outbox(real) -> None:
    from kivy.uix.button import Button
    from kivy.uix.label import Label

    assert PROFILE.name == "tablet"
    app, services = real["app"], real["services"]
    caps, message = real["recovered"]
    assert [c.capture_id for c in caps] == [real["camera_id"]] and "taken before partlens stopped is back" in message
    pick(app, "P0003.jpg")  # a second view of the same part
    tap(app.screen("identify").ids.identify_btn)
    wait_for(lambda: not app.busy)
    assert app.sm.current == "results" and app.outcome is not None
    res = app.screen("results")
    cards = [w for w in walk(res.ids.grid) if w.__class__.__name__ == "MatchCard"][::-1]
    assert cards and cards[0].part_number == "P0003"  # the real identifier ranked the photographed part first
    texts = [w.text for w in walk(cards[0]) if isinstance(w, Label)]
    assert any("Stock at site_a: 0" in t for t in texts) and any("Bin: A-03" in t for t in texts)
    assert status_fits(app) and accessibility_problems(app.root) == []

    # every identification is picked at this rate: the question is on screen, the identify event says so
    (ident,) = [r["payload"] for r in _pending(services) if r["payload"].get("event") == "identify"]
    assert ident["spot_check"] is True and ident["identification_id"] == app.outcome.identification_id
    assert res.ids.spot_check.opacity == 1
    answer = next(b for b in walk(res.ids.spot_buttons) if isinstance(b, Button) and b.text.startswith("P0003\n"))
    tap(answer)
    kinds = [(r["kind"], r["payload"].get("event"), r["payload"].get("spot_check")) for r in _pending(services)]
    assert kinds == [("usage", "identify", True), ("usage", "spot_check", None), ("feedback", None, True)]
    spot, fb = _pending(services)[1:]
    assert spot["payload"]["answer"] == "P0003" and spot["payload"]["top"][0] == "P0003"
    assert fb["payload"]["part_number"] == "P0003" and Path(fb["blob_path"]).is_file()
    assert res.ids.spot_check.opacity == 0 and services.pending_uploads() == 1  # the photo waits; events do not

    # a restart keeps the answered state: no second question, nothing queued twice
    assert app.on_pause() is True
    app.outcome = None
    app.on_resume()
    pump(10)
    assert app.outcome.spot_check_done and res.ids.spot_check.opacity == 0
    assert len(_pending(services)) == 3

    # part detail on the real catalogue; "this is the part" again is a plain confirmation
    tap(cards[0])
    det = app.screen("part_detail")
    assert app.sm.current == "part_detail" and len(det.ids.inventory.children) == 2
    tap(det.ids.correct_btn)
    wait_for(lambda: not app.busy)
    assert [r["kind"] for r in _pending(services)][-1] == "feedback" and len(_pending(services)) == 4
    assert accessibility_problems(app.root) == []


def test_catalogue_and_sync_screens_on_real_services(real) -> None:
    app, services = real["app"], real["services"]
    app.go("catalogue")
    cat = app.screen("catalogue")
    wait_for(lambda: not cat.searching)
    cat.ids.query.text = "gear"
    tap(cat.ids.search_btn)
    wait_for(lambda: not cat.searching)
    assert sorted(d["part_number"] for d in cat.ids.list.data) == ["P0000", "P0002", "P0004", "P0006"]
    tap(app.nav_buttons["sync_status"])
    scr = app.screen("sync_status")
    text = scr.ids.status.text
    assert "Hub: http://127.0.0.1:9" in text and "Last sync: never" in text
    assert f"Waiting to upload: {services.pending_uploads()}" in text and "Storage free:" in text
    assert accessibility_problems(app.root) == [] and status_fits(app)


def test_a_sideways_photo_is_shown_upright_and_the_frame_follows_the_photo(real, tmp_path) -> None:
    """Found by an audit: Kivy showed an EXIF-rotated photo as stored while the model and the hub got it upright,
    so the engineer cut one region and another was used; and the crop frame lagged the photo after a layout
    change (a status line, a resize)."""
    import numpy as np
    from PIL import Image

    from tests.edge_app.ui_flow import start_over

    app, services = real["app"], real["services"]
    start_over(app)
    stored = np.zeros((200, 400, 3), dtype=np.uint8)  # stored 400 wide, 200 high: left quarter blue, rest red
    stored[:, :100] = (0, 0, 255)
    stored[:, 100:] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": upright it is 200 wide, 400 high, blue on top
    folder = Path(app.screen("identify").start_folder)
    Image.fromarray(stored).save(folder / "sideways.jpg", quality=95, exif=exif.tobytes())
    pick(app, "sideways.jpg")
    pump(10)
    crop = app.screen("identify").ids.crop
    assert Path(crop.source).name.endswith(".view.jpg")
    tw, th = crop.ids.photo.texture_size
    assert th > tw, f"shown as stored ({tw}x{th}), not upright"
    # the top quarter of what is on screen is what the model and the hub get
    cap = app.selected
    cut = services.captures.cropped_image(services.captures.set_crop(cap, (0.0, 0.0, 1.0, 0.25)))
    r, g, b = np.asarray(cut, dtype=float).reshape(-1, 3).mean(axis=0)
    assert b > 200 and r < 60, (r, g, b)
    # after layout changes the frame and the handles sit on the photo's corners
    for change in (lambda: app.notify("A long status line " * 4), lambda: app.notify("")):
        change()
        pump(10)
        x, y, w, h = crop.image_rect()
        l, t, r_, b_ = crop.crop
        fx, fy, fw, fh = crop.frame
        assert abs(fx - (x + l * w)) < 1 and abs(fy - (y + (1 - b_) * h)) < 1
        assert abs(fw - (r_ - l) * w) < 1 and abs(fh - (b_ - t) * h) < 1
        handle = crop.handles["tl"]
        hx, hy = handle.center
        # on the corner, or as near it as the view's edge allows (the handle never reaches past it)
        half_w, half_h = handle.width / 2, handle.height / 2
        ex = min(max(x + l * w, crop.x + half_w), crop.right - half_w)
        ey = min(max(y + (1 - t) * h, crop.y + half_h), crop.top - half_h)
        assert abs(hx - ex) < 1 and abs(hy - ey) < 1, ((hx, hy), (ex, ey))
    start_over(app)


def test_a_damaged_saved_state_is_set_aside_not_a_crash_at_every_start(real) -> None:
    app, device = real["app"], real["device"]
    state = device / "app_state.json"
    for bad in ({"version": 1, "outcome": "oops"}, {"version": 1, "captures": "oops"},
                {"version": 1, "part": ["P1"]}):
        state.write_text(json.dumps(bad))
        app.restore_state()  # raised AttributeError / TypeError before: every start crashed
        assert not state.exists() and json.loads((device / "app_state.json.bad").read_text()) == bad


def test_a_catalogue_a_sync_holds_is_a_plain_message_not_a_bug_report(real) -> None:
    import sqlite3

    app = real["app"]

    def locked():
        raise sqlite3.OperationalError("database is locked")

    done = []
    assert app.run_background("Identifying...", locked, done.append)
    wait_for(lambda: not app.busy)
    assert done == [] and app.message.startswith("A sync is updating the parts catalogue right now")
    assert app.run_background("Identifying...", lambda: (_ for _ in ()).throw(sqlite3.OperationalError("no such table")),
                              done.append)
    wait_for(lambda: not app.busy)
    assert app.message == "unexpected error: no such table"  # other SQLite faults are still bugs


def test_a_measurement_typed_with_a_decimal_comma_is_kept_and_back_returns_where_the_part_was_opened(real) -> None:
    """Second app audit: the measurement box's float filter dropped the comma of "12,5" (125 mm was applied);
    after a restart on Part detail, Back went to Results although the part was opened from the catalogue."""
    app = real["app"]
    field = app.screen("results").ids.measure
    field.text = ""
    for ch in "12,5":
        field.insert_text(ch)  # as the keyboard types it
    assert field.text == "12,5"
    field.text = ""
    app.go("catalogue")
    pump(10)
    app.open_part("P0002")  # from the catalogue
    pump(10)
    state = app.state_dict()
    assert state["part_came_from"] == "catalogue"
    app.screen("part_detail").came_from = "results"
    app.services.state.save(state)
    app.restore_state()
    assert app.screen("part_detail").came_from == "catalogue"


def test_results_belong_to_the_photos_they_came_from_and_answers_run_off_the_ui_thread(real) -> None:
    """Third app audit: after "Start over" and a new photo (not identified), the old results still showed, and
    "This is the part" on them queued the NEW photo as a confirmed picture of the old answer; "Record unknown
    part" and spot-check answers wrote full-size photo copies on the UI thread."""
    import threading

    from kivy.uix.button import Button

    from tests.edge_app.ui_flow import start_over

    app, services = real["app"], real["services"]
    folder = Path(app.screen("identify").start_folder)
    shutil.copy(folder / "P0003.jpg", folder / "other.jpg")
    start_over(app)
    pick(app, "P0003.jpg")
    tap(app.screen("identify").ids.identify_btn)
    wait_for(lambda: not app.busy)
    assert app.outcome is not None and app.outcome_captures() == app.captures
    start_over(app)  # another part: the old results go with the old photos
    assert app.outcome is None
    pick(app, "other.jpg")
    tap(app.nav_buttons["results"])
    pump(10)
    res = app.screen("results")
    assert res.ids.summary.text.startswith("No results yet") and not res.ids.grid.children

    tap(app.nav_buttons["identify"])
    tap(app.screen("identify").ids.identify_btn)
    wait_for(lambda: not app.busy)
    identified = list(app.outcome.capture_ids)
    pick(app, "P0003.jpg")  # one more view after identifying: the results are out of date
    assert app.outcome is None and "tap Identify" in app.message
    tap(app.screen("identify").ids.identify_btn)
    wait_for(lambda: not app.busy)
    assert len(app.outcome.capture_ids) == 2 and app.outcome.capture_ids[0] == identified[0]

    threads = []
    real_record, real_answer = services.record_unknown, services.answer_spot_check

    def record(*a, **k):
        threads.append(threading.current_thread().name)
        return real_record(*a, **k)

    def answer(*a, **k):
        threads.append(threading.current_thread().name)
        return real_answer(*a, **k)

    services.record_unknown, services.answer_spot_check = record, answer
    try:
        res.ids.unknown_note.text = "stamped 7731"
        res.record_unknown()
        wait_for(lambda: not app.busy)
        assert res.ids.unknown_note.text == "" and "Unknown part recorded" in app.message
        if app.outcome.spot_check_pending:
            tap(next(b for b in walk(res.ids.spot_buttons) if isinstance(b, Button) and b.text == "Skip"))
            wait_for(lambda: not app.busy)
            assert app.outcome.spot_check_done
    finally:
        services.record_unknown, services.answer_spot_check = real_record, real_answer
    assert threads and all(t == "partlens-worker" for t in threads), threads
    (unknown,) = [r for r in _pending(services) if r["kind"] == "unknown_part"
                  and r["payload"]["note"] == "stamped 7731"]
    assert unknown["payload"]["capture_ids"] == app.outcome.capture_ids
    # Android's Back (key 27): Part detail back where it was opened from, other screens to Identify
    from kivy.core.window import Window

    app.open_part(app.outcome.matches[0].part_number)
    pump(5)
    assert app.sm.current == "part_detail"
    Window.dispatch("on_keyboard", 27, 0, None, [])
    assert app.sm.current == "results"
    Window.dispatch("on_keyboard", 27, 0, None, [])
    assert app.sm.current == "identify"


def test_the_catalogue_pages_and_part_detail_shows_what_it_holds(real) -> None:
    """Found by an audit of the Catalogue and Part detail screens (20th session): the list stopped at 50 parts
    ("50 parts (first 50)" whatever the number); a long name was cut in the title and shown nowhere else; the
    "damaged image" note was clipped to a 17 px strip; "This is the part" with no photo queued an empty record."""
    from kivy.metrics import mm
    from kivy.uix.label import Label

    app, services = real["app"], real["services"]
    db = services.catalogue
    saved = (list(app.captures), app.outcome)
    extra = [f"ZZ-{i:03d}" for i in range(60)]
    long_name = "Hydraulic hose assembly with swaged fittings both ends, 2 m, DN12, 350 bar, for spreader 4"
    (real["device"] / "images").mkdir(exist_ok=True)
    (real["device"] / "images" / "zz-bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with db.transaction():
        db.upsert_parts([{"part_number": pn, "name": long_name, "category": "hoses", "manufacturer": "X",
                          "description": "", "size_mm": None, "look_alike_group": None, "version": 1}
                         for pn in extra])
        db.upsert_images([{"image_id": "zz-bad", "part_number": "ZZ-000", "path": "images/zz-bad.jpg",
                           "kind": "catalogue", "version": 1}])
    try:
        app.captures, app.outcome = [], None
        app.go("catalogue")
        cat = app.screen("catalogue")
        cat.ids.query.text = ""
        cat.search()
        wait_for(lambda: not cat.searching)
        total = N_PARTS + len(extra)
        assert cat.ids.count.text == f"{total} parts (showing the first 50)" and len(cat.ids.list.data) == 50
        # a RecycleView: row widgets only for the rows on screen (one button per part cost 130-440 ms a page)
        pump(3)
        views = cat.ids.list.layout_manager.children
        assert 0 < len(views) < 50 and {v.part_number for v in views} <= {d["part_number"] for d in cat.ids.list.data}
        assert all(v.height >= mm(12) and v.text.startswith(v.part_number) for v in views)
        cat.ids.query.text = "gear"  # typed, not searched: "Show more" continues the list on screen (a review)
        tap(cat.ids.more_btn)
        wait_for(lambda: not cat.searching)
        assert len(cat.ids.list.data) == total and cat.ids.count.text == f"{total} parts"
        assert cat.ids.more_btn.disabled
        assert sorted(d["part_number"] for d in cat.ids.list.data) == sorted(
            [r["part_number"] for r in services.search(limit=1000)])
        app.open_part("ZZ-000")
        pump(25)
        det = app.screen("part_detail")
        assert app.nav_buttons["catalogue"].state == "down"  # the tab it was opened from (none was lit)
        assert long_name in det.ids.info.text  # the title is one line, cut
        (note,) = [w for w in det.ids.images.children if isinstance(w, Label)]
        assert "could not be shown" in note.text and note.texture_size[1] <= note.height <= det.ids.images.height
        assert "No photo taken" in det.ids.question.text
        assert det.ids.correct_btn.disabled and det.ids.wrong_btn.disabled and det.ids.photo_btn.disabled
        # a part a sync deleted while the list still showed it: the page says so and nothing can be answered
        app.captures = saved[0]
        with db.transaction():
            db.delete_parts(["ZZ-001"])
        app.go("catalogue")
        app.open_part("ZZ-001")
        pump(10)
        assert "not in the catalogue" in det.ids.info.text and det.ids.correct_btn.disabled
        app.go("catalogue")
        app.open_part(real_part := "P0002")
        pump(10)
        assert not det.ids.correct_btn.disabled and det.ids.question.text.startswith("Is this the part")
        assert real_part in det.ids.info.text
    finally:
        with db.transaction():
            db.delete_parts(extra)
        app.captures, app.outcome = saved
