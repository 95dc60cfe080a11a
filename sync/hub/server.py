"""The hub's HTTP API (FastAPI; schema at ``/openapi.json``) and its uvicorn runner.

Every ``/v1`` endpoint needs ``Authorization: Bearer <device token>``; a missing or wrong
token gets 401 and no data. A device only ever receives its own site's packages. Files
(packages, bundles, images) are served with HTTP Range support so downloads resume.
"""
from __future__ import annotations

import asyncio

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect

from edge_app.errors import AuthError, BlobDamagedError, InputError, IntegrityError, PartlensError, UsageError
from edge_app.storage import free_bytes, is_disk_full, mb

from ..transport import GENERIC_401
from .auth import INSTALL_HEADER, EnrolmentRefused, authenticate, check_install
from .deltas import PackageService
from .hub import Hub
from .thumbs import thumbs_tar
from .uploads import (
    MAX_VERSION, OffsetMismatch, UploadSpaceError, prune_stale_partials, receive_chunk, receive_record, receive_records,
    upload_status,
)

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="per-device token from `partlens hub add-device`")
MAX_CHUNK = 4 * 1024 * 1024
MAX_JSON_BODY = 4 * 1024 * 1024  # an upload record or batch (a client batch is about 1 MiB at most)


def create_app(hub_dir: str | os.PathLike[str] | Hub) -> FastAPI:
    """The FastAPI app serving the hub folder ``hub_dir``."""
    hub = hub_dir if isinstance(hub_dir, Hub) else Hub(hub_dir)
    packages = PackageService(hub)
    app = FastAPI(title="partlens hub", version="1", docs_url=None, redoc_url=None,
                  description="Catalogue deltas, bundles, images and uploads for partlens devices.")
    app.state.hub = hub
    app.state.packages = packages
    prune_stale_partials(hub)  # photos a tablet started and never finished, a week ago or more

    @app.exception_handler(PartlensError)
    async def _domain_error(request: Request, exc: PartlensError) -> JSONResponse:
        if isinstance(exc, AuthError):
            return JSONResponse({"detail": GENERIC_401}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        if isinstance(exc, OffsetMismatch):
            return JSONResponse({"detail": str(exc), "blob_offset": exc.offset}, status_code=409)
        if isinstance(exc, UploadSpaceError):  # nothing lost: the tablet keeps the upload and retries later
            return JSONResponse({"detail": str(exc)}, status_code=507)
        if isinstance(exc, BlobDamagedError):  # damaged on the way and discarded: the tablet sends it again
            return JSONResponse({"detail": str(exc), "blob_discarded": True}, status_code=422)
        code = 404 if isinstance(exc, InputError) else 422 if isinstance(exc, IntegrityError) else 400
        if code != 404:  # a refused request is worth a line for the hub admin (a 404 is a routine "not here")
            log.warning("%s %s refused (%d): %s", request.method, request.url.path, code, exc)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    async def _maybe_disk_full(request: Request, exc: Exception) -> JSONResponse:
        """The hub's own disk is full: 507 with words, not a bare 500 (the write was undone; the tablet keeps
        its records and sends them at a later sync). Any other error stays a 500."""
        if not is_disk_full(exc):
            raise exc
        free = mb(free_bytes(hub.root))
        log.error("hub storage full (%s free) during %s %s: %s", free, request.method, request.url.path, exc)
        return JSONResponse({"detail": f"hub storage full ({free} free); the hub admin must free space"},
                            status_code=507)

    app.add_exception_handler(OSError, _maybe_disk_full)
    app.add_exception_handler(sqlite3.Error, _maybe_disk_full)

    def device(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> dict[str, Any]:
        try:
            dev = authenticate(hub.store, hub.secret, creds.credentials if creds else None)
        except AuthError:
            raise HTTPException(401, GENERIC_401, headers={"WWW-Authenticate": "Bearer"}) from None
        try:
            check_install(hub.store, dev, request.headers.get(INSTALL_HEADER))
        except EnrolmentRefused as exc:  # the token is valid: say why (the engineer and the admin need to know)
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        return dev

    @app.get("/v1/whoami", summary="the device this token belongs to")
    def whoami(dev: dict = Depends(device)) -> dict[str, Any]:
        return {"device": dev["name"], "site": dev["site"], "hub_version": hub.store.version(),
                "bundle_id": hub.bundle_id}

    @app.get("/v1/sync", summary="what a device must fetch to be current")
    def sync_plan(request: Request, version: int = Query(0, ge=0, le=MAX_VERSION),
                  bundle_id: str | None = Query(None, max_length=200),
                  epoch: int = Query(0, ge=0, le=MAX_VERSION),
                  last_error: str | None = Query(None, max_length=1000),
                  settings: str | None = Query(None, max_length=40, pattern=r"^\d{1,15}\.\d{1,15}$"),
                  dev: dict = Depends(device)) -> dict[str, Any]:
        return packages.plan_for_device(dev, version, bundle_id, via=request.url.scheme, epoch=epoch,
                                        last_error=last_error,
                                        settings_stamp=[int(x) for x in settings.split(".")] if settings else None)

    @app.get("/v1/packages/{name}", summary="a signed delta or snapshot of the device's site (Range)")
    def package_file(name: str, dev: dict = Depends(device)) -> FileResponse:
        return FileResponse(packages.package_file(dev["site"], name),
                            media_type="application/json" if name.endswith(".json") else "application/x-tar")

    @app.get("/v1/bundles/{bundle_id}.tar", summary="a model bundle archive (Range)")
    def bundle_file(bundle_id: str, dev: dict = Depends(device)) -> FileResponse:
        if hub.store.bundle(bundle_id) is None or not hub.bundle_tar(bundle_id).is_file():
            raise InputError(f"no such bundle {bundle_id}")
        return FileResponse(hub.bundle_tar(bundle_id), media_type="application/x-tar")

    @app.get("/v1/images/{image_id}", summary="a catalogue image")
    def image(image_id: str, dev: dict = Depends(device)) -> FileResponse:
        row = hub.store.image(image_id)
        if row is None:
            raise InputError(f"no such image {image_id}")
        return FileResponse(hub.image_path(row))

    @app.post("/v1/thumbs/batch", summary="up to 500 catalogue thumbnails as a tar of <image_id>.jpg",
              openapi_extra=_json_body_doc('{"ids": [image_id, ...]}'), response_class=Response,
              responses={200: {"content": {"application/x-tar": {}}}})
    async def thumbs_batch(request: Request, dev: dict = Depends(device)) -> Response:
        body = await _read_json(request, MAX_JSON_BODY)
        data = await run_in_threadpool(thumbs_tar, hub, body.get("ids"))
        return Response(data, media_type="application/x-tar")

    @app.get("/v1/thumbs/{image_id}", summary="a catalogue image thumbnail (JPEG)")
    def thumb(image_id: str, dev: dict = Depends(device)) -> FileResponse:
        path = hub.thumb_path(image_id)
        if hub.store.image(image_id) is None or not path.is_file():
            raise InputError(f"no such image {image_id}")
        return FileResponse(path, media_type="image/jpeg")

    # Bodies are read only AFTER the token is checked (a ``Request`` parameter keeps FastAPI from reading and
    # parsing the body first), and never past a size limit: a stranger cannot make the hub hold a huge body.
    @app.post("/v1/uploads", summary="store one outbox record (idempotent by uuid)",
              openapi_extra=_json_body_doc("one outbox record"))
    async def post_upload(request: Request, dev: dict = Depends(device)) -> dict[str, Any]:
        body = await _read_json(request, MAX_JSON_BODY)
        return await run_in_threadpool(receive_record, hub, dev, body)

    @app.post("/v1/uploads/batch", summary="store up to 500 outbox records in one transaction (idempotent by uuid)",
              openapi_extra=_json_body_doc('{"records": [outbox record, ...]}'))
    async def post_uploads(request: Request, dev: dict = Depends(device)) -> dict[str, Any]:
        body = await _read_json(request, MAX_JSON_BODY)
        return {"results": await run_in_threadpool(receive_records, hub, dev, body.get("records"))}

    @app.get("/v1/uploads/{uuid}", summary="an upload's status and blob offset")
    def get_upload(uuid: str, dev: dict = Depends(device)) -> dict[str, Any]:
        return upload_status(hub, dev, uuid)

    @app.put("/v1/uploads/{uuid}/blob", summary="append a blob chunk at offset (resumable)")
    async def put_blob(uuid: str, request: Request, offset: int = Query(..., ge=0),
                       dev: dict = Depends(device)) -> dict[str, Any]:
        data = await _read_body(request, MAX_CHUNK)
        return await run_in_threadpool(receive_chunk, hub, dev, uuid, offset, data)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is over ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):  # a body trickled in a byte at a time must not hold on forever
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"request body over {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:  # a tablet losing Wi-Fi mid-request: routine, nothing was stored
        log.info("%s %s: the client went away after %d bytes of the body", request.method, request.url.path, size)
        raise HTTPException(400, "client disconnected before the body was complete") from None
    except TimeoutError:
        log.warning("%s %s: body not complete after %.0f s (%d bytes); dropped", request.method, request.url.path,
                    BODY_TIMEOUT_S, size)
        raise HTTPException(408, f"request body not complete within {BODY_TIMEOUT_S:.0f} s") from None
    return b"".join(chunks)


#: a connection that has not sent a whole request head this long after connecting (or after its last response) is
#: closed
HEADER_TIMEOUT_S = 20.0
#: a request body (at most a 256 KiB photo chunk) must arrive within this long (2 kB/s)
BODY_TIMEOUT_S = 120.0


def timed_h11_protocol() -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a request head within
    :data:`HEADER_TIMEOUT_S` (uvicorn waits forever: 1,100 such connections used up a desktop's 1,024 file
    descriptors and locked every tablet out, with no token needed)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        # every request head gets its own deadline, the first as each one after a response on a kept-alive
        # connection (an audit: only the first was timed, so a client dripping its SECOND head a byte every few
        # seconds held the connection forever, no token needed; uvicorn's keep-alive timer is cancelled by any byte)
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timeout)

        def on_response_complete(self) -> None:
            self._head_deadline.cancel()
            super().on_response_complete()
            if not self.transport.is_closing():
                self._head_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timeout)

        def _head_timeout(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete  # no request being read or served
            if waiting and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_deadline.cancel()
            super().connection_lost(exc)

    return TimedH11Protocol


def _raise_fd_limit() -> None:
    """Take the hard open-files limit as the soft one (often 1,024 -> 524,288 on a desktop): one connection
    is one descriptor, and the hub should run out of tablets long before descriptors."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
            log.info("open-file limit raised from %d to %s", soft, hard)
    except (ImportError, ValueError, OSError) as exc:  # not on this platform, or not allowed: keep the default
        log.info("open-file limit not raised: %s", exc)


def _no_nan(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body of at most ``limit`` bytes; anything else is a clear 400."""
    try:
        body = json.loads(await _read_body(request, limit), parse_constant=_no_nan)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise UsageError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body


def _json_body_doc(what: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": what,
                            "content": {"application/json": {"schema": {"type": "object"}}}}}


