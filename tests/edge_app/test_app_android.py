"""The Android-only helpers against fake `android.permissions` and `plyer` modules.

They cannot run here for real; the fakes assert what the real APIs need: the CAMERA permission
requested with a callback taking (permissions, grants), and plyer's camera writing straight to
the path the capture store chose (so a photo survives the app being killed).
"""
from __future__ import annotations

import os
import sys
import types

import pytest

from edge_app.app import android


class _Uri:
    def __init__(self, text: str) -> None:
        self.text = text

    def toString(self) -> str:  # noqa: N802 - Java's name
        return self.text


class _Stream:
    """java.io.InputStream.read(byte[]): fills the array (pyjnius copies it back), returns n or -1."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.closed = data, 0, False

    reads = 0  # calls of read(byte[]) from Python (each copies the array back byte by byte on a device)

    def read(self, buf: bytearray) -> int:
        assert isinstance(buf, bytearray) and len(buf) > 0
        _Stream.reads += 1
        if self.pos >= len(self.data):
            return -1
        chunk = self.data[self.pos:self.pos + len(buf)]
        buf[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        self.closed = True


class _FileOutputStream:
    """java.io.FileOutputStream(String) with getFD().sync() and close()."""

    def __init__(self, path: str) -> None:
        assert isinstance(path, str)
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close(), as Java's
        self.synced = False

    def write_all(self, data: bytes) -> None:
        self.fh.write(data)

    def getFD(self):  # noqa: N802 - Java's name
        def sync() -> None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.synced = True
        return types.SimpleNamespace(sync=sync)

    def close(self) -> None:
        assert self.synced, "closed before FileDescriptor.sync(): the photo may not be on disk"
        self.fh.close()


class _FileUtils:
    """android.os.FileUtils (API 29+): copy(InputStream, OutputStream) on the Java side."""

    calls = 0

    @staticmethod
    def copy(src: "_Stream", dst: _FileOutputStream) -> int:
        _FileUtils.calls += 1
        data = src.data[src.pos:]
        src.pos = len(src.data)
        dst.write_all(data)
        return len(data)


class _Resolver:
    """MediaStore as the camera app and partlens see it: items by content URI."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.items: dict[str, bytes] = {}

    def insert(self, base: str, values: dict) -> _Uri:
        assert base == "content://media/external/images/media"
        self.state["values"] = dict(values)
        uri = f"{base}/{len(self.items) + 1}"
        self.items[uri] = b""
        return _Uri(uri)

    def openInputStream(self, uri: _Uri) -> _Stream:  # noqa: N802
        if uri.text not in self.items:
            raise RuntimeError("java.io.FileNotFoundException")
        return _Stream(self.items[uri.text])

    def delete(self, uri: _Uri, where: object, args: object) -> int:
        self.state.setdefault("deleted", []).append(uri.text)
        return 1 if self.items.pop(uri.text, None) is not None else 0


