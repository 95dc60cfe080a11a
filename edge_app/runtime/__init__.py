"""The on-device runtime: backends, catalogue DB, vector index, identification, outbox.

No Kivy, torch or tensorflow here; inference libraries are imported when a backend is created.
"""
from __future__ import annotations

from .calibration import Calibration
from .catalogue import CatalogueDB
from .index import IndexStamp, VectorIndex
from .outbox import Outbox

__all__ = ["CatalogueDB", "VectorIndex", "IndexStamp", "Outbox", "Calibration", "Identifier", "IdentifyResult",
           "create_backend"]


def __getattr__(name: str):  # lazy: identify/backends pull in imageio/PIL
    if name in ("Identifier", "IdentifyResult"):
        from . import identify

        return getattr(identify, name)
    if name == "create_backend":
        from .backends import create_backend

        return create_backend
    raise AttributeError(name)
