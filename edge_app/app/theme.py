"""High-contrast theme and sizing rules for gloved hands in sunlight (no Kivy import here).

Sizes are physical: touch targets in millimetres (``kivy.metrics.mm``), text in sp. The app is
checked (``tests/edge_app/test_app_ui.py``) at two display profiles whose dpi is stated below,
because a "12 mm" button is only 12 mm if the dpi Kivy uses is the panel's real dpi:

* ``tablet``: 1920x1200 on a 10.1 inch panel -> sqrt(1920^2 + 1200^2) / 10.1 = 224 dpi
  (Samsung Galaxy Tab Active Pro class rugged tablet).
* ``phone``: 720x1280 on a 5.0 inch panel -> 294 dpi.

Kivy's density is set to dpi / 160 (Android's definition), so ``dp`` and ``sp`` match Android's.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Minimum touch target (ISO 9241-9 / gloved use): both sides at least this many millimetres.
MIN_TOUCH_MM = 12.0
#: Comfortable button height used by the app (above the minimum so rounding never undercuts it).
BUTTON_MM = 13.0
#: Minimum text size anywhere in the app.
MIN_TEXT_SP = 18.0
TEXT_SP = 20.0
TITLE_SP = 26.0
#: WCAG 2 AAA contrast for normal text.
MIN_CONTRAST = 7.0

RGBA = tuple[float, float, float, float]


def hex_rgba(code: str, alpha: float = 1.0) -> RGBA:
    code = code.lstrip("#")
    return (int(code[0:2], 16) / 255.0, int(code[2:4], 16) / 255.0, int(code[4:6], 16) / 255.0, alpha)


# Light surfaces with near-black text; dark-blue buttons with white text. Every text/background
# pair used by the app is listed in PAIRS and checked for >= 7:1.
BACKGROUND = hex_rgba("#FFFFFF")
SURFACE = hex_rgba("#EDEFF2")        # cards, lists
TEXT = hex_rgba("#111111")
TEXT_MUTED = hex_rgba("#3A3A3A")     # secondary text, still > 7:1 on SURFACE
PRIMARY = hex_rgba("#0B3D91")        # primary buttons
ON_PRIMARY = hex_rgba("#FFFFFF")
SECONDARY = hex_rgba("#D5DAE1")      # secondary buttons
ON_SECONDARY = hex_rgba("#111111")
DISABLED = hex_rgba("#F4F4F4")       # paler than any enabled button (#C4C4C4 was 1.24:1 against SECONDARY)
ON_DISABLED = hex_rgba("#4A4A4A")
WARNING = hex_rgba("#FFD23F")        # look-alike / no-confident-match banners
ON_WARNING = hex_rgba("#111111")
DANGER = hex_rgba("#8A1010")
ON_DANGER = hex_rgba("#FFFFFF")
HEADER = hex_rgba("#111111")
ON_HEADER = hex_rgba("#FFFFFF")
GOOD = hex_rgba("#0E5A1E")           # "in stock" badge background
ON_GOOD = hex_rgba("#FFFFFF")
CROP_FRAME = hex_rgba("#FFD23F")

PAIRS = {
    "text": (TEXT, BACKGROUND), "text-on-surface": (TEXT, SURFACE), "muted": (TEXT_MUTED, SURFACE),
    "primary": (ON_PRIMARY, PRIMARY), "secondary": (ON_SECONDARY, SECONDARY), "disabled": (ON_DISABLED, DISABLED),
    "warning": (ON_WARNING, WARNING), "danger": (ON_DANGER, DANGER), "header": (ON_HEADER, HEADER),
    "good": (ON_GOOD, GOOD),
}


def _linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def relative_luminance(rgba: tuple[float, ...]) -> float:
    """WCAG 2 relative luminance of an sRGB colour (components 0..1)."""
    r, g, b = (_linear(float(x)) for x in rgba[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def blend(fg: tuple[float, ...], bg: tuple[float, ...]) -> RGBA:
    """``fg`` drawn with its alpha over an opaque ``bg``."""
    a = float(fg[3]) if len(fg) > 3 else 1.0
    return tuple(a * float(f) + (1 - a) * float(b) for f, b in zip(fg[:3], bg[:3])) + (1.0,)  # type: ignore[return-value]


def contrast_ratio(fg: tuple[float, ...], bg: tuple[float, ...]) -> float:
    """WCAG contrast ratio (1..21) of text colour ``fg`` (alpha blended) on opaque ``bg``."""
    l1 = relative_luminance(blend(fg, bg))
    l2 = relative_luminance(bg)
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


@dataclass(frozen=True)
class DisplayProfile:
    name: str
    size: tuple[int, int]
    dpi: float
    diagonal_in: float

    @property
    def density(self) -> float:
        return self.dpi / 160.0

    def env(self) -> dict[str, str]:
        """Environment for a Kivy process emulating this display (set before importing kivy)."""
        return {"KIVY_DPI": f"{self.dpi:g}", "KIVY_METRICS_DENSITY": f"{self.density:g}",
                "KIVY_METRICS_FONTSCALE": "1"}


PROFILES = {
    "tablet": DisplayProfile("tablet", (1920, 1200), 224.0, 10.1),
    "phone": DisplayProfile("phone", (720, 1280), 294.0, 5.0),
}
