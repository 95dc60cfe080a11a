"""Child for ``test_storage_full.py`` (``tests.fullfs.run_on_tmpfs``): MOUNT is a small tmpfs.

``python -m tests.edge_app._child_cli_full MOUNT`` fills MOUNT to the last byte and runs `partlens keys init` into
it, as a user whose disk filled up would; prints one JSON object with its exit code and stderr."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path


def main() -> None:
    from edge_app.cli import main as cli
    from tests.fullfs import fill_to

    mount = Path(sys.argv[1])
    fill_to(mount, 0)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli(["keys", "init", "--dir", str(mount / "keys")])
    print(json.dumps({"rc": rc, "stderr": err.getvalue(),
                      "left": sorted(p.name for p in (mount / "keys").iterdir()) if (mount / "keys").is_dir() else []}))


if __name__ == "__main__":
    main()
