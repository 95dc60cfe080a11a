"""Run a hub HTTP server as a child process on 127.0.0.1 (the demo and the tests use it).

``with HubProcess(hub_dir) as hub: ...`` starts ``partlens hub serve`` on a free loopback port, waits until the
API answers, and always stops the process on exit, including on an exception or Ctrl-C.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from edge_app.errors import SyncError

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class HubProcess:
    """A real hub server process; a context manager that never leaves it running."""

    def __init__(self, hub_dir: str | os.PathLike[str], *, port: int | None = None, host: str = "127.0.0.1",
                 start_timeout: float = 30.0, plain: bool = False) -> None:
        from .tls import cert_pem, has_tls

        self.hub_dir = Path(hub_dir)
        self.host = host
        self.port = port or free_port(host)
        self.tls = has_tls(self.hub_dir) and not plain  # HTTPS when the hub has a certificate (`hub serve`)
        self.url = f"{'https' if self.tls else 'http'}://{host}:{self.port}"
        self._opener = urllib.request.build_opener()
        if self.tls:
            from ..transport import pinned_opener
            from .tls import fingerprint

            self._opener = pinned_opener(fingerprint(cert_pem(self.hub_dir)))
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None  # a temp file, not a pipe: nobody drains a pipe while the server runs

    def start(self) -> "HubProcess":
        env = dict(os.environ, PARTLENS_HUB=str(self.hub_dir))
        # the server stops when this process dies, also by SIGKILL (no `finally` runs then). Linux sends the
        # parent-death signal when the THREAD that started the child ends: only a main-thread start asks for it
        if threading.current_thread() is threading.main_thread():
            env["PARTLENS_HUB_PARENT_PID"] = str(os.getpid())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH", "")) if p)
        self._stderr = tempfile.TemporaryFile()
        # exactly what an admin runs: `partlens hub serve` (HTTPS with the hub's certificate when it has one)
        cmd = [sys.executable, "-m", "edge_app.cli", "hub", "serve", "--hub", str(self.hub_dir), "--host", self.host,
               "--port", str(self.port), "--log-level", "warning"] + (["--plain"] if not self.tls else [])
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr)
        try:  # from here on the server process exists: whatever stops the wait (Ctrl-C too) stops it
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise SyncError(f"hub server exited with code {self.proc.returncode}: {self._stderr_tail()}")
                try:
                    self._opener.open(self.url + "/openapi.json", timeout=1).read()
                    log.info("hub: serving %s on %s (pid %d)", self.hub_dir, self.url, self.proc.pid)
                    return self
                except (urllib.error.URLError, OSError):
                    time.sleep(0.1)
            raise SyncError(f"hub server did not answer on {self.url} within {self.start_timeout:.0f} s")
        except BaseException:
            self.stop()
            raise

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        """Terminate (then kill) the server; safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_stderr()
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_stderr()
        log.info("hub: stopped %s", self.url)

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "HubProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
