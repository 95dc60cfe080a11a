"""When a device may sync: on charge, on an unmetered network, inside a nightly window.

On Android an exact alarm wakes a python-for-android foreground service at the next attempt
(sync/background.py, docs/sync.md); this pure function decides *whether to proceed* when woken:
docked (charging), on an unmetered network, inside the nightly window.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from edge_app.errors import UsageError

_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class SyncWindow:
    """A daily local-time window ``[start, end)``; ``end <= start`` means it wraps past midnight."""

    start: _dt.time = _dt.time(1, 0)
    end: _dt.time = _dt.time(5, 0)

    @classmethod
    def parse(cls, text: str) -> "SyncWindow":
        """``"01:00-05:00"`` or ``"22:30-04:00"``; ``"always"`` for a 24 h window."""
        if text.strip().lower() == "always":
            return cls(_dt.time(0, 0), _dt.time(0, 0))
        try:
            a, b = (s.strip() for s in text.split("-"))
            ma, mb = _HHMM.match(a), _HHMM.match(b)
            if not (ma and mb):
                raise ValueError
        except ValueError:
            raise UsageError(f"sync window must look like HH:MM-HH:MM (or 'always'), got {text!r}") from None
        return cls(_dt.time(int(ma[1]), int(ma[2])), _dt.time(int(mb[1]), int(mb[2])))

    def contains(self, t: _dt.time) -> bool:
        if self.start == self.end:
            return True  # 24 hours
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def should_sync(now: _dt.datetime, charging: bool, unmetered: bool, window: SyncWindow = SyncWindow()) -> bool:
    """True when a background sync may run now: charging, unmetered, and inside ``window`` (local time)."""
    return bool(charging) and bool(unmetered) and window.contains(now.timetz().replace(tzinfo=None))
