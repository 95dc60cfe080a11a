"""The tablet app driven with simulated touches in an offscreen window (one display profile).

Not collected directly: ``test_app_ui.py`` runs this file in a fresh process per profile
(``PARTLENS_UI_PROFILE`` = ``tablet`` 1920x1200 at 224 dpi, or ``phone`` 720x1280 at 294 dpi).
Kivy's window and metrics are global to a process, and a process that has a GL context must
not load triton or TensorFlow afterwards (both bundle LLVM, as Mesa does: it segfaults).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from edge_app.app.theme import MIN_CONTRAST, MIN_TEXT_SP, MIN_TOUCH_MM, PROFILES, contrast_ratio
from edge_app.services import local_time

PROFILE = PROFILES[os.environ.get("PARTLENS_UI_PROFILE", "tablet")]
# Must happen before anything imports kivy.
os.environ.update(SDL_VIDEODRIVER="offscreen", KIVY_NO_ARGS="1", KIVY_LOG_MODE="PYTHON",
                  KIVY_HOME=tempfile.mkdtemp(prefix="kivy-home-"), **PROFILE.env())

from kivy.config import Config  # noqa: E402

Config.set("graphics", "width", str(PROFILE.size[0]))
Config.set("graphics", "height", str(PROFILE.size[1]))
Config.set("input", "mouse", "")  # no real input devices in the test


from kivy.base import EventLoop  # noqa: E402
from kivy.core.window import Window  # noqa: E402
from kivy.metrics import Metrics, mm, sp  # noqa: E402
from kivy.tests.common import UnitTestTouch  # noqa: E402
from kivy.uix.behaviors import ButtonBehavior  # noqa: E402
from kivy.uix.label import Label  # noqa: E402
from kivy.uix.textinput import TextInput  # noqa: E402

from edge_app.app.main import PartlensApp  # noqa: E402
from edge_app.app.preview import PreviewServices, draw_part  # noqa: E402
from edge_app.app.screens.identify import CropHandle  # noqa: E402
from edge_app.app.screens.sync_status import POLL_S  # noqa: E402

pytestmark = pytest.mark.ui
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ helpers
def pump(n: int = 3) -> None:
    for _ in range(n):
        EventLoop.idle()


def wait_for(cond, timeout: float = 20.0) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting for the UI")
        pump(1)
        time.sleep(0.01)
    pump(25)  # let layouts settle


def tap(widget) -> None:
    """A real touch down/up at the widget's centre (scrolled into view first, as a user would)."""
    from kivy.uix.scrollview import ScrollView

    assert not widget.disabled, f"{widget} is disabled"
    node = widget.parent
    while node is not None and node is not Window:
        content = node.children[0] if isinstance(node, ScrollView) and node.children else None
        # scroll_to misbehaves when nothing can scroll (content shorter than the view): skip then
        if content is not None and (content.height > node.height + 1 or content.width > node.width + 1):
            node.scroll_to(widget, padding=10, animate=False)
            pump(5)
        node = node.parent
    x, y = widget.to_window(*widget.center)
    assert 0 <= x < Window.width and 0 <= y < Window.height, f"{widget} is off screen at {(x, y)}"
    touch = UnitTestTouch(x, y)
    touch.touch_down()
    touch.touch_up()
    pump(25)


def walk(widget):
    yield widget
    for child in widget.children:
        yield from walk(child)


def hidden(w) -> bool:
    while w is not None and w is not Window:
        if w.opacity == 0 or w.height <= 0.5 or w.width <= 0.5:
            return True
        w = w.parent
    return False


def background_of(w):
    """The opaque colour the widget's text is drawn on (its own or the nearest ancestor's)."""
    from kivy.uix.button import Button

    if isinstance(w, Button):
        return tuple(w.background_color)
    if isinstance(w, TextInput):
        return tuple(w.background_color)
    node = w
    while node is not None and node is not Window:
        bg = getattr(node, "bg_color", None)
        if bg is not None and len(bg) == 4 and bg[3] >= 0.999:
            return tuple(bg)
        node = node.parent
    raise AssertionError(f"{w.__class__.__name__} {getattr(w, 'text', '')!r} has no known opaque background")


