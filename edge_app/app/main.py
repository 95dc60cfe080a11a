"""The partlens tablet app: identify a part from photos, see stock, give feedback, sync.

``PartlensApp(services)`` takes any object with the :class:`edge_app.services.DeviceServices`
methods; ``partlens app`` passes the real one. Slow calls run on a worker thread behind a busy
overlay; their results come back on the UI thread (``@mainthread``).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from kivy.app import App
from kivy.clock import mainthread
from kivy.core.window import Window
from kivy.lang import Builder
from kivy.metrics import dp
from kivy.properties import BooleanProperty, ListProperty, ObjectProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.screenmanager import NoTransition, ScreenManager

from ..errors import PartlensError
from ..services import Capture, IdentifyOutcome, error_message
from . import theme
from .widgets import BusyView, PLLabel, PLToggle, Panel  # noqa: F401  (registers the shared kv rules)

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SCREENS = ("identify", "results", "part_detail", "catalogue", "sync_status")
NAV = (("identify", "Identify"), ("results", "Results"), ("catalogue", "Parts"), ("sync_status", "Sync"))


class Root(BoxLayout):
    """Screens above, the status line and the navigation bar below."""


class PartlensApp(App):
    """The app. State worth keeping (captures, results, open part) survives pause and restart."""

    title = "partlens"
    captures = ListProperty([])
    selected = ObjectProperty(None, allownone=True)
    outcome = ObjectProperty(None, allownone=True)
    current_part = StringProperty("")
    busy = BooleanProperty(False)
    message = StringProperty("")

    def __init__(self, services: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.services = services
        self._busy_view: BusyView | None = None
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------------------ building
    def pick_font(self) -> None:
        """A font with the catalogue's characters (Chinese, Japanese, Korean names), when Roboto lacks them;
        called at start and after a sync (labels drawn later use it)."""
        from . import fonts

        try:
            texts = self.services.catalogue_texts()
        except Exception as exc:  # noqa: BLE001 - no catalogue yet, or a damaged one: Roboto, and the app goes on
            log.info("no catalogue texts to choose a font by (%s)", exc)
            return
        path = fonts.font_for(texts)
        if path and path != getattr(self, "_font", None):
            fonts.use_font(path)
            self._font = path

    def build(self) -> Root:
        from .screens.catalogue import CatalogueScreen
        from .screens.identify import IdentifyScreen
        from .screens.part_detail import PartDetailScreen
        from .screens.results import ResultsScreen
        from .screens.sync_status import SyncStatusScreen

        self.pick_font()
        for name in SCREENS:
            Builder.load_file(str(HERE / "screens" / f"{name}.kv"))
        Window.clearcolor = theme.BACKGROUND
        root = Root(orientation="vertical")
        self.sm = ScreenManager(transition=NoTransition())
        for cls, name in ((IdentifyScreen, "identify"), (ResultsScreen, "results"),
                          (PartDetailScreen, "part_detail"), (CatalogueScreen, "catalogue"),
                          (SyncStatusScreen, "sync_status")):
            self.sm.add_widget(cls(name=name))
        self.status = PLLabel(text="", bg_color=list(theme.SURFACE))
        self.status.bind(text=lambda *_: self._fit_status())
        self._fit_status()  # empty at start: no strip of status bar
        nav = Panel(size_hint_y=None, spacing=2, bg_color=list(theme.HEADER))
        self.nav_buttons: dict[str, PLToggle] = {}
        for name, label in NAV:
            b = PLToggle(text=label, group="nav", allow_no_selection=False)
            b.bind(on_release=lambda _b, n=name: self.go(n))
            self.nav_buttons[name] = b
            nav.add_widget(b)
        nav.height = max(b.height for b in self.nav_buttons.values())
        for b in self.nav_buttons.values():
            b.bind(height=lambda *_: setattr(nav, "height", max(x.height for x in self.nav_buttons.values())))
        root.add_widget(self.sm)
        root.add_widget(self.status)
        root.add_widget(nav)
        self.sm.bind(current=self._on_screen)
        Window.bind(on_keyboard=self._on_key)
        self.restore_state()
        self._recover_camera()
        self._on_screen(self.sm, self.sm.current)
        notes = getattr(self.services, "start_notes", None)
        if notes:  # e.g. a damaged database set aside at start (services.open_device_services)
            self.notify(" ".join(notes))
        return root

    def _recover_camera(self) -> None:
        """At start: photos the camera took while Android had stopped partlens join the current views."""
        recover = getattr(getattr(self.services, "captures", None), "recover_camera", None)
        if recover is None:
            return
        from .android import fetch_content_uri, is_android

        try:
            found = recover(fetch_content_uri) if is_android() else recover()
        except (PartlensError, OSError) as exc:
            log.warning("could not look for camera photos taken before the app stopped: %s", exc)
            return
        for cap in found:
            self.add_capture(cap)
        if found:
            self.notify(f"The photo taken before partlens stopped is back ({len(found)}).")

    def _fit_status(self) -> None:
        """Size the status line to its text now. Kivy renders label text on the next frame, so a line cleared and
        set again within one frame (``go`` then ``notify``) kept the cleared height 0 and its text spilled over the
        screen above: the texture is rendered here instead."""
        st = self.status
        st.texture_update()
        st.opacity = 1 if st.text else 0
        st.height = st.texture_size[1] + dp(12) if st.text else 0

    def _on_key(self, _window: Any, key: int, *_args: Any) -> bool:
        """Android's Back (Escape on a desktop): Part detail goes back where it was opened from, other screens to
        Identify; on Identify, Kivy's default (Android: the app goes to the background). Open dialogs close
        themselves first (Kivy gives them the key before the app); while work runs, Back waits for it."""
        if key != 27:
            return False
        if self.busy:
            return True
        from kivy.core.window import Window
        from kivy.uix.dropdown import DropDown

        open_lists = [w for w in Window.children if isinstance(w, DropDown)]
        for dropdown in open_lists:  # a category list left open over the next screen's buttons (an audit)
            dropdown.dismiss()
        if open_lists:
            return True
        current = self.sm.current
        if current == "part_detail":
            self.screen("part_detail").back()
            return True
        if current != "identify":
            self.go("identify")
            return True
        return False

    def screen(self, name: str) -> Any:
        return self.sm.get_screen(name)

    def _on_screen(self, _sm: Any, name: str) -> None:
        # Part detail lights the tab it was opened from (Parts or Results)
        origin = None
        if name == "part_detail":
            origin = getattr(self.screen(name), "came_from", None) or ("results" if self.outcome else None)
        for n, b in self.nav_buttons.items():
            b.state = "down" if n in (name, origin) else "normal"
        scr = self.screen(name)
        if hasattr(scr, "refresh"):
            scr.refresh()

    def go(self, name: str) -> None:
        """Show a screen (and remember it for a restart); the status line is cleared."""
        self.notify("")
        self.sm.current = name
        self.save_state()

    def notify(self, text: str) -> None:
        """One line in the status bar (errors and confirmations)."""
        if text:
            log.info("status: %s", text)
        self.message = text
        self.status.text = text

    # ------------------------------------------------------------------------------ captures
    def add_capture(self, cap: Capture) -> None:
        self.captures = [*self.captures, cap]
        self.selected = cap
        self._photos_changed()
        self.save_state()

    def remove_capture(self, cap: Capture) -> None:
        self.captures = [c for c in self.captures if c.capture_id != cap.capture_id]
        if self.selected is not None and self.selected.capture_id == cap.capture_id:
            self.selected = self.captures[-1] if self.captures else None
        self._photos_changed()
        self.save_state()

    def set_crop(self, cap: Capture, crop: tuple[float, float, float, float] | None) -> None:
        try:
            new = self.services.captures.set_crop(cap, crop)
        except PartlensError as exc:  # e.g. storage full: the old crop stays, said on the status line
            self.notify(str(exc))
            return
        self.captures = [new if c.capture_id == cap.capture_id else c for c in self.captures]
        if self.selected is not None and self.selected.capture_id == cap.capture_id:
            self.selected = new
        if new.crop != cap.crop:
            self._photos_changed()
        self.save_state()

    def clear_captures(self) -> None:
        self.captures = []
        self.selected = None
        self._photos_changed(say=False)
        self.save_state()

    def _photos_changed(self, say: bool = True) -> None:
        """Results belong to the photos they were identified from: once a view is added, removed or cropped again
        (or "Start over"), the old results go, so no answer on them ("this is the part", a spot check, "unknown
        part") can label photos the model never saw. Found by an audit: a new photo went to the hub as a
        confirmed picture of the part identified from the previous one."""
        if self.outcome is not None:
            self.outcome = None
            if say:
                self.notify("The photos changed: tap Identify for new results.")

    def outcome_captures(self) -> list[Capture]:
        """The views the current results were identified from (those still held), in their order."""
        if self.outcome is None:
            return []
        have = {c.capture_id: c for c in self.captures}
        return [have[i] for i in self.outcome.capture_ids if i in have]

    # ------------------------------------------------------------------------------ background work
    def run_background(self, message: str, fn: Callable[[], Any], done: Callable[[Any], None],
                       failed: Callable[[str], None] | None = None) -> bool:
        """Run ``fn`` off the UI thread behind the busy overlay; ``done(result)`` runs on the UI thread.

        Errors become a status-line message (and ``failed(message)`` runs on the UI thread, for a screen that
        shows the error too). Returns False if something is already running.
        """
        if self.busy:
            self.notify("Still working on the previous request.")
            return False
        self.busy = True
        self._busy_view = BusyView(message=message)
        self._busy_view.open()

        def work() -> None:
            try:
                result, error = fn(), None
            except Exception as exc:  # a bug too: keep the app alive, report it, log the trace
                result, error = None, error_message(exc)
            self._finish(done, result, error, failed)

        self._worker = threading.Thread(target=work, name="partlens-worker", daemon=True)
        self._worker.start()
        return True

    @mainthread
    def _finish(self, done: Callable[[Any], None], result: Any, error: str | None,
                failed: Callable[[str], None] | None = None) -> None:
        self.busy = False
        if self._busy_view is not None:
            self._busy_view.dismiss()
            self._busy_view = None
        if error is not None:
            self.notify(error)
            if failed is not None:
                failed(error)
            return
        done(result)

    def identify(self) -> bool:
        if not self.captures:
            self.notify("Take or pick a photo of the part first.")
            return False
        caps = list(self.captures)
        n = len(caps)
        return self.run_background(f"Identifying ({n} view{'s' if n > 1 else ''})...",
                                   lambda: self.services.identify(caps), self.show_outcome)

    def show_outcome(self, outcome: IdentifyOutcome) -> None:
        self.outcome = outcome
        already = self.sm.current == "results"
        self.go("results")
        if already:  # no screen change, so no refresh from _on_screen: show the new outcome anyway
            self.screen("results").refresh()
        self.notify("Best match: " + outcome.matches[0].part_number if outcome.confident and outcome.matches
                    else "No confident match.")

    def open_part(self, part_number: str) -> None:
        if self.sm.current != "part_detail":
            self.screen("part_detail").came_from = self.sm.current
        self.current_part = part_number
        self.go("part_detail")

    def current_captures(self) -> list[Capture]:
        return list(self.captures)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"screen": self.sm.current if hasattr(self, "sm") else "identify",
                "captures": [c.to_dict() for c in self.captures],
                "selected": self.selected.capture_id if self.selected else None,
                "outcome": self.outcome.to_dict() if self.outcome else None,
                "part": self.current_part,
                "part_came_from": getattr(self.screen("part_detail"), "came_from", None) if hasattr(self, "sm") else None}

    def save_state(self) -> None:
        store = getattr(self.services, "state", None)
        if store is None:
            return
        try:
            store.save(self.state_dict())
        except OSError as exc:
            log.warning("could not save app state: %s", exc)

    def restore_state(self) -> None:
        store = getattr(self.services, "state", None)
        data = store.load() if store is not None else {}
        if not data:
            return
        try:  # valid JSON of the wrong shape must not stop every start: set it aside, as unreadable JSON is
            caps = []
            for d in data.get("captures") or []:
                try:
                    caps.append(self.services.captures.get(d["capture_id"]))
                except (PartlensError, KeyError) as exc:
                    log.warning("dropping a saved capture: %s", exc)
            outcome = IdentifyOutcome.from_dict(data["outcome"]) if data.get("outcome") else None
            part = data.get("part") or ""
            if not isinstance(part, str):
                raise TypeError(f"part is {type(part).__name__}, not text")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            store.set_aside(f"{type(exc).__name__}: {exc}")
            return
        self.captures = caps
        self.selected = next((c for c in caps if c.capture_id == data.get("selected")), caps[-1] if caps else None)
        self.outcome = outcome
        self.current_part = part
        came_from = data.get("part_came_from")
        if came_from in SCREENS and came_from != "part_detail":  # Back goes where the part was opened from
            self.screen("part_detail").came_from = came_from
        screen = data.get("screen")
        if screen in SCREENS and not (screen == "part_detail" and not self.current_part) \
                and not (screen == "results" and self.outcome is None):
            self.sm.current = screen

    # ------------------------------------------------------------------------------ lifecycle
    def on_pause(self) -> bool:
        self.save_state()
        return True

    def on_resume(self) -> None:
        self.restore_state()
        scr = self.sm.current_screen
        if hasattr(scr, "refresh"):
            scr.refresh()

    def on_stop(self) -> None:
        self.save_state()


def run(services: Any, size: tuple[int, int] | None = None) -> None:
    """Start the app (blocks until the window closes)."""
    if size is not None:
        Window.size = size
    PartlensApp(services).run()


def run_and_close(services: Any, size: tuple[int, int] | None = None) -> None:
    """Prune old captures, run the app on ``services``, close them when the window closes or the app fails."""
    try:
        if hasattr(services, "prune_captures"):
            services.prune_captures()
            services.free_space_if_low()
        run(services, size)
    finally:
        services.close()


def device_main() -> None:
    """The APK entry point (``main.py``): app storage as the data folder, seeded on first start."""
    from ..services import open_device_services
    from .android import is_android

    if is_android():
        from android.storage import app_storage_path  # type: ignore

        data_dir = Path(app_storage_path()) / "partlens"
    else:
        from ..paths import device_dir

        data_dir = device_dir()
    from ..services import seed_from_starter

    starter = Path(__file__).resolve().parents[2] / "starter_bundle"
    seed_from_starter(data_dir, starter)
    if is_android():
        from ..runtime.android_backend import preload_java_classes
        from .android import arm_background_sync, request_notifications

        preload_java_classes()  # here, on the main thread: the worker thread's class loader cannot find them
        arm_background_sync(data_dir)
        request_notifications(data_dir)
    run_and_close(open_device_services(data_dir, starter=starter))
