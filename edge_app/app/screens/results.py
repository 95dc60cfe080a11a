"""Results: the top parts as cards (thumbnail, number, name, stock "as of", bin, confidence in words),
a clear "no confident match" state, a look-alike prompt for a measurement or another view, and the spot-check
question when this identification was picked for one (:mod:`edge_app.spotcheck`)."""
from __future__ import annotations

import logging
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.metrics import dp, mm
from kivy.properties import ObjectProperty
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.image import Image
from kivy.uix.screenmanager import Screen

from ...errors import PartlensError
from ...services import Match, local_time
from ...spotcheck import TOP_K
from .. import theme
from ..widgets import Panel, PLButton, PLLabel, relayout, secondary

log = logging.getLogger(__name__)


def short_time(iso: str | None) -> str:
    """A stock's "as of" time on the tablet's clock, as the Sync screen shows times ('2026-11-22T06:00:00+00:00'
    -> '2026-11-22 08:00' in UTC+2); a time the hub wrote without a zone is shown as written."""
    return local_time(iso)


def stock_line(m: Match, hub_time: str | None) -> str:
    if m.stock is None:
        return "Stock: not known at this site"
    where = f" at {m.site}" if m.site else ""
    as_of = short_time(m.as_of or hub_time)
    count = f"{m.stock:,}" if isinstance(m.stock, int) else str(m.stock)  # 12,345 read at a glance
    return f"Stock{where}: {count}  (as of {as_of})"


class MatchCard(ButtonBehavior, Panel):
    """One candidate; the whole card is the touch target that opens the part."""

    match = ObjectProperty(None)

    def __init__(self, match: Match, hub_time: str | None, rank: int, confident: bool = False, **kw: Any) -> None:
        super().__init__(orientation="horizontal", size_hint_y=None, padding=dp(8), spacing=dp(10),
                         bg_color=list(theme.SURFACE), **kw)
        self.match = match
        self.part_number = match.part_number
        side = mm(26) if Window.width >= mm(120) else mm(15)  # phones: leave the width to the text
        thumb = Image(source=match.thumbnail or "", fit_mode="contain", size_hint=(None, None),
                      size=(side, side), opacity=1 if match.thumbnail else 0)
        text = Panel(orientation="vertical", bg_color=list(theme.SURFACE), size_hint_y=None)
        lines = [
            PLLabel(text=f"{rank}. {match.part_number}", bold=True),
            PLLabel(text=match.name),
            # the answer partlens stands by is marked as such (a confident match had no marker, an audit)
            PLLabel(text=f"CONFIDENT MATCH: {match.words}", bold=True, bg_color=list(theme.GOOD),
                    color=list(theme.ON_GOOD)) if confident else PLLabel(text=f"Match: {match.words}", bold=True),
            PLLabel(text=stock_line(match, hub_time)),
            PLLabel(text=f"Bin: {match.bin or '-'}"),
        ]
        for lab in lines:
            text.add_widget(lab)
            lab.bind(height=lambda *_: self._fit(text, thumb))
        self.add_widget(thumb)
        self.add_widget(text)
        self._fit(text, thumb)

    def _fit(self, text: Panel, thumb: Image) -> None:
        text.height = sum(c.height for c in text.children)
        self.height = max(text.height, thumb.height, mm(theme.BUTTON_MM)) + dp(16)

    def on_release(self) -> None:
        App.get_running_app().open_part(self.part_number)


