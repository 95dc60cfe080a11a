"""How the device client talks to a hub: a small interface, over HTTP or in memory.

:class:`HttpTransport` uses only ``urllib`` (no extra dependency on the device). Downloads go
to ``<dest>.partial`` and resume with ``Range: bytes=<have>-`` after a dropped connection or
a killed process; the caller checks the finished file's sha256 and signature.
:class:`InMemoryTransport` calls a hub object directly (tests, and a hub on the same machine).
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from edge_app.atomic import fsync_dir
from edge_app.errors import AuthError, BlobDamagedError, IntegrityError, SyncError, UsageError
from edge_app.runtime.outbox import MAX_PAYLOAD_BYTES
from edge_app.storage import is_disk_full

log = logging.getLogger(__name__)

#: what a hub answers for an unknown, wrong or revoked token (anything else with a 401 is its reason, shown)
GENERIC_401 = "invalid or missing token"

CHUNK = 256 * 1024
#: the largest JSON answer the device reads (a sync plan or an upload result is a few kB)
MAX_JSON_BYTES = 8 * 1024 * 1024
#: a download slower than this on average (after the first READ_DEADLINE_FACTOR x timeout seconds) is cut and
#: resumed: a hub that trickles bytes must not hold the sync (and its lock) for hours
MIN_DOWNLOAD_BYTES_PER_S = 16 * 1024
READ_DEADLINE_FACTOR = 4
#: the largest outbox record payload (JSON, sort_keys) a hub stores; the client refuses bigger ones itself
MAX_RECORD_PAYLOAD_BYTES = MAX_PAYLOAD_BYTES  # the outbox refuses bigger records when they are made


class Transport(Protocol):
    """What the sync client needs from a hub.

    ``post_upload``/``post_uploads`` answer each record with its hub status, or with
    ``{"uuid", "refused": reason}`` when the hub will never store that record (the client keeps it,
    marked refused, instead of failing every later sync on it).
    """

    def plan(self, version: int, bundle_id: str | None, epoch: int = 0,
             last_error: str | None = None, settings_stamp: Sequence[int] | None = None) -> dict[str, Any]: ...
    def download(self, url: str, dest: Path, size: int) -> Path: ...
    def get_bytes(self, url: str, max_bytes: int) -> bytes: ...
    def post_upload(self, record: Mapping[str, Any]) -> dict[str, Any]: ...
    def post_uploads(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...
    def put_chunk(self, uuid: str, offset: int, data: bytes) -> dict[str, Any]: ...
    def get_thumbnails(self, ids: Sequence[str], max_each: int) -> dict[str, bytes]: ...


def partial_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _finish(partial: Path, dest: Path, size: int) -> Path:
    have = partial.stat().st_size
    if have != size:
        raise SyncError(f"{dest.name}: downloaded {have} bytes, expected {size}")
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, dest)
    fsync_dir(dest.parent)
    return dest


class TLSError(SyncError):
    """The hub's TLS certificate is not the one pinned at enrolment (or the TLS handshake failed)."""


class UnreachableError(SyncError):
    """No connection to the hub (refused, timed out, no route): nothing was exchanged."""


class _PinMismatch(ssl.SSLError):
    """The certificate the server presented has another sha256 than the pinned one."""


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_pins(pins: str | Sequence[str]) -> tuple[str, ...]:
    """Certificate pins: sha256 of the hub certificate's DER bytes, 64 lower-case hex digits each (one, or
    two while the hub rotates its certificate)."""
    items = (pins,) if isinstance(pins, str) else tuple(pins) if isinstance(pins, (list, tuple)) else (pins,)
    if not items or not all(isinstance(p, str) and _SHA256_HEX.match(p) for p in items):
        raise SyncError(f"a hub certificate pin is 64 hex digits (sha256), got {pins!r}")
    return items


def settings_bytes(doc: Mapping[str, Any]) -> bytes:
    """The canonical bytes the signature of a tablet's settings in a sync plan covers (field policy and the
    settings the hub keeps for that tablet)."""
    return json.dumps({"partlens_device_settings": 1, **doc}, sort_keys=True, separators=(",", ":")).encode()