@pytest.fixture
def on_android(monkeypatch):
    monkeypatch.setenv("ANDROID_ARGUMENT", "/data/app")
    state: dict = {"granted": set(), "requested": [], "sdk": 34, "bound": [], "handed_over": []}

    perms = types.ModuleType("android.permissions")

    class Permission:
        CAMERA = "android.permission.CAMERA"

    def check_permission(p):
        return p in state["granted"]

    def request_permissions(ps, callback):
        state["requested"].append(list(ps))
        answer = state.get("grant_answer", False)
        callback(ps, [answer(p) if callable(answer) else answer for p in ps])

    perms.Permission, perms.check_permission, perms.request_permissions = Permission, check_permission, \
        request_permissions
    events = types.ModuleType("android.activity")

    def bind(on_activity_result):
        state["bound"].append(on_activity_result)

    def unbind(on_activity_result):
        state["bound"].remove(on_activity_result)

    events.bind, events.unbind = bind, unbind
    pkg = types.ModuleType("android")
    pkg.permissions, pkg.activity = perms, events
    monkeypatch.setitem(sys.modules, "android", pkg)
    monkeypatch.setitem(sys.modules, "android.permissions", perms)
    monkeypatch.setitem(sys.modules, "android.activity", events)

    resolver = _Resolver(state)
    state["resolver"] = resolver

    class ContentValues(dict):
        def put(self, k, v):
            self[k] = v

    class Intent:
        FLAG_GRANT_READ_URI_PERMISSION, FLAG_GRANT_WRITE_URI_PERMISSION = 1, 2

        def __init__(self, action):
            self.action, self.extras, self.flags = action, {}, 0

        def putExtra(self, k, v):  # noqa: N802
            self.extras[k] = v

        def addFlags(self, f):  # noqa: N802
            self.flags |= f

    class Activity:
        def getContentResolver(self):  # noqa: N802
            return resolver

        def startActivityForResult(self, intent, code):  # noqa: N802
            state["intent"], state["code"] = intent, code

    classes = {
        "android.content.Intent": Intent,
        "android.provider.MediaStore": types.SimpleNamespace(ACTION_IMAGE_CAPTURE="android.media.action.IMAGE_CAPTURE",
                                                             EXTRA_OUTPUT="output"),
        "android.provider.MediaStore$Images$Media": types.SimpleNamespace(
            EXTERNAL_CONTENT_URI="content://media/external/images/media"),
        "android.content.ContentValues": ContentValues,
        "org.kivy.android.PythonActivity": types.SimpleNamespace(mActivity=Activity()),
        "android.os.Build$VERSION": types.SimpleNamespace(SDK_INT=0),
        "android.net.Uri": types.SimpleNamespace(parse=_Uri),
        "java.io.FileOutputStream": _FileOutputStream,
        "android.os.FileUtils": _FileUtils,
    }
    jnius = types.ModuleType("jnius")

    def autoclass(name):
        if name == "android.os.Build$VERSION":
            return types.SimpleNamespace(SDK_INT=state["sdk"])
        return classes[name]

    def cast(kind, obj):
        assert kind == "android.os.Parcelable"
        return obj

    jnius.autoclass, jnius.cast = autoclass, cast
    monkeypatch.setitem(sys.modules, "jnius", jnius)
    # Kivy's clock is not ticking in these tests: hand-overs to Kivy's thread queue up until run_kivy()
    import threading

    def hand_over(fn):
        state["handed_over"].append(threading.current_thread().name)
        state["kivy_queue"].append(fn)

    def run_kivy():
        while state["kivy_queue"]:
            state["kivy_queue"].pop(0)()

    def deliver(code, result):
        """PythonActivity.onActivityResult: iterates its listener list, which must not change meanwhile
        (Java's iterator throws ConcurrentModificationException)."""
        listeners = list(state["bound"])
        for cb in listeners:
            cb(code, result, None)
            if state["bound"] != listeners:
                raise RuntimeError("java.util.ConcurrentModificationException")

    state.update(kivy_queue=[], run_kivy=run_kivy, deliver=deliver)
    monkeypatch.setattr(android, "_on_kivy_thread", hand_over)
    monkeypatch.setattr(android, "_camera_open", False)
    return state


def test_desktop_reports_no_camera(monkeypatch) -> None:
    monkeypatch.delenv("ANDROID_ARGUMENT", raising=False)
    if hasattr(sys, "getandroidapilevel"):
        pytest.skip("running on Android")
    got = []
    android.request_camera(got.append)
    assert got == [False] and not android.camera_available()


def test_permissions_asked_per_android_version_and_answer_handed_to_kivy(on_android) -> None:
    assert android.is_android() and android.camera_available()
    got = []
    on_android["grant_answer"] = False
    android.request_camera(got.append)
    assert got == [] and on_android["handed_over"], "the answer comes on Android's UI thread: handed to Kivy's"
    on_android["run_kivy"]()
    assert got == [False] and on_android["requested"] == [["android.permission.CAMERA"]]
    on_android["grant_answer"] = True
    android.request_camera(got.append)
    on_android["run_kivy"]()
    assert got == [False, True]
    on_android["granted"] = {"android.permission.CAMERA"}
    android.request_camera(got.append)  # granted: no dialog
    assert got == [False, True, True] and len(on_android["requested"]) == 2
    on_android.update(sdk=28, grant_answer=True)
    android.request_camera(got.append)  # Android 8-9: the camera's shared-storage item needs storage access
    on_android["run_kivy"]()
    assert on_android["requested"][-1] == ["android.permission.WRITE_EXTERNAL_STORAGE"] and got[-1] is True


def test_notifications_are_asked_once_per_install_at_start_never_over_the_camera(on_android, tmp_path) -> None:
    assert android.request_notifications(tmp_path) is True
    assert on_android["requested"] == [["android.permission.POST_NOTIFICATIONS"]]
    assert android.request_notifications(tmp_path) is False and len(on_android["requested"]) == 1
    on_android["sdk"] = 32
    assert android.request_notifications(tmp_path / "other") is False  # before Android 13: nothing to ask