class ResultsScreen(Screen):
    def on_kv_post(self, base_widget: Any) -> None:
        # strong references: kv ids are weak, and banners are taken out of the tree when not needed
        self._keep = [self.ids.summary.__self__, self.ids.spot_check.__self__, self.ids.no_match.__self__,
                      self.ids.look_alike.__self__, self.ids.grid.__self__]

    #: identifications whose stock and bins were re-read after a sync (said in the summary)
    _freshened: set[str] = set()

    def refresh(self) -> None:
        app = App.get_running_app()
        out = app.outcome
        if out is not None:  # a sync since the identification: current stock and bins, removed parts left out
            fresh = app.services.freshen(out)
            if fresh is not out:
                app.outcome = out = fresh
                self._freshened = self._freshened | {str(out.identification_id)}
                app.save_state()
        grid = self.ids.grid
        grid.clear_widgets()
        ids = self.ids
        none = out is None
        changed = not none and (str(out.identification_id) in self._freshened or bool(out.removed_since))
        ids.summary.text = ("No results yet: identify a part first." if none else
                            f"{len(out.matches)} candidate parts from {len(out.capture_ids)} view(s)."
                            + ("  The catalogue changed (a sync) since this identification: stock and bins are "
                               "current" + (f", {', '.join(out.removed_since)} no longer in it"
                                            if out.removed_since else "")
                               + "; identify again for answers over it." if changed else "")
                            + (f"  Stock as of {short_time(out.hub_time)} (hub time)." if out.hub_time else "")
                            + (f"  {' and '.join(out.detail_look_alikes)} look alike: a label or marking tells "
                               "them apart, add a close-up of it as another view." if out.detail_look_alikes else ""))
        spot = not none and out.spot_check_pending
        self._place(not none and not out.confident, bool(not none and out.look_alike and out.matches), spot)
        if spot:
            self._spot_buttons(out.matches)
        if not none and out.look_alike and out.matches:
            group = out.matches[0].look_alike_group
            sizes = ", ".join(f"{m.part_number} {m.size_mm:g} mm" for m in out.matches[:4]
                              if m.size_mm and m.look_alike_group == group)
            ids.look_alike_text.text = (
                "These parts look alike and differ only in size (" + sizes + "). Measure the part (calipers "
                "or a ruler) and type the size in mm: partlens cannot read a ruler in the photo.")
        if not none:
            grid.cols = max(1, int(self.width // mm(90)))
            for i, m in enumerate(out.matches):
                grid.add_widget(MatchCard(m, out.hub_time, i + 1, confident=out.confident and i == 0))
        Clock.schedule_once(lambda _dt: relayout(self), 0)

    def on_size(self, *_: Any) -> None:
        """A size that changes the number of card columns rebuilds the cards; any other only lays them out again
        (an audit: every resize, and the first layout after opening, rebuilt every card: 150-600 ms of the UI
        thread each time)."""
        if self.manager is None or self.manager.current != self.name:
            return
        grid = self.ids.grid
        if grid.children and max(1, int(self.width // mm(90))) == grid.cols:
            Clock.schedule_once(lambda _dt: relayout(self), 0)
        else:
            self.refresh()

    def _place(self, no_match: bool, look_alike: bool, spot_check: bool = False) -> None:
        """Rebuild the column: summary, [spot check], [no-match banner], [look-alike banner], cards (hidden =
        removed)."""
        body, ids = self.ids.body, self.ids
        for w in (ids.summary, ids.spot_check, ids.no_match, ids.look_alike, ids.grid):
            if w.parent is not None:
                w.parent.remove_widget(w)
        ids.spot_check.opacity = 1 if spot_check else 0
        ids.no_match.opacity = 1 if no_match else 0
        ids.look_alike.opacity = 1 if look_alike else 0
        for w, show in ((ids.summary, True), (ids.spot_check, spot_check), (ids.no_match, no_match),
                        (ids.look_alike, look_alike), (ids.grid, True)):
            if show:
                body.add_widget(w)

    def _spot_buttons(self, matches: list[Match]) -> None:
        """One button per candidate, in part-number order (not the model's: rank order invites tapping the
        first), then "None of these" and "Skip"."""
        box = self.ids.spot_buttons
        box.clear_widgets()
        names = {m.part_number: m.name for m in matches[:TOP_K]}
        for pn in sorted(names):
            b = PLButton(text=pn if names[pn] in ("", pn) else f"{pn}\n{names[pn]}")
            b.bind(on_release=lambda _b, pn=pn: self.answer_spot_check(pn))
            box.add_widget(b)
        none = secondary(PLButton(text="None of these"))
        none.bind(on_release=lambda _b: self.answer_spot_check(None))
        skip = secondary(PLButton(text="Skip"))
        skip.bind(on_release=lambda _b: self.answer_spot_check(None, skipped=True))
        box.add_widget(none)
        box.add_widget(skip)

    # Both write a full-resolution copy of the cropped photo for the hub: off the UI thread, behind the busy
    # overlay (as "This is the part" does); a second tap meanwhile is refused by run_background.
    def answer_spot_check(self, part_number: str | None, *, skipped: bool = False) -> None:
        app = App.get_running_app()
        outcome, captures = app.outcome, app.outcome_captures()
        if outcome is None:
            return

        def done(_result: object) -> None:
            app.save_state()
            app.notify("Spot check skipped." if skipped else
                       f"Thanks: {part_number or 'none of these'} recorded for the hub.")
            self.refresh()

        app.run_background("Saving...", lambda: app.services.answer_spot_check(outcome, part_number, skipped=skipped,
                                                                               captures=captures), done)

    def apply_measurement(self) -> None:
        app = App.get_running_app()
        text = self.ids.measure.text.strip().replace(",", ".")
        try:
            size = float(text)
        except ValueError:
            app.notify(f"'{text}' is not a size: type the measured size in mm, e.g. 12.5")
            return
        try:
            app.outcome = app.services.refine_by_size(app.outcome, size)
        except PartlensError as exc:
            app.notify(str(exc))
            return
        best = app.outcome.best
        app.notify(f"Measured {size:g} mm: best fit {best.part_number}" if best else "No candidates.")
        app.save_state()
        self.refresh()

    def add_view(self) -> None:
        app = App.get_running_app()
        app.go("identify")
        app.notify("Add a view from another side (or of a stamped size), then tap Identify.")

    def record_unknown(self) -> None:
        app = App.get_running_app()
        outcome = app.outcome
        captures = app.outcome_captures() if outcome else app.current_captures()
        note = self.ids.unknown_note.text.strip()

        def done(uid: str) -> None:
            self.ids.unknown_note.text = ""
            app.notify(f"Unknown part recorded for the hub ({app.services.pending_uploads()} waiting to upload).")
            self.last_unknown = uid

        app.run_background("Saving...", lambda: app.services.record_unknown(captures, note, outcome), done)
