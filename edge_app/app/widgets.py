"""Shared themed widgets: big buttons, wrapping labels on known backgrounds, banners, busy overlay.

Every widget that draws text carries (or sits inside a widget that carries) an opaque
``bg_color``; the UI tests use it to compute the real text/background contrast.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from kivy.animation import Animation
from kivy.lang import Builder
from kivy.metrics import dp, mm, sp
from kivy.properties import BooleanProperty, ListProperty, NumericProperty, ObjectProperty, StringProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.image import Image
from kivy.uix.label import Label
from kivy.uix.modalview import ModalView
from kivy.uix.spinner import Spinner, SpinnerOption
from kivy.uix.textinput import TextInput
from kivy.uix.togglebutton import ToggleButton

from ..imageio import IMAGE_SUFFIXES
from . import theme

log = logging.getLogger(__name__)

KV = """
#:import theme edge_app.app.theme
#:import mm kivy.metrics.mm
#:import dp kivy.metrics.dp
#:import sp kivy.metrics.sp

<Filled>:
    canvas.before:
        Color:
            rgba: self.bg_color
        Rectangle:
            pos: self.pos
            size: self.size

<PLLabel>:
    color: theme.TEXT
    font_size: sp(theme.TEXT_SP)
    size_hint_y: None
    text_size: self.width - dp(16), None
    height: self.texture_size[1] + dp(12)
    padding: dp(8), dp(6)
    halign: "left"
    valign: "middle"

<PLTitle@PLLabel>:
    font_size: sp(theme.TITLE_SP)
    bold: True

<PLButton>:
    background_normal: ""
    background_down: ""
    background_disabled_normal: ""
    background_disabled_down: ""
    background_color: self.bg_color if not self.disabled else theme.DISABLED
    color: self.fg_color
    disabled_color: theme.ON_DISABLED
    font_size: sp(theme.TEXT_SP)
    bold: True
    halign: "center"
    valign: "middle"
    text_size: self.width - dp(12), None
    size_hint_y: None
    height: max(mm(theme.BUTTON_MM), self.texture_size[1] + dp(16))
    size_hint_min_x: mm(theme.BUTTON_MM)

<PLToggle>:
    background_normal: ""
    background_down: ""
    background_color: theme.PRIMARY if self.state == "down" else theme.SECONDARY
    bg_color: theme.PRIMARY if self.state == "down" else theme.SECONDARY
    color: theme.ON_PRIMARY if self.state == "down" else theme.ON_SECONDARY
    font_size: sp(theme.TEXT_SP)
    bold: True
    halign: "center"
    valign: "middle"
    text_size: self.width - dp(12), None
    size_hint_y: None
    height: max(mm(theme.BUTTON_MM), self.texture_size[1] + dp(16))
    size_hint_min_x: mm(theme.BUTTON_MM)

<PLSpinner>:
    background_normal: ""
    background_down: ""
    background_color: theme.SECONDARY
    bg_color: theme.SECONDARY
    color: theme.ON_SECONDARY
    font_size: sp(theme.TEXT_SP)
    bold: True
    text_size: self.width - dp(12), None
    halign: "center"
    size_hint_y: None
    height: mm(theme.BUTTON_MM)
    size_hint_min_x: mm(theme.BUTTON_MM)
    option_cls: "PLSpinnerOption"

<PLSpinnerOption>:
    background_normal: ""
    background_color: theme.BACKGROUND
    bg_color: theme.BACKGROUND
    color: theme.TEXT
    font_size: sp(theme.TEXT_SP)
    size_hint_y: None
    height: mm(theme.BUTTON_MM)

<PLTextInput>:
    background_normal: ""
    background_active: ""
    background_color: theme.BACKGROUND
    bg_color: theme.BACKGROUND
    foreground_color: theme.TEXT
    hint_text_color: theme.TEXT_MUTED
    cursor_color: theme.TEXT
    font_size: sp(theme.TEXT_SP)
    size_hint_y: None
    height: mm(theme.BUTTON_MM)
    padding: dp(10), max(dp(4), (mm(theme.BUTTON_MM) - self.line_height) / 2) if not self.multiline else dp(10)
    canvas.after:
        Color:
            rgba: theme.TEXT
        Line:
            rectangle: self.x, self.y, self.width, self.height
            width: dp(1.5)

<Banner>:
    orientation: "vertical"
    size_hint_y: None
    height: self.minimum_height
    padding: dp(8)
    spacing: dp(8)
    bg_color: theme.WARNING

<Header>:
    size_hint_y: None
    height: mm(theme.BUTTON_MM) + dp(8)
    padding: dp(4)
    spacing: dp(8)
    bg_color: theme.HEADER

<BusyView>:
    auto_dismiss: False
    size_hint: 0.8, None
    height: mm(45)
    background: ""
    background_color: 0, 0, 0, 0.6
    overlay_color: 0, 0, 0, 0.55
    BoxLayout:
        orientation: "vertical"
        padding: dp(16)
        spacing: dp(12)
        canvas.before:
            Color:
                rgba: theme.BACKGROUND
            Rectangle:
                pos: self.pos
                size: self.size
        PLLabel:
            id: message
            text: root.message
            font_size: sp(theme.TITLE_SP)
            halign: "center"
        ProgressBar:
            id: bar
            max: 100
            value: root.progress
            size_hint_y: None
            height: mm(6)
