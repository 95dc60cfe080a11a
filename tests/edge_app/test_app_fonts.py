"""A font for Chinese, Japanese and Korean part names (Kivy's Roboto draws them as empty boxes; an audit)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_app.app import fonts


def test_a_cjk_font_is_chosen_only_for_a_catalogue_that_needs_one(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv(fonts.FONT_ENV, raising=False)
    assert fonts.has_cjk(["液压缸密封件套装", None]) and fonts.has_cjk(["ボルト"]) and fonts.has_cjk(["볼트"])
    assert not fonts.has_cjk(["Dichtung Ø20", "подшипник", "Sjökabel", "", None])
    cjk = tmp_path / "NotoSansCJK-Regular.ttc"
    candidates = [str(tmp_path / "missing.ttc"), str(cjk)]
    assert fonts.font_for(["Hex bolt M8"], candidates) is None  # Roboto has every glyph: left alone
    assert fonts.font_for(["液压缸"], candidates) is None and "show as boxes" in caplog.text  # none here: said
    cjk.write_bytes(b"font")
    assert fonts.font_for(["Hex bolt M8", "液压缸"], candidates) == str(cjk)
    own = tmp_path / "site.ttf"
    own.write_bytes(b"font")
    monkeypatch.setenv(fonts.FONT_ENV, str(own))  # the site's choice wins, for any script
    assert fonts.font_for(["Hex bolt M8"], candidates) == str(own)
    monkeypatch.setenv(fonts.FONT_ENV, str(tmp_path / "nope.ttf"))
    assert fonts.font_for(["液压缸"], candidates) == str(cjk)


def test_the_chosen_font_becomes_the_default_for_every_label(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("kivy")
    monkeypatch.setenv("KIVY_HOME", str(tmp_path / "kivy"))
    from kivy.core.text import DEFAULT_FONT, LabelBase

    import kivy

    before = dict(LabelBase._fonts[DEFAULT_FONT]) if isinstance(LabelBase._fonts.get(DEFAULT_FONT), dict) else \
        LabelBase._fonts.get(DEFAULT_FONT)
    font = tmp_path / "Fallback.ttf"
    shutil.copy(Path(kivy.__file__).parent / "data" / "fonts" / "DejaVuSans.ttf", font)
    try:
        fonts.use_font(str(font))
        assert str(font) in str(LabelBase._fonts[DEFAULT_FONT])
    finally:
        LabelBase._fonts[DEFAULT_FONT] = before
