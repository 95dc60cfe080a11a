"""Catalogue thumbnails for devices, many per request.

A first sync of a large catalogue needs one thumbnail per catalogue image (tens of thousands); one
HTTP request (and, over HTTPS, one TLS handshake) each made that the slowest part of the sync. A
device asks for up to :data:`MAX_THUMBS` ids at once and gets an uncompressed tar (JPEGs do not
compress) of ``<image_id>.jpg`` members: the ones that are live catalogue images with a thumbnail;
ids the hub does not have are simply absent (the device counts them and asks again next sync).
"""
from __future__ import annotations

import io
import re
import tarfile
from typing import Any

from edge_app.errors import UsageError

from .hub import Hub

MAX_THUMBS = 500
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def thumbs_tar(hub: Hub, ids: Any) -> bytes:
    """A tar of the thumbnails of ``ids`` (a JSON list of image ids) that the hub has."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UsageError("thumbnail ids must be a JSON list of image ids")
    if len(ids) > MAX_THUMBS:
        raise UsageError(f"at most {MAX_THUMBS} thumbnails per request, got {len(ids)}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for image_id in dict.fromkeys(ids):
            path = hub.thumb_path(image_id)
            if not _ID.match(image_id) or image_id.startswith(".") or hub.store.image(image_id) is None \
                    or not path.is_file():
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{image_id}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
