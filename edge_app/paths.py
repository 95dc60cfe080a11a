"""Where a device keeps its data: one rule for the CLI, the sync client and the app."""
from __future__ import annotations

import os
from pathlib import Path

ENV = "PARTLENS_DEVICE_DIR"


def device_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$PARTLENS_DEVICE_DIR``, else ``~/.local/share/partlens/device``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV)
    return Path(env) if env else Path.home() / ".local" / "share" / "partlens" / "device"
