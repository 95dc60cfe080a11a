"""Child process for the fault-injection test: one sync of DATA_DIR, announcing when it starts."""
from __future__ import annotations

import sys

from sync.client import SyncClient  # noqa: E402  (import cost paid before "go")


def main() -> None:
    client = SyncClient(sys.argv[1], smoke_test=lambda b: None)
    print("go", flush=True)
    client.sync(upload=False)
    print("done", flush=True)


if __name__ == "__main__":
    main()