def test_camera_writes_a_content_item_that_is_copied_in_and_deleted(on_android, tmp_path) -> None:
    """Not a file:// URI (FileUriExposedException since Android 7; the camera app cannot write into
    partlens's private folder): a MediaStore item the camera may write, copied into the capture path."""
    import threading

    target = tmp_path / "captures" / "c1.jpg"
    target.parent.mkdir()
    got, uris = [], []
    android.take_picture(str(target), got.append, on_uri=uris.append)
    intent = on_android["intent"]
    uri = intent.extras["output"]
    assert intent.action == "android.media.action.IMAGE_CAPTURE" and uri.text.startswith("content://")
    assert intent.flags & 2 and uris == [uri.text] and not uri.text.startswith("file:")
    assert on_android["values"]["relative_path"] == "Pictures/partlens"
    photo = bytes(range(256)) * 700  # 179 kB: several reads of the 64 kB buffer
    copies, reads = _FileUtils.calls, _Stream.reads
    on_android["resolver"].items[uri.text] = photo  # the camera app writes it
    android.take_picture(str(tmp_path / "double-tap.jpg"), got.append)  # ignored while the camera is open
    assert len(on_android["bound"]) == 1 and len(on_android["resolver"].items) == 1
    errors = []

    def android_ui() -> None:
        try:
            on_android["deliver"](on_android["code"], -1)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=android_ui, name="android-ui")
    t.start()
    t.join()
    assert not errors, "the listener list changed while Android iterated it: the app would die"
    assert target.read_bytes() == photo and on_android["deleted"] == [uri.text]  # no copy left in the gallery
    on_android["run_kivy"]()
    assert got == [str(target)] and set(on_android["handed_over"]) == {"android-ui"} and not on_android["bound"]
    assert not list(target.parent.glob("*.part"))
    assert _FileUtils.calls == copies + 1 and _Stream.reads == reads  # Android 14 here: copied on the Java side
    # Android 9 (no FileUtils.copy): the chunked read, the same bytes
    on_android["sdk"] = 28
    again = tmp_path / "captures" / "c9.jpg"
    android.take_picture(str(again), got.append)
    on_android["resolver"].items[on_android["intent"].extras["output"].text] = photo
    on_android["deliver"](on_android["code"], -1)
    on_android["run_kivy"]()
    assert again.read_bytes() == photo and _FileUtils.calls == copies + 1 and _Stream.reads == reads + 4
    on_android["sdk"] = 34
    # the engineer backed out of the camera: no photo, the empty item deleted
    other = tmp_path / "captures" / "c2.jpg"
    android.take_picture(str(other), got.append)
    on_android["deliver"](on_android["code"], 0)
    on_android["run_kivy"]()
    assert got[-1] is None and not other.exists() and len(on_android["deleted"]) == 3


def test_a_camera_that_cannot_open_says_no_photo_and_leaves_nothing(on_android, tmp_path) -> None:
    def no_camera_app(intent, code):
        raise RuntimeError("android.content.ActivityNotFoundException: No Activity found to handle Intent")

    activity = sys.modules["jnius"].autoclass("org.kivy.android.PythonActivity").mActivity
    original = type(activity).startActivityForResult
    type(activity).startActivityForResult = lambda self, i, c: no_camera_app(i, c)
    try:
        got = []
        android.take_picture(str(tmp_path / "c.jpg"), got.append)
        on_android["run_kivy"]()
    finally:
        type(activity).startActivityForResult = original
    assert got == [None] and not on_android["bound"] and not on_android["resolver"].items
    assert android._camera_open is False


def test_a_photo_taken_while_android_stopped_partlens_is_fetched_from_its_item(on_android, tmp_path) -> None:
    from edge_app.captures import CaptureStore

    store = CaptureStore(tmp_path / "captures")
    cid, path = store.camera_path(".jpg")
    android.take_picture(str(path), lambda p: None, on_uri=lambda uri: store.remember_camera_uri(cid, uri))
    uri = on_android["intent"].extras["output"].text
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    on_android["resolver"].items[uri] = buf.getvalue()  # the camera wrote it; partlens had been stopped
    found = store.recover_camera(android.fetch_content_uri)
    assert [c.capture_id for c in found] == [cid] and uri in on_android["deleted"] and path.is_file()


def test_a_photo_copied_in_just_before_a_stop_has_its_shared_item_deleted_at_start(on_android, tmp_path) -> None:
    from edge_app.captures import CaptureStore

    store = CaptureStore(tmp_path / "captures")
    cid, path = store.camera_path(".jpg")
    android.take_picture(str(path), lambda p: None, on_uri=lambda uri: store.remember_camera_uri(cid, uri))
    uri = on_android["intent"].extras["output"].text
    from PIL import Image

    Image.new("RGB", (64, 48), (20, 30, 200)).save(path, "JPEG")  # copied in; stopped before the delete
    on_android["resolver"].items[uri] = path.read_bytes()
    found = store.recover_camera(android.fetch_content_uri)
    assert [c.capture_id for c in found] == [cid] and uri in on_android["deleted"]
    assert uri not in on_android["resolver"].items  # not left in the gallery's partlens folder