def text_color_of(w):
    if isinstance(w, TextInput):
        return tuple(w.foreground_color if w.text else w.hint_text_color)
    return tuple(w.disabled_color if w.disabled else w.color)


def accessibility_problems(root) -> list[str]:
    """Touch targets >= 12 mm, text >= 18 sp, contrast >= 7:1 for every visible widget under root."""
    problems = []
    min_px = mm(MIN_TOUCH_MM) - 0.5
    for w in walk(root):
        if hidden(w):
            continue
        name = f"{w.__class__.__name__}({getattr(w, 'text', '')[:30]!r})"
        if isinstance(w, (ButtonBehavior, TextInput, CropHandle)):
            if w.width < min_px or w.height < min_px:
                problems.append(f"{name} touch target {w.width / mm(1):.1f}x{w.height / mm(1):.1f} mm")
        if isinstance(w, (Label, TextInput)) and (w.text or getattr(w, "hint_text", "")):
            if w.font_size < sp(MIN_TEXT_SP) - 0.01:
                problems.append(f"{name} text {w.font_size / sp(1):.1f} sp")
            ratio = contrast_ratio(text_color_of(w), background_of(w))
            if ratio < MIN_CONTRAST:
                problems.append(f"{name} contrast {ratio:.2f}:1")
    return problems


def status_fits(app) -> bool:
    """The status line is as tall as its text (else the text spills over the screen above it)."""
    st = app.status
    return st.height >= st.texture_size[1] if st.text else st.height == 0 and st.opacity == 0


def check_screen(app, name: str, shots: Path) -> None:
    assert app.sm.current == name
    assert status_fits(app), f"status line {app.status.text!r} is {app.status.height} px high"
    problems = accessibility_problems(app.root)
    assert not problems, "\n".join(problems)
    out = Window.screenshot(str(shots / f"{PROFILE.name}_{name}.png"))
    assert Path(out).stat().st_size > 10_000


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui")
    photos = base / "photos"
    photos.mkdir()
    draw_part((190, 170, 60), "bolt", seed=7).save(photos / "bolt.jpg")      # a confident match
    draw_part((120, 120, 130), "ring", seed=8).save(photos / "bearing.jpg")  # look-alike bearings
    draw_part((150, 40, 160), "box", seed=9).save(photos / "mystery.jpg")    # not in the catalogue
    services = PreviewServices(base / "device")
    app = PartlensApp(services)
    app._run_prepare()
    app.screen("identify").start_folder = str(photos)
    pump(25)
    shots = base / "shots"
    shots.mkdir()
    yield {"app": app, "services": services, "photos": photos, "shots": shots}
    app.stop()


def start_over(app) -> None:
    tap(app.nav_buttons["identify"])
    if app.captures:
        tap(app.screen("identify").ids.clear_btn)
    assert app.captures == [] and app.screen("identify").ids.identify_btn.disabled


def pick(app, filename: str) -> None:
    if app.sm.current != "identify":
        tap(app.nav_buttons["identify"])
    scr = app.screen("identify")
    tap(scr.ids.pick_btn)
    view = scr.picker_view
    button = next(b for b in view.picker.grid.children if Path(b.picker_path).name == filename)
    assert accessibility_problems(view) == []
    n = len(app.captures)
    tap(button)
    assert view.parent is None, "the picker closes after a pick"
    wait_for(lambda: not app.busy)  # the file is checked and copied off the UI thread
    assert len(app.captures) == n + 1 or "Adding" not in app.message


def identify_photo(app, filename: str) -> None:
    """From a clean Identify screen: pick one photo, identify it, wait for the answer."""
    start_over(app)
    pick(app, filename)
    tap(app.screen("identify").ids.identify_btn)
    wait_for(lambda: not app.busy)


