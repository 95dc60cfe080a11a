"""Keep native libraries' log lines off the console.

TensorFlow and LiteRT write C++ log lines straight to file descriptor 2 when they load ("All log messages
before absl::InitializeLog() ...", the oneDNN notice, "Created TensorFlow Lite XNNPACK delegate"); no Python
setting silences all of them (``TF_CPP_MIN_LOG_LEVEL`` does not reach the XNNPACK line). :func:`native_stderr_to`
points descriptor 2 at a file for a block of work and gives Python's own ``sys.stderr`` (logging, warnings,
progress) a private copy of the terminal, so what partlens says still shows and the native lines are kept, not
lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

#: descriptor 2 is the process's: one redirect at a time (a block nested in the same thread is fine, another thread
#: waits): two overlapping blocks restored each other's descriptors out of order (a review found stderr left on a
#: deleted file and the logging handlers on a closed stream)
_REDIRECT = threading.RLock()


def _stream_handlers(stream: object) -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream]


@contextlib.contextmanager
def _fd2_collected() -> Iterator[Path | None]:
    """Point descriptor 2 at a temporary file for the block (yielded; ``None`` where there is no real descriptor
    2, e.g. an embedded interpreter) while Python's ``sys.stderr`` and the logging handlers on it keep writing to
    the terminal. The caller owns the file afterwards."""
    with _REDIRECT:
        old_stream = sys.stderr
        try:
            old_stream.flush()
            saved = os.dup(2)
        except (AttributeError, OSError, ValueError):
            yield None
            return
        with _redirected(old_stream, saved) as path:
            yield path


@contextlib.contextmanager
def _redirected(old_stream: Any, saved: int) -> Iterator[Path]:
    import tempfile

    fd, tmp_name = tempfile.mkstemp(prefix="partlens-native-", suffix=".log")
    handlers = _stream_handlers(old_stream)
    ours = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old_stream, "encoding", None) or "utf-8",
                     errors="backslashreplace")
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = ours
    for h in handlers:
        h.setStream(ours)
    try:
        yield Path(tmp_name)
    finally:
        ours.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_stream
        for h in handlers:
            h.setStream(old_stream)
        ours.close()


@contextlib.contextmanager
def native_stderr_to(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Inside the block, whatever native code writes to descriptor 2 is collected; Python's ``sys.stderr`` and the
    logging handlers on it keep writing to the terminal. The lines are appended to ``path`` if its folder exists
    by then (nothing is created for them: a refused command writes nothing); when the block fails with an error
    and that folder does not exist, they stay in a temporary file that the log names, since a native error
    message may be there."""
    path = Path(path)
    failure: BaseException | None = None
    with _fd2_collected() as tmp:
        try:
            yield path
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if tmp is not None:
                _keep_lines(tmp, path, failure)


@contextlib.contextmanager
def native_stderr_logged(logger: logging.Logger, what: str) -> Iterator[None]:
    """For a short native step of a command whose output is read by people (e.g. LiteRT's first allocation, which
    prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."): the native lines go to ``logger``, the
    ``INFO:`` ones at debug level (``partlens -v`` shows them) and any other at warning level, naming ``what``."""
    with _fd2_collected() as tmp:
        try:
            yield
        finally:
            if tmp is not None:
                try:
                    lines = tmp.read_text("utf-8", errors="backslashreplace").splitlines()
                finally:
                    tmp.unlink()
                for line in filter(None, (ln.strip() for ln in lines)):
                    level = logging.DEBUG if line.startswith("INFO:") else logging.WARNING
                    logger.log(level, "%s: %s", what, line)


def _keep_lines(tmp: Path, path: Path, failure: BaseException | None) -> None:
    """Append the collected lines to ``path`` when its folder exists (beside the step's other output, also when
    it failed); otherwise keep them in ``tmp`` only when the step failed with an error (an interrupt by the user
    or SIGTERM is not a native failure: nothing is left in the temporary folder)."""
    data = tmp.read_bytes()
    if data and path.parent.is_dir():
        with open(path, "ab") as out:
            out.write(data)
        tmp.unlink()
        if isinstance(failure, Exception):
            log.error("native library messages (TensorFlow/LiteRT) of the failed step are in %s", path)
        return
    if data and isinstance(failure, Exception):
        log.error("native library messages (TensorFlow/LiteRT) of the failed step are in %s", tmp)
        return
    tmp.unlink()
