"""The ``partlens`` command: one thin front over the library.

Each package contributes its subcommands from a ``commands`` module with a
``register(subparsers)`` function. Those modules import nothing heavy at import time;
each handler imports its library function when it runs. Domain errors become one-line
messages and exit codes here, at the edge.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sqlite3
import sys
import threading
from typing import Any, Sequence

from .errors import BusyError, InputError, PartlensError, StorageError, UsageError
from .storage import is_disk_full

log = logging.getLogger(__name__)

COMMAND_MODULES = (
    "training.synth.commands",
    "training.commands",
    "export.commands",
    "edge_app.commands",
    "edge_app.demo",
    "edge_app.app.commands",
    "sync.commands",
    "benchmarks.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partlens",
        description="Identify spare parts from photos, on the device. Train, export, bundle, sync and run the app.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that package is not part of this install (e.g. on the device)
            raise
        mod.register(sub)
    return parser


def quiet_libraries() -> None:
    """Keep the native libraries' start-up chatter off the console (``-vv`` shows it).

    TensorFlow's C++ INFO lines (converter op counts) read ``TF_CPP_MIN_LOG_LEVEL`` when it loads;
    a value the user set wins. torch logs a deprecation of an API that litert-torch uses on every
    export. Messages the native code prints itself (absl's "All log messages before
    absl::InitializeLog()", oneDNN's notice) do not go through either and still show.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def _storage_full(command: str, exc: BaseException, name: str | None = None) -> int:
    """A full disk (or quota): one line and exit 8. Every partlens write goes to a temporary file that is renamed
    into place only when complete, or into a transaction, so nothing half-written is left as a result."""
    what = getattr(exc, "strerror", None) or str(exc)
    print(f"partlens {command}: error: storage full ({what}{f': {name}' if name else ''}); nothing half-written "
          "was kept: free space and run the command again", file=sys.stderr)
    return StorageError.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        quiet_libraries()
    previous = _terminate_as_exception()
    try:
        rc = args.func(args)
    except Terminated:  # SIGTERM (a supervisor, `kill`): unwound like Ctrl-C, so a hub the demo started is stopped
        print(f"partlens {args.command}: terminated", file=sys.stderr)
        return 143
    except PartlensError as exc:
        print(f"partlens {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"partlens {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
        if bad and all(0xDC80 <= ord(c) <= 0xDCFF for c in bad):  # undecodable bytes on the command line
            print(f"partlens {args.command}: error: an argument is not valid UTF-8 text ({exc.reason})",
                  file=sys.stderr)
            return UsageError.exit_code
        enc = getattr(sys.stdout, "encoding", None) or exc.encoding  # the output cannot carry a character
        print(f"partlens {args.command}: error: the output's encoding ({enc}) cannot show {bad!r}; use a UTF-8 "
              "locale or set PYTHONIOENCODING=utf-8", file=sys.stderr)
        return UsageError.exit_code
    except sqlite3.DatabaseError as exc:
        if is_disk_full(exc):
            return _storage_full(args.command, exc)
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            print(f"partlens {args.command}: error: a database is busy: another process (a sync, the app) is "
                  f"writing it; nothing changed, try again in a minute ({exc})", file=sys.stderr)
            return BusyError.exit_code
        # corrupt ("database disk image is malformed"): found only when a query reaches the damaged pages
        print(f"partlens {args.command}: error: a database is damaged ({exc}); restore it from a backup "
              "(`partlens hub restore` at the hub; a tablet gets its catalogue again at the next sync)",
              file=sys.stderr)
        return InputError.exit_code
    except OSError as exc:
        # a path that cannot be used as given (an output that is a folder, an unwritable place, a name too long
        # for the file system) or a full disk: one line naming the file; an OSError naming no file is a bug
        name = exc.filename2 or exc.filename  # a rename into place names the target second
        if is_disk_full(exc):  # (a write names no file: it reached here as a traceback and exit 1, an audit)
            return _storage_full(args.command, exc, name)
        if not name and not isinstance(exc, (IsADirectoryError, NotADirectoryError, FileExistsError,
                                             FileNotFoundError, PermissionError)):
            raise
        where = f": {name}" if name else ""
        print(f"partlens {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return InputError.exit_code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(rc or 0)


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so ``finally`` blocks and context managers run."""


def _terminate_as_exception() -> Any:
    """Turn SIGTERM into :class:`Terminated` for this command (the previous handler is returned to restore);
    None where that is not possible (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