# ------------------------------------------------------------------------------------ tests
def test_status_line_cleared_and_set_in_one_frame_fits_its_text(env) -> None:
    """Found by a screenshot: ``go`` clears the status line and ``notify`` sets it in the same frame (every
    identification); with a text as tall as the one before, the line kept height 0 and its text was drawn over
    the results above it."""
    app = env["app"]
    app.notify("Queued 1 photo of BLT-M12X50.")
    pump(5)
    app.notify("")
    app.notify("Best match: BLT-M12X50")
    pump(5)
    assert status_fits(app) and app.status.height > 0
    app.notify("")
    pump(2)
    assert status_fits(app)


def test_display_profile_is_the_stated_one() -> None:
    assert tuple(Window.size) == PROFILE.size
    assert Metrics.dpi == pytest.approx(PROFILE.dpi)
    assert mm(12) == pytest.approx(12 / 25.4 * PROFILE.dpi, rel=1e-3)


def test_full_flow_pick_identify_results_part_feedback(env) -> None:
    app, services, shots = env["app"], env["services"], env["shots"]
    assert app.sm.current == "identify"
    pick(app, "bolt.jpg")
    assert len(app.captures) == 1
    cap = app.captures[0]
    assert Path(cap.path).is_file() and Path(cap.path).parent == services.captures.root  # on disk at once
    scr = app.screen("identify")

    # drag the top-left crop handle inwards: the crop is saved to the capture's record
    handle = scr.ids.crop.handles["tl"]
    x, y = handle.to_window(*handle.center)
    touch = UnitTestTouch(x, y)
    touch.touch_down()
    touch.touch_move(x + mm(8), y - mm(8))
    touch.touch_up()
    pump(10)
    crop = app.captures[0].crop
    assert crop is not None and crop[0] > 0.01 and crop[1] > 0.01 and crop[2] == 1.0
    assert services.captures.get(cap.capture_id).crop == crop
    check_screen(app, "identify", shots)

    seen = []
    app.bind(busy=lambda *_: seen.append(app.busy))
    tap(scr.ids.identify_btn)
    wait_for(lambda: not app.busy)
    assert seen == [True, False], "identify runs behind the busy overlay"
    assert app._worker is not None and app._worker.name == "partlens-worker"  # off the UI thread
    assert app.sm.current == "results"
    res = app.screen("results")
    cards = [w for w in walk(res.ids.grid) if w.__class__.__name__ == "MatchCard"]
    assert len(cards) == 5 and cards[-1].part_number == "BLT-M12X50"  # children are reversed: last = first
    texts = [w.text for w in walk(cards[-1]) if isinstance(w, Label)]
    # the hub's time on the tablet's clock, as the Sync screen shows times
    assert any(f"as of {local_time('2026-11-21T22:00:00+00:00')}" in t for t in texts)
    assert any("Bin: C-11-1" in t for t in texts)
    assert any(t.startswith("CONFIDENT MATCH: ") and "likely" in t for t in texts)  # the confident answer, marked
    assert res.ids.no_match.opacity == 0
    check_screen(app, "results", shots)

    tap(cards[-1])
    assert app.sm.current == "part_detail" and app.current_part == "BLT-M12X50"
    det = app.screen("part_detail")
    assert len(det.ids.images.children) == 2 and len(det.ids.inventory.children) == 2
    tap(det.ids.correct_btn)  # written off the UI thread, behind the overlay
    wait_for(lambda: not app.busy)
    assert [r["kind"] for r in services.outbox] == ["feedback"]
    assert services.outbox[0]["payload"]["verdict"] == "correct"
    assert services.outbox[0]["payload"]["part_number"] == "BLT-M12X50"
    assert det.ids.pending.text.startswith("1 item waiting")
    tap(det.ids.wrong_btn)
    wait_for(lambda: not app.busy)
    tap(det.ids.photo_btn)
    wait_for(lambda: not app.busy)
    assert [r["kind"] for r in services.outbox] == ["feedback", "feedback", "photo"]
    assert services.outbox[1]["payload"]["verdict"] == "wrong"
    assert "3 items waiting" in det.ids.pending.text
    assert "Queued 1 photo" in app.status.text
    check_screen(app, "part_detail", shots)