def serve(hub_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8765, *,
          log_level: str = "warning", plain: bool = False) -> None:
    """Run the hub API with uvicorn until interrupted: HTTPS when the hub has a certificate
    (``partlens hub tls-init``), else HTTP. ``plain``: HTTP even so, for the move to HTTPS: tablets enrolled
    over http:// reach this one on their old address and get the signed offer to switch."""
    import uvicorn

    from .tls import CERT, KEY, ReloadingTLS, has_tls, key_password, tls_dir

    app = create_app(Path(hub_dir))
    app.state.hub.key  # noqa: B018  a protected signing key without its passphrase: refuse to start, say why
    ssl_kw: dict[str, Any] = {}
    if has_tls(hub_dir) and not plain:  # a certificate activated later (`tls-rotate --activate`) is picked up live
        cert, key = tls_dir(hub_dir) / CERT, tls_dir(hub_dir) / KEY
        ssl_kw = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_keyfile_password": key_password(key),
                  "ssl_context_factory": ReloadingTLS(cert, key).uvicorn_factory}
    log.info("hub %s serving on %s://%s:%d", hub_dir, "https" if ssl_kw else "http", host, port)
    if not ssl_kw and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving plain HTTP on %s: device tokens and photos cross the network unencrypted; "
                    "run `partlens hub tls-init` (then enrol the tablets)", host)
    _raise_fd_limit()
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, http=timed_h11_protocol(),
                **ssl_kw)


def app_from_env() -> FastAPI:
    """Factory for ``python -m uvicorn --factory sync.hub.server:app_from_env`` (hub folder in $PARTLENS_HUB)."""
    hub_dir = os.environ.get("PARTLENS_HUB")
    if not hub_dir:
        raise UsageError("set PARTLENS_HUB to the hub folder")
    return create_app(hub_dir)
