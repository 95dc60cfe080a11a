"""Shared test fixtures for sync: keys, tiny images, an injected embedder, signed bundles, hub servers."""
from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_app.signing import Keyring, SigningKey, init_key
from sync.hub.process import HubProcess
from sync.hub.process import free_port as free_port  # re-exported for the tests

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
DIM = 48


def make_key(d: Path) -> tuple[Path, SigningKey, Path]:
    """A private key file outside the repo and its public keyring file."""
    path, kid = init_key(d)
    return path, SigningKey.load(path), d / f"{kid}.pub.json"


def part_image(seed: int, noise: float = 0.0, size: int = 48) -> bytes:
    """A JPEG of random 4x4 colour blocks (distinct per seed); ``noise`` perturbs it like a field photo."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    arr = np.kron(blocks, np.ones((size // 4, size // 4, 1), np.float32))
    if noise:
        arr += np.random.default_rng(seed + 10_000).normal(0, noise, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


class PixelEmbedder:
    """A deterministic stand-in for a bundle's model: 4x4 colour means, centred, L2-normalised.

    ``salt`` mimics a different model (a new bundle gives different vectors)."""

    def __init__(self, bundle_id: str, salt: int = 0) -> None:
        self.bundle_id = bundle_id
        rng = np.random.default_rng(salt)
        self.proj = rng.normal(size=(48, DIM)).astype(np.float32) if salt else np.eye(48, DIM, dtype=np.float32)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        out = []
        for img in images:
            small = np.asarray(img.convert("RGB").resize((4, 4)), np.float32).reshape(-1) / 255.0 - 0.5
            v = small @ self.proj
            out.append(v / max(np.linalg.norm(v), 1e-9))
        return np.stack(out).astype(np.float32)


def embedder_factory(bundle_dir: Path, keyring: Keyring) -> PixelEmbedder:
    from edge_app.bundle import load_bundle

    b = load_bundle(bundle_dir, keyring)
    return PixelEmbedder(b.bundle_id, salt=b.version - 1)


def make_bundle(root: Path, key: SigningKey, version: int, n_parts: int = 3,
                calibration: dict | None = None) -> Path:
    """A signed device bundle (its model file is a placeholder; tests inject the smoke test)."""
    from edge_app.preprocess import PreprocessSpec
    from export.bundle import build_bundle

    model = root / f"model-v{version}.tflite"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"placeholder model v%d" % version)
    rng = np.random.default_rng(version)
    return build_bundle(root / "bundles", version=version, model_name="test", model_files={"model.tflite": model},
                        kind="device", preprocess=PreprocessSpec(size=(32, 32)),
                        labels=[f"P{i}" for i in range(n_parts)],
                        embeddings=rng.normal(size=(n_parts, DIM)).astype(np.float32),
                        catalogue_rows=[{"image_id": f"i{i}", "part_number": f"P{i}"} for i in range(n_parts)],
                        key=key, quantization={"mode": "none"}, parity={"ok": True}, calibration=calibration)


def write_images(d: Path, seeds: Sequence[int]) -> list[Path]:
    out = []
    for s in seeds:
        p = d / f"img{s}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(part_image(s))
        out.append(p)
    return out


class HubServer(HubProcess):
    """A real hub process on a free loopback port, started at construction (tests call ``stop()``)."""

    def __init__(self, hub_dir: Path, port: int | None = None) -> None:
        super().__init__(hub_dir, port=port)
        self.start()


class CuttingProxy:
    """A loopback TCP proxy that drops the first ``cuts`` large responses after ``cut_at`` bytes.

    It records request heads, so a test can see the client resumed with a ``Range`` header."""

    def __init__(self, upstream_port: int, cut_at: int, cuts: int = 1) -> None:
        import threading

        self.upstream = upstream_port
        self.cut_at = cut_at
        self.cuts_left = cuts
        self.requests: list[str] = []
        self.cut_done = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            text = head.split(b"\r\n\r\n")[0].decode("latin-1")
            with self._lock:
                self.requests.append(text)
            up.sendall(head)
            # forward any request body
            length = 0
            for line in text.split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                up.sendall(chunk)
                body += chunk
            sent = 0
            cut = False
            while True:
                data = up.recv(65536)
                if not data:
                    break
                with self._lock:
                    if self.cuts_left > 0 and sent + len(data) > self.cut_at and not cut:
                        self.cuts_left -= 1
                        self.cut_done += 1
                        cut = True
                if cut:
                    conn.sendall(data[: max(0, self.cut_at - sent)])
                    break
                conn.sendall(data)
                sent += len(data)
        finally:
            up.close()
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def upload_items(world: Any, uploads: list[tuple[str, dict, bytes | None]]) -> list[str]:
    """Queue ``(kind, payload, photo bytes)`` in the device outbox and sync them up; their UUIDs."""
    from edge_app.runtime.outbox import Outbox
    from sync.client import SyncClient
    from sync.transport import InMemoryTransport

    ob = Outbox(world.device_dir / "outbox.db")
    ids = []
    for kind, payload, photo in uploads:
        blob = None
        if photo is not None:
            blob = world.root / f"upload-{len(list(world.root.glob('upload-*')))}.jpg"
            blob.write_bytes(photo)
        ids.append(ob.add(kind, payload, blob_path=blob))
    ob.close()
    c = SyncClient(world.device_dir, transport=InMemoryTransport(world.hub, world.payload["token"]),
                   smoke_test=lambda b: None)
    assert c.sync().uploaded == len(uploads)
    return ids
