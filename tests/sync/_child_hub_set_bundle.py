"""Child for the hub fault-injection test: ``python -m tests.sync._child_hub_set_bundle HUB BUNDLE`` opens the hub
(with the tests' pixel embedder) and runs ``set_bundle``, printing "go" first and "done" after."""
from __future__ import annotations

import sys

from sync.hub.hub import Hub  # noqa: E402  (import cost paid before "go")
from tests.sync.helpers import embedder_factory


def main() -> None:
    hub = Hub(sys.argv[1], embedder_factory=embedder_factory)
    print("go", flush=True)
    hub.set_bundle(sys.argv[2])
    print("done", flush=True)


if __name__ == "__main__":
    main()
