"""Native libraries' stderr lines go to a file; partlens's own stderr output stays on the console."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = r'''
import logging, os, sys, warnings
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from edge_app.nativelog import native_stderr_to
log = logging.getLogger("demo")
with native_stderr_to(sys.argv[1]):
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")  # what TensorFlow's C++ side does
    log.info("python logging inside")
    print("python print to stderr inside", file=sys.stderr)
    warnings.warn("a python warning inside")
os.write(2, b"native after the block\n")
log.info("python logging after")
try:
    with native_stderr_to(sys.argv[1]):
        os.write(2, b"native line before a failure\n")
        raise RuntimeError("boom")
except RuntimeError:
    pass
missing = os.path.join(os.path.dirname(sys.argv[1]), "never", "native.log")
try:
    with native_stderr_to(missing):
        os.write(2, b"native line before a failure, no run folder\n")
        raise RuntimeError("boom")
except RuntimeError:
    pass
for interrupt in (KeyboardInterrupt, SystemExit):  # the user stopped it: nothing is left in the temp folder
    try:
        with native_stderr_to(missing):
            os.write(2, b"native line before an interrupt\n")
            raise interrupt()
    except BaseException:
        pass
'''


def test_native_stderr_goes_to_the_file_and_python_output_stays(tmp_path) -> None:
    sink = tmp_path / "native.log"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-c", CHILD, str(sink)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, TMPDIR=str(tmp)))
    assert out.returncode == 0, out.stderr
    err = out.stderr
    for shown in ("python logging inside", "python print to stderr inside", "a python warning inside",
                  "native after the block", "python logging after", "of the failed step are in "):
        assert shown in err, err
    assert "oneDNN" not in err and "before a failure" not in err and "interrupt" not in err
    kept = sink.read_text()
    assert "oneDNN custom operations are on" in kept and "python logging" not in kept
    named = [Path(part.split()[0]) for part in err.split("of the failed step are in ")[1:]]
    # A failure with its run folder present: the lines are kept there, beside the step's output, and named.
    assert named[0] == sink and kept.endswith("native line before a failure\n")
    # Without that folder: a temporary file, named in the log; the interrupted blocks leave nothing behind.
    assert named[1].parent == tmp and named[1].read_text() == "native line before a failure, no run folder\n"
    assert sorted(tmp.iterdir()) == [named[1]] and "interrupt" not in kept


def test_nothing_is_created_for_native_lines_when_the_folder_does_not_exist(tmp_path) -> None:
    from edge_app.nativelog import native_stderr_to

    with native_stderr_to(tmp_path / "never" / "native.log"):
        pass
    assert not (tmp_path / "never").exists()


LOGGED_CHILD = r'''
import logging, os, sys
logging.basicConfig(level=int(sys.argv[1]), format="%(levelname)s %(message)s")
from edge_app.nativelog import native_stderr_logged
log = logging.getLogger("backend")
with native_stderr_logged(log, "model.tflite"):
    os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"ERROR: something the runtime did not like\n")
    log.warning("python logging inside")
os.write(2, b"native after the block\n")
'''


@pytest.mark.parametrize("level", [logging.WARNING, logging.DEBUG])
def test_native_lines_of_a_short_step_go_to_the_log(tmp_path, level) -> None:
    """identify's first inference: LiteRT's INFO line only at debug level, anything else as a warning."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-c", LOGGED_CHILD, str(level)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, TMPDIR=str(tmp)))
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert "WARNING model.tflite: ERROR: something the runtime did not like" in lines
    assert "WARNING python logging inside" in lines and "native after the block" in lines
    xnn = "DEBUG model.tflite: INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    assert (xnn in lines) == (level == logging.DEBUG), lines
    assert sum("XNNPACK" in ln for ln in lines) == (level == logging.DEBUG)  # never raw on the console
    assert list(tmp.iterdir()) == []  # the temporary file is gone


THREADS_CHILD = r'''
import logging, os, sys, threading, time
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from edge_app.nativelog import native_stderr_logged
log = logging.getLogger("t")
a_in, b_in = threading.Event(), threading.Event()

def a():
    with native_stderr_logged(log, "a"):
        a_in.set()
        b_in.wait(0.5)  # B tries to enter while A holds the redirect, then A leaves first
        os.write(2, b"ERROR: from a\n")

def b():
    a_in.wait()
    b_in.set()
    with native_stderr_logged(log, "b"):
        os.write(2, b"ERROR: from b\n")
        time.sleep(0.1)

ts = [threading.Thread(target=a), threading.Thread(target=b)]
[t.start() for t in ts]
[t.join() for t in ts]
log.warning("logging still works")
os.write(2, b"descriptor 2 is the terminal again\n")
'''


def test_overlapping_native_blocks_in_two_threads_restore_stderr(tmp_path) -> None:
    """A review: two threads' blocks overlapping out of order left descriptor 2 on a deleted file and the logging
    handlers on a closed stream (log.warning raised); the redirect is one at a time now."""
    out = subprocess.run([sys.executable, "-c", THREADS_CHILD], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert "a: ERROR: from a" in lines and "b: ERROR: from b" in lines
    assert lines[-2:] == ["logging still works", "descriptor 2 is the terminal again"]
