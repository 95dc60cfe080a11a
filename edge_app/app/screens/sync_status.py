"""Sync status: bundle and catalogue versions, last sync, pending uploads, "Sync now", enrolment."""
from __future__ import annotations

import logging
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.uix.screenmanager import Screen

from ...errors import PartlensError
from ...services import local_time
from ...storage import mb
from .. import android

log = logging.getLogger(__name__)


#: how often the screen looks again while another sync holds the tablet's sync lock
POLL_S = 3.0


class SyncStatusScreen(Screen):
    _poll: Any = None

    def _poll_refresh(self, _dt: float) -> None:
        self._poll = None
        if self.manager is not None and self.manager.current == self.name:
            self.refresh()

    def refresh(self) -> None:
        app = App.get_running_app()
        try:
            st = app.services.sync_status()
        except PartlensError as exc:
            self.ids.status.text = f"Status unavailable: {exc}"
            return
        lines = [
            f"Hub: {st.hub or 'not enrolled'}" + (f" ({st.connection})" if st.connection else ""),
            f"Model bundle: {st.bundle_id or 'none'}" + (f" (version {st.bundle_version})" if st.bundle_version else ""),
            f"Catalogue version: {st.catalogue_version if st.catalogue_version is not None else 'none'}",
            f"Last sync: {local_time(st.last_sync) if st.last_sync else 'never'}",
            f"Waiting to upload: {st.pending_uploads}",
        ]
        if st.free_bytes is not None:
            lines.append(f"Storage free: {mb(st.free_bytes)}" + (
                f" - LOW: a sync keeps {mb(st.keep_free_bytes)} for photos and will not download until space is "
                "freed (delete other files; uploaded photos are pruned)" if st.storage_low else ""))
        if st.refused_uploads:
            lines.append(f"Not uploaded, refused: {st.refused_uploads} (kept on this tablet; show this screen to the "
                         "hub admin)" + (f". Latest reason: {st.refused_reason}" if st.refused_reason else ""))
        if st.nightly:
            lines.append(f"Nightly sync: {st.nightly}")
        if st.last_error:
            lines.append(f"Last error: {st.last_error}")
        if st.sync_running:
            lines.insert(0, "A sync is running now (the nightly sync, or an enrolment): this screen updates when "
                            "it has finished.")
        self.ids.status.text = "\n".join(lines)
        self.ids.sync_btn.disabled = not st.enrolled or st.sync_running
        self.ids.sync_btn.text = ("Sync running..." if st.sync_running else
                                  "Sync now" if st.enrolled else "Sync now (enrol first)")
        if self._poll is not None:
            self._poll.cancel()
        self._poll = Clock.schedule_once(self._poll_refresh, POLL_S) if st.sync_running else None
        qr = android.qr_available()
        self.ids.scan_btn.disabled = not qr
        self.ids.scan_btn.text = "Scan QR code" if qr else "Scan QR code (camera only)"

    def sync_now(self) -> None:
        app = App.get_running_app()

        def done(summary: Any) -> None:
            app.notify(f"Sync finished: {summary}")
            app.pick_font()  # names in a new script came with it
            self.refresh()

        # a failed sync: the status line says why, and so does this screen's "Last error" line at once
        app.run_background("Syncing with the hub...", app.services.sync_now, done, lambda _err: self.refresh())

    def enrol(self, payload: str | None = None) -> None:
        app = App.get_running_app()
        text = self.ids.code.text if payload is None else payload

        def done(hub: Any) -> None:
            self.ids.code.text = ""
            app.notify(f"Enrolled with {hub}.")
            self.refresh()

        app.run_background("Enrolling...", lambda: app.services.enrol(text), done)

    def scan_qr(self) -> None:
        app = App.get_running_app()
        store = app.services.captures

        def granted(ok: bool) -> None:
            if not ok:
                app.notify("The camera permission was refused: type or paste the code instead.")
                return
            _cid, path = store.new_path(".jpg")
            android.take_picture(str(path), self._scanned)  # called back on Kivy's thread

        android.request_camera(granted)

    def _scanned(self, path: str | None) -> None:
        app = App.get_running_app()
        code = android.decode_qr(path) if path else None
        if not code:
            app.notify("No QR code found in the photo: try again closer, or type the code.")
            return
        self.ids.code.text = code
        self.enrol(code)