def test_look_alikes_ask_for_a_measurement(env) -> None:
    app = env["app"]
    identify_photo(app, "bearing.jpg")
    res = app.screen("results")
    assert app.outcome.look_alike and res.ids.look_alike.opacity == 1
    assert "differ only in size" in res.ids.look_alike_text.text
    assert accessibility_problems(app.root) == []
    res.ids.measure.text = "47"
    tap(res.ids.measure_btn)
    assert app.outcome.best.part_number == "BRG-6204-2RS" and app.outcome.measured_mm == 47
    assert not app.outcome.look_alike and res.ids.look_alike.opacity == 0


def test_same_size_look_alikes_ask_for_a_close_up(env) -> None:
    """Same-size look-alikes (a label tells them apart): no measurement box, a close-up request instead."""
    from dataclasses import replace

    app = env["app"]
    identify_photo(app, "bolt.jpg")
    app.show_outcome(replace(app.outcome, look_alike=False, detail_look_alikes=["BLT-M12X50", "SNS-PRX-M18"]))
    pump(5)
    res = app.screen("results")
    assert app.sm.current == "results" and res.ids.look_alike.opacity == 0
    assert "BLT-M12X50 and SNS-PRX-M18 look alike" in res.ids.summary.text
    assert "close-up" in res.ids.summary.text
    assert accessibility_problems(app.root) == []


def test_spot_check_asks_which_part_and_records_the_answer(env) -> None:
    """An identification picked for a spot check asks which part it was: candidates in part-number order, "None of
    these" and "Skip"; the answer goes to the outbox once and the question goes away (also after a restart)."""
    from dataclasses import replace

    from kivy.uix.button import Button

    app, services = env["app"], env["services"]
    identify_photo(app, "bolt.jpg")
    res = app.screen("results")
    assert res.ids.spot_check.opacity == 0  # not picked: no question
    app.show_outcome(replace(app.outcome, spot_check=True, model_top=[m.part_number for m in app.outcome.matches]))
    pump(5)
    assert res.ids.spot_check.opacity == 1 and "which part did you photograph" in res.ids.spot_check_text.text
    buttons = [b for b in walk(res.ids.spot_buttons) if isinstance(b, Button)][::-1]  # children are reversed
    names = [b.text for b in buttons]
    assert names[-2:] == ["None of these", "Skip"]
    assert names[:-2] == [f"{m.part_number}\n{m.name}" for m in sorted(app.outcome.matches[:5],
                                                                      key=lambda m: m.part_number)]
    assert accessibility_problems(app.root) == []
    Window.screenshot(str(env["shots"] / f"{PROFILE.name}_results_spot_check.png"))
    before = len(services.outbox)
    answer = next(b for b in buttons if b.text.startswith(app.outcome.matches[1].part_number + "\n"))
    tap(answer)
    assert len(services.outbox) == before + 2  # the answer, and "this is the part" with the photo
    rec, fb = services.outbox[-2:]
    assert rec["kind"] == "usage" and rec["payload"]["event"] == "spot_check"
    assert fb["kind"] == "feedback" and fb["payload"]["spot_check"] and fb["blob_path"] == app.captures[0].path
    assert rec["payload"]["answer"] == app.outcome.matches[1].part_number and rec["payload"]["result"] == "answered"
    assert res.ids.spot_check.opacity == 0 and app.outcome.spot_check_done
    assert "recorded for the hub" in app.status.text
    saved = services.state.load()["outcome"]
    assert saved["spot_check"] and saved["spot_check_done"]  # a restart does not ask again


