"""Identify: take or pick photos (several views of one part), crop each, then identify."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kivy.app import App
from kivy.metrics import dp, mm
from kivy.properties import ListProperty, ObjectProperty
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.modalview import ModalView
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget

from ...services import Capture
from .. import android, theme
from ..widgets import FilePicker, ImageButton, Panel, PLButton, secondary

log = logging.getLogger(__name__)
MIN_CROP = 0.1  # a crop side is at least 10 % of the image


class CropHandle(Widget):
    """A draggable corner (a 12 mm touch target): ``corner`` is 'tl', 'tr', 'bl' or 'br'."""

    corner = ObjectProperty("tl")


class CropView(FloatLayout):
    """The photo with a crop rectangle; drag the four corner handles to cut the photo to the part."""

    crop = ListProperty([0.0, 0.0, 1.0, 1.0])  # left, top, right, bottom in 0..1 (top-left origin)
    frame = ListProperty([0, 0, 0, 0])  # crop rectangle in window coordinates (x, y, w, h), for drawing
    source = ObjectProperty("", allownone=True)
    on_crop_done = ObjectProperty(None, allownone=True)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.handles = {c: CropHandle(corner=c, size_hint=(None, None), size=(mm(theme.BUTTON_MM),) * 2)
                        for c in ("tl", "tr", "bl", "br")}
        for h in self.handles.values():
            self.add_widget(h)
        self._drag: str | None = None
        self.bind(pos=self._layout, size=self._layout, crop=self._layout, source=self._layout)

    def image_rect(self) -> tuple[float, float, float, float]:
        img = self.ids.photo
        iw, ih = img.norm_image_size
        return (img.center_x - iw / 2, img.center_y - ih / 2, iw, ih)

    def corner_pos(self, corner: str) -> tuple[float, float]:
        x, y, w, h = self.image_rect()
        l, t, r, b = self.crop
        cx = x + (l if corner[1] == "l" else r) * w
        cy = y + (1 - (t if corner[0] == "t" else b)) * h
        return cx, cy

    def _layout(self, *_: Any) -> None:
        if "photo" not in self.ids:
            return
        for c, h in self.handles.items():
            cx, cy = self.corner_pos(c)
            # centred on its corner, but never past the view's edge: half a handle reached into the header and
            # took taps meant for "Start over", or left the window in landscape (an audit)
            h.x = min(max(cx - h.width / 2, self.x), self.right - h.width)
            h.y = min(max(cy - h.height / 2, self.y), self.top - h.height)
            h.opacity = 1 if self.source else 0
            h.disabled = not self.source
        x0, y0 = self.corner_pos("bl")
        x1, y1 = self.corner_pos("tr")
        self.frame = [x0, y0, x1 - x0, y1 - y0]

    def on_touch_down(self, touch: Any) -> bool:
        if self.source and self.collide_point(*touch.pos):
            for c, h in self.handles.items():
                if h.collide_point(*touch.pos):
                    self._drag = c
                    touch.grab(self)
                    return True
        return super().on_touch_down(touch)

    def on_touch_move(self, touch: Any) -> bool:
        if touch.grab_current is self and self._drag:
            x, y, w, h = self.image_rect()
            if w <= 0 or h <= 0:
                return True
            u = min(max((touch.x - x) / w, 0.0), 1.0)
            v = min(max(1 - (touch.y - y) / h, 0.0), 1.0)
            l, t, r, b = self.crop
            if self._drag[1] == "l":
                l = min(u, r - MIN_CROP)
            else:
                r = max(u, l + MIN_CROP)
            if self._drag[0] == "t":
                t = min(v, b - MIN_CROP)
            else:
                b = max(v, t + MIN_CROP)
            self.crop = [l, t, r, b]
            return True
        return super().on_touch_move(touch)

    def on_touch_up(self, touch: Any) -> bool:
        if touch.grab_current is self:
            touch.ungrab(self)
            self._drag = None
            if self.on_crop_done:
                self.on_crop_done(tuple(self.crop))
            return True
        return super().on_touch_up(touch)


class IdentifyScreen(Screen):
    """Photos of ONE part: the selected view with its crop, the list of views, and the actions."""

    def on_kv_post(self, base_widget: Any) -> None:
        self.ids.crop.on_crop_done = self._crop_done
        app = App.get_running_app()
        if app is not None:
            app.bind(captures=lambda *_: self.refresh(), selected=lambda *_: self.refresh())

    def refresh(self) -> None:
        app = App.get_running_app()
        caps = list(app.captures)
        sel = app.selected
        crop = self.ids.crop
        store = app.services.captures
        crop.source = store.view_path(sel) if sel else ""  # upright, as the crop box is (see view_path)
        crop.crop = list(sel.crop) if sel and sel.crop else [0.0, 0.0, 1.0, 1.0]
        self.ids.hint.text = ("Drag the yellow corners to cut the photo to the part. Add more views from other "
                              "sides, then tap Identify." if caps else
                              "Take a photo of the broken part, or pick one from a folder.")
        cam = android.camera_available()
        self.ids.camera_btn.disabled = not cam
        if not cam and not caps:
            self.ids.hint.text += " (No camera on this computer.)"
        self.ids.identify_btn.disabled = not caps
        self.ids.identify_btn.text = f"Identify ({len(caps)} view{'s' if len(caps) != 1 else ''})"
        self.ids.reset_crop_btn.disabled = not (sel and sel.crop)
        self.ids.remove_btn.disabled = sel is None
        self.ids.clear_btn.disabled = not caps
        views = self.ids.views
        views.clear_widgets()
        for c in caps:
            chosen = sel is not None and c.capture_id == sel.capture_id
            frame = Panel(size_hint=(None, None), size=(mm(16), mm(16)), padding=dp(4),
                          bg_color=list(theme.PRIMARY if chosen else theme.SURFACE))
            thumb = ImageButton(source=store.view_path(c), fit_mode="contain")
            thumb.bind(on_release=lambda _w, c=c: setattr(app, "selected", c))
            thumb.capture_id = c.capture_id
            frame.add_widget(thumb)
            views.add_widget(frame)

    def remove_selected(self) -> None:
        app = App.get_running_app()
        if app.selected is not None:
            app.remove_capture(app.selected)

    def _crop_done(self, crop: tuple[float, float, float, float]) -> None:
        app = App.get_running_app()
        if app.selected is None:
            return
        full = all(abs(a - b) < 1e-6 for a, b in zip(crop, (0, 0, 1, 1)))
        app.set_crop(app.selected, None if full else crop)

    def reset_crop(self) -> None:
        app = App.get_running_app()
        if app.selected is not None:
            app.set_crop(app.selected, None)

    # ------------------------------------------------------------------ sources of photos
    def take_photo(self) -> None:
        app = App.get_running_app()
        store = app.services.captures

        def granted(ok: bool) -> None:
            if not ok:
                app.notify("The camera permission was refused: allow it in Settings, or pick a file.")
                return
            # remembered on disk: if Android stops partlens while the camera is open, the next start adopts the photo
            cid, path = store.camera_path(".jpg")
            android.take_picture(str(path), lambda p: self._camera_done(cid, p),
                                 on_uri=lambda uri: store.remember_camera_uri(cid, uri))

        android.request_camera(granted)

    def _camera_done(self, capture_id: str, path: str | None) -> None:
        """On Kivy's thread (android.take_picture hands over); the photo is checked and stored off it."""
        app = App.get_running_app()
        if path is None:
            app.notify("No photo was taken.")
            return
        app.run_background("Storing the photo...", lambda: app.services.captures.adopt(capture_id, path),
                           app.add_capture)

    def pick_file(self, start: str | None = None) -> ModalView:
        """Desktop: a big-button file browser in a modal; the chosen image is copied into the capture store."""
        view = ModalView(size_hint=(0.92, 0.92), auto_dismiss=True, background="",
                         background_color=list(theme.BACKGROUND))
        panel = Panel(orientation="vertical", padding=dp(10), spacing=dp(8))
        picker = FilePicker(start or self.last_folder(), on_pick=lambda p: self._picked(view, p))
        close = secondary(PLButton(text="Cancel"))
        close.bind(on_release=lambda *_: view.dismiss())
        panel.add_widget(picker)
        panel.add_widget(close)
        view.add_widget(panel)
        view.picker = picker
        view.open()
        self.picker_view = view
        return view

    #: where the file picker opens first (``partlens app`` leaves it at the home folder)
    start_folder: str | None = None

    def last_folder(self) -> str:
        return getattr(self, "_last_folder", None) or self.start_folder or str(Path.home())

    def _picked(self, view: ModalView, path: str) -> None:
        """The picker closes at once and the file is checked and copied off the UI thread (an audit: a 48 MP
        pick froze the screen for seconds, and a refused file's reason stayed hidden behind the picker)."""
        app = App.get_running_app()
        self._last_folder = str(Path(path).parent)
        view.dismiss()

        def added(cap: Capture) -> None:
            had_results = app.outcome is not None
            app.add_capture(cap)
            app.notify(f"Added view {len(app.captures)}: {Path(path).name}"
                       + ("; tap Identify for new results" if had_results else ""))

        app.run_background(f"Adding {Path(path).name}...", lambda: app.services.captures.add_file(path), added)
