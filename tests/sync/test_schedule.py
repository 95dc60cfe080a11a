"""The background sync policy: charging + unmetered + nightly window."""
from __future__ import annotations

import datetime as dt

import pytest

from edge_app.errors import UsageError
from sync.schedule import SyncWindow, should_sync

NIGHT = SyncWindow.parse("22:30-04:00")


@pytest.mark.parametrize("hhmm, expected", [("22:29", False), ("22:30", True), ("23:59", True), ("00:00", True),
                                            ("03:59", True), ("04:00", False), ("12:00", False)])
def test_window_wrapping_midnight(hhmm, expected):
    h, m = map(int, hhmm.split(":"))
    assert should_sync(dt.datetime(2024, 5, 1, h, m), True, True, NIGHT) is expected


def test_needs_charging_and_unmetered():
    t = dt.datetime(2024, 5, 1, 2, 0)
    assert should_sync(t, True, True, SyncWindow())
    assert not should_sync(t, False, True, SyncWindow())
    assert not should_sync(t, True, False, SyncWindow())


def test_default_and_always_windows():
    assert SyncWindow().contains(dt.time(1, 0)) and not SyncWindow().contains(dt.time(5, 0))
    always = SyncWindow.parse("always")
    assert all(always.contains(dt.time(h, 0)) for h in range(24))
    aware = dt.datetime(2024, 5, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert should_sync(aware, True, True, SyncWindow())  # local wall-clock time of the given datetime


@pytest.mark.parametrize("bad", ["1-5", "25:00-01:00", "01:00", "ab:cd-01:00"])
def test_bad_window_is_an_error(bad):
    with pytest.raises(UsageError):
        SyncWindow.parse(bad)