"""


class Filled:
    """Mixin: draws an opaque ``bg_color`` behind the widget."""


class PLLabel(Filled, Label):
    bg_color = ListProperty([0, 0, 0, 0])


class PLButton(Button):
    """The app's button: >= 13 mm high, bold 20 sp text, flat high-contrast colours."""

    bg_color = ListProperty(list(theme.PRIMARY))
    fg_color = ListProperty(list(theme.ON_PRIMARY))


def secondary(button: PLButton) -> PLButton:
    button.bg_color = list(theme.SECONDARY)
    button.fg_color = list(theme.ON_SECONDARY)
    return button


class PLToggle(ToggleButton):
    bg_color = ListProperty(list(theme.SECONDARY))


class PLSpinner(Spinner):
    bg_color = ListProperty(list(theme.SECONDARY))


class PLSpinnerOption(SpinnerOption):
    bg_color = ListProperty(list(theme.BACKGROUND))


class PLTextInput(TextInput):
    bg_color = ListProperty(list(theme.BACKGROUND))


class Banner(Filled, BoxLayout):
    bg_color = ListProperty(list(theme.WARNING))


class Header(Filled, BoxLayout):
    bg_color = ListProperty(list(theme.HEADER))


class Panel(Filled, BoxLayout):
    """A BoxLayout with an opaque background (cards, lists, screens)."""

    bg_color = ListProperty(list(theme.BACKGROUND))


class ImageButton(ButtonBehavior, Image):
    """A tappable thumbnail (at least 12 mm square)."""


class BusyView(ModalView):
    """Modal "working..." overlay with an indeterminate progress bar."""

    message = StringProperty("Working...")
    progress = NumericProperty(0)
    _anim_duration = 0  # appear and vanish at once: a fading overlay looks like a hang

    def on_open(self) -> None:
        self.progress = 0
        self._anim = Animation(progress=100, duration=1.2) + Animation(progress=0, duration=0)
        self._anim.repeat = True
        self._anim.start(self)

    def on_dismiss(self) -> None:
        Animation.cancel_all(self)


class FilePicker(BoxLayout):
    """A big-target file browser for desktops: folders and images as full-width buttons.

    (Kivy's FileChooser rows are ~5 mm high: unusable with gloves.)
    """

    path = StringProperty("")
    on_pick = ObjectProperty(None, allownone=True)
    show_hidden = BooleanProperty(False)

    def __init__(self, start: str | os.PathLike[str], on_pick: Callable[[str], None], **kw) -> None:
        super().__init__(orientation="vertical", spacing=dp(6), **kw)
        from kivy.uix.gridlayout import GridLayout
        from kivy.uix.scrollview import ScrollView

        self.on_pick = on_pick
        self.title = PLLabel(bg_color=list(theme.SURFACE), shorten=True)
        self.up = secondary(PLButton(text="Up one folder", size_hint_x=1))
        self.up.bind(on_release=lambda *_: self.open(str(Path(self.path).parent)))
        self.grid = GridLayout(cols=1, spacing=dp(6), size_hint_y=None)
        self.grid.bind(minimum_height=self.grid.setter("height"))
        self.scroll = ScrollView(do_scroll_x=False, bar_width=dp(10))
        self.scroll.add_widget(self.grid)
        for w in (self.title, self.up, self.scroll):
            self.add_widget(w)
        self.open(str(start))

    def entries(self) -> list[tuple[str, Path]]:
        here = Path(self.path)
        out: list[tuple[str, Path]] = []
        try:
            items = sorted(here.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
        except OSError as exc:
            log.warning("cannot list %s: %s", here, exc)
            return out
        for p in items:
            if p.name.startswith(".") and not self.show_hidden:
                continue
            if p.is_dir():
                out.append(("dir", p))
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                out.append(("image", p))
        return out

    def open(self, folder: str) -> None:
        self.path = folder
        self.title.text = folder
        self.grid.clear_widgets()
        for kind, p in self.entries():
            if kind == "dir":
                b = secondary(PLButton(text=f"[folder] {p.name}"))
                b.bind(on_release=lambda _b, p=p: self.open(str(p)))
            else:
                b = PLButton(text=p.name)
                b.bind(on_release=lambda _b, p=p: self.on_pick and self.on_pick(str(p)))
            b.picker_path = str(p)
            self.grid.add_widget(b)


def relayout(widget, passes: int = 2) -> None:
    """Lay out every layout under ``widget`` top-down now (after banners appear or vanish)."""
    from kivy.uix.layout import Layout

    def walk(w):
        if isinstance(w, Layout):
            w.do_layout()
        for c in list(w.children):
            walk(c)

    for _ in range(passes):
        walk(widget)


def min_touch_px() -> float:
    return mm(theme.MIN_TOUCH_MM)


def min_text_px() -> float:
    return sp(theme.MIN_TEXT_SP)


Builder.load_string(KV)
