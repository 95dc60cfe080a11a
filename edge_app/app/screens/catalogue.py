"""Catalogue: browse and search the parts on the device, filter by stock and category."""
from __future__ import annotations

import logging
import threading
from typing import Any

from kivy.app import App
from kivy.clock import mainthread
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.recycleview.views import RecycleDataViewBehavior
from kivy.uix.screenmanager import Screen

from ...errors import PartlensError
from ...services import error_message, stock_text
from ..widgets import PLButton

log = logging.getLogger(__name__)
ALL = "All categories"


#: parts per page of the list ("Show more" adds the next page)
PAGE = 50


class CatalogueRow(RecycleDataViewBehavior, PLButton):
    """One part in the list: a recycled view (the list builds only the rows on screen, not one widget per part:
    50 buttons took 130-440 ms of the UI thread on every page here)."""

    part_number = StringProperty("")

    def on_release(self) -> None:
        if self.part_number:
            App.get_running_app().open_part(self.part_number)


class CatalogueScreen(Screen):
    """The device's parts, a page at a time. The query runs off the UI thread (a 20,000-part catalogue took
    60-110 ms per query here); a newer search drops the answer of an older one still running. Rows are
    a RecycleView's data (``ids.list.data``: part_number and text per part)."""

    results: list[dict[str, Any]] = []
    total = 0
    searching = BooleanProperty(False)
    _generation = 0
    _list_filters: dict[str, Any] = {}

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
        # back from a part (or any screen) to the same filters and catalogue: the pages loaded and the place in
        # the list stay (an audit: every return threw them away and scrolled to the top)
        if self.results and not self.searching and self._filters() == self._list_filters \
                and self._list_version == self._catalogue_version():
            return
        self.search()

    _list_version: int | None = None

    def _catalogue_version(self) -> int | None:
        try:
            return App.get_running_app().services.catalogue.catalogue_version
        except Exception:  # noqa: BLE001 - no catalogue (yet): always search
            return None

    def _filters(self) -> dict[str, Any]:
        ids = self.ids
        cat = ids.category.text
        return {"text": ids.query.text.strip() or None, "category": None if cat == ALL else cat,
                "in_stock": True if ids.in_stock.state == "down" else None}

    def search(self, more: bool = False) -> None:
        """List the first page for the current filters, or (``more``) the next page under the current list."""
        app = App.get_running_app()
        self._generation += 1
        generation = self._generation
        # "Show more" continues the list on screen: with the filters it was made with, not text typed since
        filters = self._list_filters if more else self._filters()
        self._list_filters = filters
        offset = len(self.results) if more else 0
        if not more:
            self._list_version = self._catalogue_version()
        self.searching = True
        self.ids.more_btn.disabled = True

        def work() -> None:
            rows: list[dict[str, Any]] = []
            total, error = self.total if more else 0, None
            try:
                rows = app.services.search(**filters, limit=PAGE, offset=offset)
                if not more:
                    total = app.services.count_parts(**filters)
            except Exception as exc:  # a bug too: keep the app alive, say so (the trace is logged)
                error = error_message(exc)
            self._show(generation, more, rows, total, error)

        threading.Thread(target=work, name="partlens-search", daemon=True).start()

    @mainthread
    def _show(self, generation: int, more: bool, rows: list[dict[str, Any]], total: int, error: str | None) -> None:
        if generation != self._generation:  # the engineer changed the filters meanwhile
            return
        app = App.get_running_app()
        self.searching = False
        ids = self.ids
        if error is not None:
            app.notify(error)
        if not more:
            self.results = []
            ids.list.scroll_y = 1
        self.results = self.results + rows
        self.total = max(total, len(self.results))
        shown = len(self.results)
        ids.count.text = (f"{self.total} part{'s' if self.total != 1 else ''}"
                          + (f" (showing the first {shown})" if shown < self.total else ""))
        site = getattr(app.services, "site", None)
        data = [{"part_number": row["part_number"],
                 # part number, then stock, then the name: a long name is what gets cut (an audit: on a phone
                 # the middle cut took "out of stock here" and kept "(5 at other sites)")
                 "text": f"{row['part_number']}  ·  {stock_text(row.get('inventory') or [], site)}  ·  "
                         f"{row.get('name') or ''}"} for row in rows]
        ids.list.data = (ids.list.data if more else []) + data
        more_left = shown < self.total and error is None
        ids.more_btn.disabled = not more_left
        ids.more_btn.opacity = 1 if more_left else 0
        ids.more_btn.text = f"Show {min(PAGE, self.total - shown)} more" if more_left else ""
