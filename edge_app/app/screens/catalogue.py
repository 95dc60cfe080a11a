"""Catalogue: browse and search the parts on the device, filter by stock and category."""
from __future__ import annotations

import logging
from typing import Any

from kivy.app import App
from kivy.metrics import dp
from kivy.uix.screenmanager import Screen

from ...errors import PartlensError
from .. import theme
from ..widgets import PLButton

log = logging.getLogger(__name__)
ALL = "All categories"


def stock_text(row: dict[str, Any]) -> str:
    inv = row.get("inventory") or []
    if not inv:
        return "stock unknown"
    total = sum(int(r.get("stock") or 0) for r in inv)
    return f"{total} in stock" if total else "out of stock"


class CatalogueScreen(Screen):
    results: list[dict[str, Any]] = []

    def refresh(self) -> None:
        app = App.get_running_app()
        try:
            cats = app.services.categories()
        except PartlensError as exc:
            app.notify(str(exc))
            cats = []
        self.ids.category.values = [ALL, *cats]
        if self.ids.category.text not in self.ids.category.values:
            self.ids.category.text = ALL
        self.search()

    def search(self) -> None:
        app = App.get_running_app()
        ids = self.ids
        cat = ids.category.text
        try:
            rows = app.services.search(text=ids.query.text.strip() or None,
                                       category=None if cat == ALL else cat,
                                       in_stock=True if ids.in_stock.state == "down" else None)
        except PartlensError as exc:
            app.notify(str(exc))
            rows = []
        self.results = rows
        ids.count.text = f"{len(rows)} part{'s' if len(rows) != 1 else ''}" + (" (first 50)" if len(rows) >= 50 else "")
        ids.list.clear_widgets()
        for row in rows:
            b = PLButton(text=f"{row['part_number']}  {row.get('name') or ''}  -  {stock_text(row)}",
                         bg_color=list(theme.SURFACE), fg_color=list(theme.TEXT), halign="left",
                         padding=(dp(12), dp(6)))
            b.part_number = row["part_number"]
            b.bind(on_release=lambda _b, pn=row["part_number"]: app.open_part(pn))
            ids.list.add_widget(b)