def test_no_confident_match_offers_browse_and_unknown_part(env) -> None:
    app, services = env["app"], env["services"]
    identify_photo(app, "mystery.jpg")
    res = app.screen("results")
    assert not app.outcome.confident and res.ids.no_match.opacity == 1
    before = len(services.outbox)
    res.ids.unknown_note.text = "purple housing, crane 4 spreader"
    tap(res.ids.unknown_btn)
    assert services.outbox[-1]["kind"] == "unknown_part" and len(services.outbox) == before + 1
    assert services.outbox[-1]["payload"]["note"] == "purple housing, crane 4 spreader"
    check_screen(app, "results", env["shots"])  # the no-match state (overwrites the match screenshot)
    tap(res.ids.browse_btn)
    assert app.sm.current == "catalogue"


def test_catalogue_search_and_filters(env) -> None:
    app = env["app"]
    app.go("catalogue")
    cat = app.screen("catalogue")
    wait_for(lambda: not cat.searching)  # the query runs off the UI thread
    assert len(cat.ids.list.data) == 6 and cat.ids.count.text == "6 parts" and cat.ids.more_btn.disabled
    cat.ids.query.text = "bearing"
    tap(cat.ids.search_btn)
    wait_for(lambda: not cat.searching)
    assert sorted(d["part_number"] for d in cat.ids.list.data) == ["BRG-6204-2RS", "BRG-6205-2RS"]
    cat.ids.query.text = ""
    tap(cat.ids.in_stock)
    wait_for(lambda: not cat.searching)
    assert cat.ids.in_stock.state == "down"
    # FLT-HYD-10U has 3 at Quay A; every preview part has stock somewhere except none -> all 6
    assert len(cat.ids.list.data) == 6
    cat.ids.category.text = "sensors"
    wait_for(lambda: not cat.searching)
    assert [d["part_number"] for d in cat.ids.list.data] == ["SNS-PRX-M18"]
    check_screen(app, "catalogue", env["shots"])
    pump(3)  # the RecycleView builds its row views on the next frames
    (row,) = cat.ids.list.layout_manager.children
    tap(row)
    assert app.sm.current == "part_detail" and app.current_part == "SNS-PRX-M18"
    tap(app.screen("part_detail").ids.back_btn)
    assert app.sm.current == "catalogue"
    cat.ids.category.text = "All categories"
    tap(cat.ids.in_stock)
    wait_for(lambda: not cat.searching)


def test_sync_status_enrol_and_sync_now(env) -> None:
    app, services = env["app"], env["services"]
    tap(app.nav_buttons["sync_status"])
    scr = app.screen("sync_status")
    assert scr.ids.sync_btn.disabled and "not enrolled" in scr.ids.status.text
    scr.ids.code.text = "not a code"
    tap(scr.ids.enrol_btn)
    wait_for(lambda: not app.busy)
    assert "not a partlens enrolment code" in app.status.text
    scr.ids.code.text = "partlens-enrol:hub.terminal.local?token=abc"
    tap(scr.ids.enrol_btn)
    wait_for(lambda: not app.busy)
    assert "hub.terminal.local" in scr.ids.status.text and not scr.ids.sync_btn.disabled
    pending = services.pending_uploads()
    assert f"Waiting to upload: {pending}" in scr.ids.status.text and pending > 0
    check_screen(app, "sync_status", env["shots"])
    tap(scr.ids.sync_btn)
    wait_for(lambda: not app.busy)
    assert services.pending_uploads() == 0 and "Waiting to upload: 0" in scr.ids.status.text
    assert "Sync finished" in app.status.text
    assert "Not uploaded, refused" not in scr.ids.status.text
    services.refused = 2  # the hub refused two records for good: the engineer is told, they are kept
    scr.refresh()
    assert "Not uploaded, refused: 2 (kept on this tablet" in scr.ids.status.text
    services.refused = 0
    assert "Storage free: 3.7 GB" in scr.ids.status.text and "LOW" not in scr.ids.status.text
    services.free_bytes = 40 * 1024**2  # a nearly full tablet: the engineer is told why syncs stop downloading
    scr.refresh()
    assert "Storage free: 40.0 MB - LOW: a sync keeps 100.0 MB for photos" in scr.ids.status.text
    check_screen(app, "sync_status", env["shots"])  # the longer text still fits and reads (sizes, contrast)
    services.free_bytes = 3_800 * 1024**2
    scr.refresh()
    services.sync_running = True  # the nightly sync is running: no second sync, and the screen says so
    scr.refresh()
    assert scr.ids.sync_btn.disabled and scr.ids.sync_btn.text == "Sync running..."
    assert scr.ids.status.text.startswith("A sync is running now")
    services.sync_running = False  # it finished: the screen looks again by itself
    wait_for(lambda: not scr.ids.sync_btn.disabled, timeout=3 * POLL_S)
    assert scr.ids.sync_btn.text == "Sync now" and "A sync is running" not in scr.ids.status.text


