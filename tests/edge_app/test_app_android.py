"""The Android-only helpers against fake `android.permissions` and `plyer` modules.

They cannot run here for real; the fakes assert what the real APIs need: the CAMERA permission
requested with a callback taking (permissions, grants), and plyer's camera writing straight to
the path the capture store chose (so a photo survives the app being killed).
"""
from __future__ import annotations

import sys
import types

import pytest

from edge_app.app import android


@pytest.fixture
def on_android(monkeypatch):
    monkeypatch.setenv("ANDROID_ARGUMENT", "/data/app")
    state = {"granted": False, "requested": []}

    perms = types.ModuleType("android.permissions")

    class Permission:
        CAMERA = "android.permission.CAMERA"

    def check_permission(p):
        return state["granted"]

    def request_permissions(ps, callback):
        state["requested"].append(list(ps))
        callback(ps, [state["grant_answer"]] * len(ps))

    perms.Permission, perms.check_permission, perms.request_permissions = Permission, check_permission, \
        request_permissions
    pkg = types.ModuleType("android")
    pkg.permissions = perms
    monkeypatch.setitem(sys.modules, "android", pkg)
    monkeypatch.setitem(sys.modules, "android.permissions", perms)

    plyer = types.ModuleType("plyer")

    class Camera:
        def take_picture(self, filename, on_complete):
            state["camera_path"] = filename
            if state.get("camera_writes", True):
                with open(filename, "wb") as fh:
                    fh.write(b"\xff\xd8 fake jpeg")
            on_complete(filename)

    plyer.camera = Camera()
    monkeypatch.setitem(sys.modules, "plyer", plyer)
    return state


def test_desktop_reports_no_camera(monkeypatch) -> None:
    monkeypatch.delenv("ANDROID_ARGUMENT", raising=False)
    if hasattr(sys, "getandroidapilevel"):
        pytest.skip("running on Android")
    got = []
    android.request_camera(got.append)
    assert got == [False] and not android.camera_available()


def test_permission_is_requested_once_and_answer_forwarded(on_android) -> None:
    assert android.is_android() and android.camera_available()
    got = []
    on_android["grant_answer"] = False
    android.request_camera(got.append)
    assert got == [False] and on_android["requested"] == [["android.permission.CAMERA"]]
    on_android["grant_answer"] = True
    android.request_camera(got.append)
    assert got == [False, True]
    on_android["granted"] = True  # already granted: no second dialog
    android.request_camera(got.append)
    assert got == [False, True, True] and len(on_android["requested"]) == 2


def test_camera_writes_to_the_given_path_and_reports_it(on_android, tmp_path) -> None:
    target = tmp_path / "captures" / "c1.jpg"
    target.parent.mkdir()
    got = []
    android.take_picture(str(target), got.append)
    assert on_android["camera_path"] == str(target) and got == [str(target)] and target.is_file()
    on_android["camera_writes"] = False  # the user backed out of the camera: nothing on disk
    other = tmp_path / "captures" / "c2.jpg"
    android.take_picture(str(other), got.append)
    assert got[-1] is None