def upgrade_offer_bytes(doc: Mapping[str, Any]) -> bytes:
    """The canonical bytes the signature of a hub's HTTP -> HTTPS upgrade offer covers."""
    return json.dumps({"partlens_tls_upgrade": 1, **doc}, sort_keys=True, separators=(",", ":")).encode()


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose server certificate must have one of the pinned sha256s; checked right after the handshake,
    before a byte of the request (token included) is sent. The handshake proves the server holds that
    certificate's key, so no CA and no host-name check are needed: the hub's address may change, its
    certificate only through a rotation the tablet followed."""

    def __init__(self, *args: Any, pins: tuple[str, ...], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._pins = pins

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True)
        got = hashlib.sha256(der).hexdigest() if der else "none"
        if got not in self._pins:
            self.sock.close()
            pinned = ", ".join(p[:16] + "..." for p in self._pins)
            raise _PinMismatch(f"certificate sha256 {got[:16]}..., pinned {pinned}")


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, pins: tuple[str, ...]) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check
        super().__init__(context=ctx)
        self._pins = pins

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_PinnedHTTPSConnection, pins=self._pins), req, context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the hub's API has none, and urllib would send the device token along to
    wherever it points (a captive portal on the terminal Wi-Fi, say). The 3xx becomes an HTTPError."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


def pinned_opener(pins: str | Sequence[str]) -> urllib.request.OpenerDirector:
    """A urllib opener whose HTTPS connections accept only certificates with these sha256 pins."""
    return urllib.request.build_opener(_PinnedHTTPSHandler(check_pins(pins)), _NoRedirect())


class HttpTransport:
    """The hub's HTTP API through urllib, with a bearer token and resumable downloads.

    ``tls_sha256``: the pin(s) of the hub's certificate from enrolment (two during a rotation); the hub URL
    must then be https:// and only those certificates are accepted. An https:// URL without a pin uses the
    system's CAs.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, retries: int = 5,
                 tls_sha256: str | Sequence[str] | None = None, install_id: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise SyncError(f"hub URL must start with http:// or https://, got {base_url!r}")
        if tls_sha256 and not base_url.startswith("https://"):
            raise SyncError(f"a pinned hub certificate needs an https:// hub URL, got {base_url!r}")
        self._opener = pinned_opener(tls_sha256) if tls_sha256 else urllib.request.build_opener(_NoRedirect())
        self.base = base_url.rstrip("/")
        self.token = token
        #: this app install (sync.client.install_id): the hub binds an enrolment code to the first install using it
        self._auth = {"Authorization": f"Bearer {token}", **({"X-Partlens-Install": install_id} if install_id else {})}
        self.timeout = timeout
        self.retries = retries
        self._batch_unsupported = False  # an older hub without POST /v1/uploads/batch
        self._thumbs_unsupported = False  # an older hub without POST /v1/thumbs/batch

    def _open(self, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] = {},
              params: Mapping[str, Any] | None = None) -> Any:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        req = urllib.request.Request(url, data=body, method=method, headers={**self._auth, **headers})
        try:
            return self._opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(4096).decode("utf-8", "replace")
            except (HTTPException, OSError):
                detail = ""
            if exc.code == 401:
                said = ""
                try:
                    said = str(json.loads(detail).get("detail") or "")
                except (ValueError, AttributeError):
                    pass
                # the hub's reason when the token is valid but refused (another install, an expired code)
                said = said if said and said != GENERIC_401 else ""
                raise AuthError(f"hub {self.base} refused the device token (401)"
                                + (f": {''.join(c if c.isprintable() else '?' for c in said[:300])}" if said else "")) from None
            if exc.code == 507:
                raise _HttpError(507, detail, f"the hub's storage is full (HTTP 507 on {method} {path}): tell the "
                                 "hub admin; nothing was lost, this tablet keeps its outbox and syncs later") from None
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "?") if exc.headers else "?"
                raise _HttpError(exc.code, detail, f"hub {method} {path}: HTTP {exc.code} redirect to {where[:200]}, "
                                 "not followed (the device token goes to the enrolled hub address only; a Wi-Fi "
                                 "login page in the way?)") from None
            raise _HttpError(exc.code, detail, f"hub {method} {path}: HTTP {exc.code} {_one_line(detail)}") from None
        except (urllib.error.URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (_PinMismatch, ssl.SSLCertVerificationError)):
                why = reason.verify_message if isinstance(reason, ssl.SSLCertVerificationError) else reason
                raise TLSError(f"hub {self.base}: its TLS certificate is not the one this device trusts "
                               f"({why}); someone may be in the middle, or the hub's certificate "
                               f"was replaced (then enrol this device again)") from None
            if isinstance(reason, ssl.SSLError):
                raise TLSError(f"hub {self.base}: TLS failed ({reason}); is the hub serving HTTPS?") from None
            raise UnreachableError(f"hub {self.base} unreachable ({exc})") from None

    def _read(self, resp: Any, path: str, n: int) -> bytes:
        """Up to ``n`` bytes of a response body, within a deadline of READ_DEADLINE_FACTOR x timeout (the
        socket timeout alone lets a hub that sends a byte now and then hold the sync for hours). A connection
        cut while reading, or the deadline, is a SyncError (the next sync tries again)."""
        deadline = time.monotonic() + READ_DEADLINE_FACTOR * self.timeout
        parts: list[bytes] = []
        have = 0
        try:
            while have < n:
                chunk = _read_some(resp, min(CHUNK, n - have))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
                if time.monotonic() > deadline:
                    raise SyncError(f"hub {self.base}{path}: answer too slow ({have} bytes in "
                                    f"{READ_DEADLINE_FACTOR * self.timeout:.0f} s); the next sync tries again")
        except (HTTPException, OSError) as exc:
            raise SyncError(f"hub {self.base}{path}: connection lost while reading the answer ({exc!r})") from None
        return b"".join(parts)

    def _read_json(self, resp: Any, path: str) -> dict[str, Any]:
        """A JSON object answer of at most MAX_JSON_BYTES; anything else is a SyncError."""
        data = self._read(resp, path, MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise SyncError(f"hub {self.base}{path}: the answer is larger than {MAX_JSON_BYTES} bytes; refused")
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise SyncError(f"hub {self.base}{path}: the answer is not JSON ({len(data)} bytes)") from None
        if not isinstance(doc, dict):
            raise SyncError(f"hub {self.base}{path}: the answer is JSON but not an object ({type(doc).__name__})")
        return doc

    def _json(self, method: str, path: str, payload: Any = None, **kw: Any) -> dict[str, Any]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        with self._open(method, path, body=body, headers=headers, **kw) as resp:
            return self._read_json(resp, path)

    def plan(self, version: int, bundle_id: str | None, epoch: int = 0,
             last_error: str | None = None, settings_stamp: Sequence[int] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"version": version, "bundle_id": bundle_id}
        if epoch:  # only after a hub restore; older hubs never see the parameter
            params["epoch"] = epoch
        if last_error:  # why the previous sync failed (`hub devices` shows it); older hubs ignore it
            params["last_error"] = last_error[:300]
        if settings_stamp:  # the signed settings this tablet follows (`tls-rotate --activate` checks them)
            params["settings"] = ".".join(str(int(x)) for x in settings_stamp)
        return self._json("GET", "/v1/sync", params=params)

    def whoami(self) -> dict[str, Any]:
        return self._json("GET", "/v1/whoami")

    def get_bytes(self, url: str, max_bytes: int) -> bytes:
        """A small file (e.g. a thumbnail) in memory; more than ``max_bytes`` is an error."""
        with self._open("GET", url) as resp:
            data = self._read(resp, url, max_bytes + 1)
        if len(data) > max_bytes:
            raise SyncError(f"{url}: larger than {max_bytes} bytes")
        return data

    def get_thumbnails(self, ids: Sequence[str], max_each: int) -> dict[str, bytes]:
        """Thumbnails of ``ids`` in one request (``POST /v1/thumbs/batch``, a tar); one by one on an older hub.
        Ids the hub does not have are absent from the result."""
        if not self._thumbs_unsupported:
            limit = len(ids) * (max_each + 1536) + 10240  # members, their tar headers, the end blocks
            try:
                with self._open("POST", "/v1/thumbs/batch", body=json.dumps({"ids": list(ids)}).encode(),
                                headers={"Content-Type": "application/json"}) as resp:
                    data = self._read(resp, "/v1/thumbs/batch", limit + 1)
            except _HttpError as exc:
                if exc.code not in (404, 405):
                    raise
                log.info("hub %s has no batch thumbnail endpoint (HTTP %d); fetching one by one", self.base, exc.code)
                self._thumbs_unsupported = True
            else:
                if len(data) > limit:
                    raise SyncError(f"hub sent more than {limit} bytes for {len(ids)} thumbnails")
                return read_thumbs_tar(data, ids, max_each)
        out = {}
        for image_id in ids:
            try:
                out[image_id] = self.get_bytes(f"/v1/thumbs/{image_id}", max_each)
            except SyncError as exc:
                if isinstance(exc, (AuthError, TLSError)):
                    raise
                log.debug("thumbnail %s not fetched (%s)", image_id, exc)
        return out

    def download(self, url: str, dest: Path, size: int) -> Path:
        """Fetch ``url`` into ``dest`` resuming ``dest.partial``; retry dropped connections."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_of(dest)
        attempt = 0
        while True:
            have = partial.stat().st_size if partial.exists() else 0
            if have > size:
                partial.unlink()
                have = 0
            if have == size:
                return _finish(partial, dest, size)
            try:
                self._fetch_range(url, partial, have, size)
            except _HttpError as exc:
                if exc.code == 416:  # our partial is longer than the file: start again
                    partial.unlink(missing_ok=True)
                    continue
                raise
            except (SyncError, OSError, HTTPException) as exc:
                if isinstance(exc, (AuthError, TLSError)) or is_disk_full(exc):
                    raise  # retrying cannot help: a wrong token, a wrong certificate, a full disk
                attempt += 1
                got = partial.stat().st_size if partial.exists() else 0
                if attempt > self.retries:
                    raise SyncError(f"{dest.name}: download failed after {self.retries} retries at byte {got} "
                                    f"of {size} ({exc}); the partial file is kept for the next sync") from None
                log.warning("%s: connection lost at byte %d of %d (%s); resuming", dest.name, got, size, exc)
                time.sleep(min(0.2 * attempt, 2.0))

    def _fetch_range(self, url: str, partial: Path, have: int, size: int) -> None:
        """Append the rest of ``url`` to ``partial`` (from byte ``have``), never past ``size``: a hub that sends
        more than the plan announced gets the partial file deleted and an IntegrityError. Slower than
        MIN_DOWNLOAD_BYTES_PER_S on average is cut (a SyncError: the caller resumes)."""
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self._open("GET", url, headers=headers) as resp:
            if have and resp.status != 206:
                log.info("%s: server ignored Range; downloading from the start", partial.name)
                mode, start = "wb", 0
            else:
                mode, start = "ab", have
            t0 = time.monotonic()
            grace = READ_DEADLINE_FACTOR * self.timeout
            got = 0
            with open(partial, mode) as fh:
                try:
                    while True:
                        chunk = _read_some(resp, CHUNK)
                        if not chunk:
                            break
                        if start + got + len(chunk) > size:
                            fh.close()
                            partial.unlink(missing_ok=True)
                            raise IntegrityError(f"{url}: the hub sent more than the {size} bytes its sync plan "
                                                 "announced; the download was deleted (sync again)")
                        fh.write(chunk)
                        got += len(chunk)
                        elapsed = time.monotonic() - t0
                        if elapsed > grace and got < MIN_DOWNLOAD_BYTES_PER_S * elapsed:
                            raise SyncError(f"download too slow ({got} bytes in {elapsed:.0f} s)")
                finally:
                    if not fh.closed:
                        fh.flush()
                        os.fsync(fh.fileno())
            expected = resp.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and got < int(expected):
                raise SyncError(f"connection closed after {got} of {expected} bytes")

    def post_upload(self, record: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._json("POST", "/v1/uploads", dict(record))
        except _HttpError as exc:
            if exc.code == 400:
                return {"uuid": record.get("uuid"), "refused": _detail(exc.detail)}
            raise

    def post_uploads(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Records in one request (``POST /v1/uploads/batch``); one by one on a hub without it."""
        if not self._batch_unsupported:
            try:
                out = self._json("POST", "/v1/uploads/batch", {"records": [dict(r) for r in records]})
            except _HttpError as exc:
                if exc.code not in (404, 405):
                    raise
                log.info("hub %s has no batch upload endpoint (HTTP %d); sending records one by one",
                         self.base, exc.code)
                self._batch_unsupported = True
            else:
                return _batch_results(records, out.get("results"))
        return [self.post_upload(r) for r in records]

    def put_chunk(self, uuid: str, offset: int, data: bytes) -> dict[str, Any]:
        try:
            with self._open("PUT", f"/v1/uploads/{uuid}/blob", body=data, params={"offset": offset},
                            headers={"Content-Type": "application/octet-stream"}) as resp:
                return self._read_json(resp, f"/v1/uploads/{uuid}/blob")
        except _HttpError as exc:
            if exc.code == 409:
                return {"conflict": True, "blob_offset": _conflict_offset(exc.detail, uuid)}
            if exc.code == 422 and _blob_discarded(exc.detail):  # damaged on the way: send it again
                raise BlobDamagedError(f"upload {uuid}: the photo reached the hub damaged and was discarded; "
                                       "it is sent again") from None
            if exc.code in (400, 422):  # this photo, as declared, cannot complete at the hub
                raise IntegrityError(f"hub refused upload {uuid}: {exc.detail}") from None
            raise


def _read_some(resp: Any, n: int) -> bytes:
    """What the connection has now, at most ``n`` bytes (one socket read, unlike ``read(n)``, which waits for
    all ``n``): lets a deadline be checked between reads."""
    read1 = getattr(resp, "read1", None)
    return read1(n) if read1 is not None else resp.read(n)


def _one_line(text: str, limit: int = 200) -> str:
    """An error body for a one-line message: its FastAPI ``detail``, else its first line, shortened."""
    text = _detail(text).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _conflict_offset(detail: str, uuid: str) -> int:
    """The hub's ``blob_offset`` in a 409 answer to a photo chunk: where its copy of the photo ends."""
    try:
        offset = json.loads(detail)["blob_offset"]
    except (ValueError, KeyError, TypeError):
        offset = None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise SyncError(f"hub answered a chunk of upload {uuid} with 409 but no usable blob_offset "
                        f"({_one_line(detail)!r})")
    return offset


def _detail(text: str) -> str:
    """The ``detail`` of a FastAPI error body, else the body itself."""
    try:
        return str(json.loads(text)["detail"])
    except (ValueError, KeyError, TypeError):
        return text


def _batch_results(records: Sequence[Mapping[str, Any]], results: Any) -> list[dict[str, Any]]:
    """The hub's per-record answers, checked to be one per record, for the same UUIDs, in order."""
    if not isinstance(results, list) or len(results) != len(records):
        raise SyncError(f"hub answered an upload batch of {len(records)} records with "
                        f"{len(results) if isinstance(results, list) else 'no'} results")
    for rec, res in zip(records, results):
        if not isinstance(res, dict) or res.get("uuid") != rec.get("uuid"):
            raise SyncError(f"hub answered upload {rec.get('uuid')} with a result for another record")
    return results


def read_thumbs_tar(data: bytes, wanted: Sequence[str], max_each: int) -> dict[str, bytes]:
    """The members of a thumbnail tar that are regular files named ``<id>.jpg`` for a ``wanted`` id and at
    most ``max_each`` bytes; anything else in it is ignored (a device never writes a name it did not ask for)."""
    want = set(wanted)
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                image_id = m.name[:-4] if m.name.endswith(".jpg") else None
                if image_id is not None and ("/" in m.name or "\\" in m.name or m.name.startswith(".")):
                    continue  # never a path, whatever was asked for
                if not m.isreg() or image_id not in want or m.size > max_each or image_id in out:
                    continue
                fh = tar.extractfile(m)
                if fh is not None:
                    out[image_id] = fh.read()
    except tarfile.TarError:
        return out  # a cut response: keep what arrived whole; the rest is fetched next sync
    return out


def _blob_discarded(detail: str) -> bool:
    """Whether a 422 on a photo chunk says the hub discarded damaged bytes (``blob_discarded``; hubs before it
    said so in words only)."""
    try:
        body = json.loads(detail)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    return body.get("blob_discarded") is True or "sha256 does not match; discarded" in str(body.get("detail"))


class _HttpError(SyncError):
    def __init__(self, code: int, detail: str, message: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(message)


class InMemoryTransport:
    """Calls a :class:`~sync.hub.hub.Hub` in this process, with the same auth and checks as HTTP."""

    def __init__(self, hub: Any, token: str, install_id: str | None = None) -> None:
        from .hub.deltas import PackageService

        self.hub = hub
        self.token = token
        self.install_id = install_id
        self.packages = PackageService(hub)

    def _device(self) -> dict[str, Any]:
        from .hub.auth import authenticate, check_install, check_unused_code

        dev = authenticate(self.hub.store, self.hub.secret, self.token)
        if self.install_id is not None:  # (an in-process test double: only an explicit install is checked)
            check_install(self.hub.store, dev, self.install_id)
        else:
            check_unused_code(dev)
        return dev

    def plan(self, version: int, bundle_id: str | None, epoch: int = 0,
             last_error: str | None = None, settings_stamp: Sequence[int] | None = None) -> dict[str, Any]:
        return self.packages.plan_for_device(self._device(), version, bundle_id, via="in-process", epoch=epoch,
                                             last_error=last_error,
                                             settings_stamp=list(settings_stamp) if settings_stamp else None)

    def get_bytes(self, url: str, max_bytes: int) -> bytes:
        self._device()
        prefix = "/v1/thumbs/"
        image_id = url[len(prefix):] if url.startswith(prefix) else None
        path = self.hub.thumb_path(image_id) if image_id else None
        if path is None or "/" in image_id or self.hub.store.image(image_id) is None or not path.is_file():
            raise SyncError(f"{url}: not found on the hub")
        data = path.read_bytes()
        if len(data) > max_bytes:
            raise SyncError(f"{url}: larger than {max_bytes} bytes")
        return data

    def get_thumbnails(self, ids: Sequence[str], max_each: int) -> dict[str, bytes]:
        from .hub.thumbs import thumbs_tar

        self._device()
        return read_thumbs_tar(thumbs_tar(self.hub, list(ids)), ids, max_each)

    def download(self, url: str, dest: Path, size: int) -> Path:
        dev = self._device()
        if url.startswith("/v1/packages/"):
            src = self.packages.package_file(dev["site"], url.rsplit("/", 1)[1])
        elif url.startswith("/v1/bundles/") and url.endswith(".tar"):
            src = self.hub.bundle_tar(url[len("/v1/bundles/"):-len(".tar")])
        else:
            raise SyncError(f"unknown download {url}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_of(dest)
        have = partial.stat().st_size if partial.exists() else 0
        with open(src, "rb") as s, open(partial, "ab") as d:
            s.seek(have)
            shutil.copyfileobj(s, d, CHUNK)
        return _finish(partial, dest, size)

    def post_upload(self, record: Mapping[str, Any]) -> dict[str, Any]:
        from .hub.uploads import receive_record

        device = self._device()
        try:
            return receive_record(self.hub, device, record)
        except UsageError as exc:
            return {"uuid": record.get("uuid"), "refused": str(exc)}

    def post_uploads(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        from .hub.uploads import receive_records

        return _batch_results(records, receive_records(self.hub, self._device(), [dict(r) for r in records]))

    def put_chunk(self, uuid: str, offset: int, data: bytes) -> dict[str, Any]:
        from .hub.uploads import OffsetMismatch, receive_chunk

        try:
            return receive_chunk(self.hub, self._device(), uuid, offset, data)
        except OffsetMismatch as exc:
            return {"conflict": True, "blob_offset": exc.offset}