def test_pause_keeps_and_restores_captures_and_results(env) -> None:
    app, services = env["app"], env["services"]
    app.go("results")
    captures, outcome = list(app.captures), app.outcome
    assert captures and outcome is not None
    assert app.on_pause() is True
    saved = services.state.load()
    assert saved["screen"] == "results" and [c["capture_id"] for c in saved["captures"]] == \
        [c.capture_id for c in captures]
    # simulate the process being killed and restarted: the in-memory state is gone
    app.captures, app.outcome = [], None
    app.sm.current = "identify"
    app.on_resume()
    pump(10)
    assert [c.capture_id for c in app.captures] == [c.capture_id for c in captures]
    assert app.outcome.to_dict() == outcome.to_dict() and app.sm.current == "results"


# -- found by an audit of the app's ergonomics (23rd session) --------------------------------------------------
def test_crop_handles_stay_inside_the_photo_view(env) -> None:
    """Half a handle reached into the header and took taps meant for "Start over" (portrait), or left the window
    (landscape)."""
    app = env["app"]
    start_over(app)
    pick(app, "bolt.jpg")
    crop = app.screen("identify").ids.crop
    pump(5)
    for corner, h in crop.handles.items():
        assert crop.x - 0.5 <= h.x and h.right <= crop.right + 0.5, (corner, h.pos, crop.pos, crop.size)
        assert crop.y - 0.5 <= h.y and h.top <= crop.top + 0.5, (corner, h.pos, crop.pos, crop.size)
    header_btn = app.screen("identify").ids.clear_btn
    tap(header_btn)  # "Start over" is nobody else's tap
    assert app.captures == []


def test_the_answer_says_which_state_it_is_in(env) -> None:
    """"No confident match" looked like the look-alike prompt (the same yellow banner) and a confident match had no
    marker at all."""
    from edge_app.app import theme

    app = env["app"]
    identify_photo(app, "bolt.jpg")
    res = app.screen("results")
    texts = [w.text for w in walk(res.ids.grid) if isinstance(w, Label)]
    assert app.outcome.confident and any(t.startswith("CONFIDENT MATCH") for t in texts)
    identify_photo(app, "mystery.jpg")
    texts = [w.text for w in walk(res.ids.grid) if isinstance(w, Label)]
    assert not app.outcome.confident and not any("CONFIDENT MATCH" in t for t in texts)
    assert list(res.ids.no_match.bg_color) == list(theme.DANGER) != list(res.ids.look_alike.bg_color)


def test_back_closes_an_open_category_list_first(env) -> None:
    """Back with the category list open went to Identify and left the list over its buttons."""
    from kivy.uix.dropdown import DropDown

    app = env["app"]
    app.go("catalogue")
    cat = app.screen("catalogue")
    wait_for(lambda: not cat.searching)
    cat.ids.category.is_open = True
    pump(5)
    assert any(isinstance(w, DropDown) for w in Window.children)
    assert app._on_key(Window, 27) is True
    pump(5)
    assert not any(isinstance(w, DropDown) for w in Window.children) and app.sm.current == "catalogue"
    assert app._on_key(Window, 27) is True and app.sm.current == "identify"
