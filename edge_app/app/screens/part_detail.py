"""Part detail: every image, inventory per site, and feedback that goes to the outbox."""
from __future__ import annotations

import logging
from typing import Any

from kivy.app import App
from kivy.metrics import mm
from kivy.uix.image import Image
from kivy.uix.screenmanager import Screen

from ...errors import PartlensError
from ...services import stock_count_text
from .. import theme
from ..widgets import PLLabel
from .results import short_time

QUESTION = "Is this the part you photographed?"
NO_PHOTO = ("No photo taken: take one on Identify first to confirm this part or to add your photo of it to the "
            "catalogue.")

log = logging.getLogger(__name__)


class PartDetailScreen(Screen):
    part: dict[str, Any] | None = None

    def refresh(self) -> None:
        app = App.get_running_app()
        ids = self.ids
        ids.images.clear_widgets()
        ids.inventory.clear_widgets()
        self.part = None
        self._answers(False)
        if not app.current_part:
            ids.title.text = "Part"
            ids.info.text = "No part selected."
            return
        try:
            part = app.services.part(app.current_part)
        except PartlensError as exc:  # e.g. a sync deleted it while the list showed it: nothing to answer on
            ids.title.text = app.current_part
            ids.info.text = str(exc)
            return
        self.part = part
        self._answers(True)
        ids.title.text = f"{part['part_number']}  {part.get('name') or ''}"
        # the title is cut to one line: the whole name and number are in the text below it
        facts = [f"{part['part_number']}: {part.get('name') or ''}", part.get("description") or "",
                 f"Category: {part.get('category') or '-'}    Maker: {part.get('manufacturer') or '-'}",
                 f"Size: {part['size_mm']:g} mm" if part.get("size_mm") else ""]
        ids.info.text = "\n".join(f for f in facts if f)
        side = mm(45) if self.width > self.height else mm(32)
        for im in part.get("images", []):
            src = im.get("file")
            if src:
                ids.images.add_widget(Image(source=src, fit_mode="contain", size_hint=(None, None),
                                            size=(side, side)))
        notes = []
        if part.get("damaged_images"):
            n = part["damaged_images"]
            notes.append(f"{n} image{'s' if n != 1 else ''} could not be shown (damaged file on this device).")
        if not ids.images.children and not notes:
            notes.append("No images on this device.")
        for text in notes:  # a note grows as its text wraps: the strip must follow (it was cut to 17 px)
            note = PLLabel(text=text, size_hint_x=None, width=mm(60), bg_color=list(theme.SURFACE))
            note.bind(height=lambda *_: self._fit_images())
            ids.images.add_widget(note)
        self._fit_images()
        hub = part.get("hub_time")
        for row in part.get("inventory", []):
            ids.inventory.add_widget(PLLabel(
                text=f"{row.get('site')}:  {stock_count_text(row.get('stock'))},  bin {row.get('bin') or '-'}"
                     f"  (as of {short_time(row.get('as_of') or hub)})", bg_color=list(theme.SURFACE)))
        if not part.get("inventory"):
            ids.inventory.add_widget(PLLabel(text="No stock records on this device."))
        self.update_pending()

    def _fit_images(self) -> None:
        strip = self.ids.images
        strip.height = max([c.height for c in strip.children] or [mm(20)])

    def _answers(self, part_shown: bool) -> None:
        """The feedback buttons work on a part that is shown and on the engineer's photos (identified or not);
        with no photo there is nothing to confirm or add, and a deleted part cannot be answered on."""
        app = App.get_running_app()
        photos = part_shown and bool(app.outcome or app.current_captures())
        for b in (self.ids.correct_btn, self.ids.wrong_btn, self.ids.photo_btn):
            b.disabled = not photos
        self.ids.question.text = QUESTION if photos or not part_shown else NO_PHOTO

    def update_pending(self) -> None:
        app = App.get_running_app()
        n = app.services.pending_uploads()
        self.ids.pending.text = f"{n} item{'s' if n != 1 else ''} waiting to upload to the hub."

    # Both write a full-resolution copy of the cropped photo (about a second for a 48 MP photo): off the UI
    # thread, behind the busy overlay, which also keeps a second tap from starting a second write.
    def feedback(self, verdict: str) -> None:
        app = App.get_running_app()
        if self.part is None:
            return
        outcome = app.outcome
        part_number = self.part["part_number"]
        captures = app.outcome_captures() if outcome else app.current_captures()
        what = "This is the part" if verdict == "correct" else "Not this one"

        def done(_uid: str) -> None:
            app.save_state()  # "this is the part" may have answered a spot check
            app.notify(f'Queued "{what}" for {part_number}.')
            self.update_pending()

        app.run_background("Saving...", lambda: app.services.send_feedback(part_number, verdict, captures, outcome),
                           done)

    def add_photo(self) -> None:
        app = App.get_running_app()
        if self.part is None:
            return
        part_number, captures = self.part["part_number"], app.current_captures()

        def done(ids: list[str]) -> None:
            app.notify(f"Queued {len(ids)} photo(s) of {part_number} for the catalogue.")
            self.update_pending()

        app.run_background("Saving the photo...", lambda: app.services.add_photos(part_number, captures), done)

    def back(self) -> None:
        app = App.get_running_app()
        app.go(getattr(self, "came_from", None) or ("results" if app.outcome else "catalogue"))
