"""Native libraries' stderr lines go to a file; partlens's own stderr output stays on the console."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
'''


def test_native_stderr_goes_to_the_file_and_python_output_stays(tmp_path) -> None:
    sink = tmp_path / "native.log"
    out = subprocess.run([sys.executable, "-c", CHILD, str(sink)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    err = out.stderr
    for shown in ("python logging inside", "python print to stderr inside", "a python warning inside",
                  "native after the block", "python logging after", "of the failed step are in "):
        assert shown in err, err
    assert "oneDNN" not in err and "before a failure" not in err
    kept = sink.read_text()
    assert "oneDNN custom operations are on" in kept and "python logging" not in kept
    failed_log = Path(err.split("of the failed step are in ")[1].split()[0])  # a temporary file, named in the log
    assert failed_log.read_text() == "native line before a failure\n" and "before a failure" not in kept
    failed_log.unlink()


def test_nothing_is_created_for_native_lines_when_the_folder_does_not_exist(tmp_path) -> None:
    from edge_app.nativelog import native_stderr_to

    with native_stderr_to(tmp_path / "never" / "native.log"):
        pass
    assert not (tmp_path / "never").exists()
