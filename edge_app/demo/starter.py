"""Copy a synced tablet's state into a starter folder (what the APK ships as ``starter_bundle/``)."""
from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import UsageError


def install_starter(device_dir: Path, dest: Path) -> Path:
    """Copy a synced device's catalogue, keyring, active bundle and catalogue thumbnails into ``dest`` (the APK's
    starter data: a tablet used offline before its first sync shows the parts with their pictures).

    The enrolment (device token) and the outbox are NOT copied: a starter must carry no secrets.
    """
    import shutil
    import sqlite3

    from ..services import active_bundle_dir, read_active_pointer

    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} is not empty; refusing to overwrite a starter bundle")
    dest.mkdir(parents=True, exist_ok=True)
    src_db = sqlite3.connect(device_dir / "catalogue.db")
    dst_db = sqlite3.connect(dest / "catalogue.db")
    try:
        src_db.backup(dst_db)  # consistent copy, WAL included
    finally:
        src_db.close()
        dst_db.close()
    shutil.copy2(device_dir / "keyring.json", dest / "keyring.json")
    from ..runtime.catalogue import CatalogueDB

    db = CatalogueDB(device_dir / "catalogue.db")
    try:
        bundle = active_bundle_dir(device_dir, db)
    finally:
        db.close()
    shutil.copytree(bundle, dest / "bundles" / bundle.name)
    if (device_dir / "thumbs").is_dir():
        shutil.copytree(device_dir / "thumbs", dest / "thumbs")
    pointer = read_active_pointer(device_dir)
    if pointer is not None:
        atomic_write_json(dest / "active.json", pointer)
    return dest
