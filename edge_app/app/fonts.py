"""A font for the catalogue's scripts: Kivy's bundled Roboto has no Chinese, Japanese or Korean glyphs, so such
part names showed as empty boxes on every screen (an audit). When the catalogue holds such names, the app draws
all text with a system font that has them (Android ships Noto Sans CJK; desktops name theirs), found by path, never
downloaded. Arabic and Hebrew need shaping and right-to-left order that Kivy's SDL2 text renderer lacks: not solved
here (the part number still shows)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

#: fonts with CJK glyphs, in order of preference: Android (7+, then older), common Linux desktops
CJK_FONTS = (
    "/system/fonts/NotoSansCJK-Regular.ttc",
    "/system/fonts/NotoSansSC-Regular.otf",
    "/system/fonts/DroidSansFallbackFull.ttf",
    "/system/fonts/DroidSansFallback.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
#: the environment variable naming a font file to use instead (any script it covers)
FONT_ENV = "PARTLENS_FONT"

#: Unicode ranges Roboto lacks and a CJK font covers: CJK punctuation, kana, ideographs, Hangul, full-width forms
CJK_RANGES = ((0x2E80, 0x2FDF), (0x3000, 0x30FF), (0x3100, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF), (0x20000, 0x2FA1F))


def has_cjk(texts: Iterable[str | None]) -> bool:
    """Whether any text holds a character of :data:`CJK_RANGES`."""
    for text in texts:
        for ch in text or "":
            o = ord(ch)
            if o >= 0x2E80 and any(lo <= o <= hi for lo, hi in CJK_RANGES):
                return True
    return False


def font_for(texts: Iterable[str | None], candidates: Iterable[str] = CJK_FONTS) -> str | None:
    """The font file to draw ``texts`` with instead of Roboto, or None (Roboto has every glyph they need, or
    no font here has them). ``$PARTLENS_FONT`` wins when set to an existing file."""
    chosen = os.environ.get(FONT_ENV)
    if chosen:
        if Path(chosen).is_file():
            return chosen
        log.warning("$%s=%s is not a file; ignored", FONT_ENV, chosen)
    if not has_cjk(texts):
        return None
    for path in candidates:
        if Path(path).is_file():
            return path
    log.warning("part names in Chinese, Japanese or Korean, but no font with those characters was found (%s); "
                "they show as boxes: set $%s to a font file that has them", ", ".join(candidates), FONT_ENV)
    return None


def use_font(path: str) -> None:
    """Draw every label with ``path`` (Kivy's default font name is re-registered, so .kv rules follow)."""
    from kivy.core.text import DEFAULT_FONT, LabelBase

    LabelBase.register(DEFAULT_FONT, fn_regular=path, fn_bold=path, fn_italic=path, fn_bolditalic=path)
    log.info("text is drawn with %s", path)
