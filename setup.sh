#!/usr/bin/env bash
# partlens set-up: make the project-local venv, install every pinned dependency, then run the main job.
#   bash setup.sh                  install, then run `partlens demo` on built-in defaults
#   bash setup.sh --install-only   install only (CI uses this before the tests)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "partlens needs Python 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Everything pinned in pyproject.toml (torch 2.14.1 + torchvision 0.29.1 is the pair that works here).
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[all]'
# tflite-support's metadata writer loads libusb-1.0 (a C library, not on PyPI): install it when missing.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq libusb-1.0-0 >/dev/null || echo "setup.sh: could not install libusb-1.0-0; TFLite metadata will be skipped (exports say so)" >&2
  else
    echo "setup.sh: libusb-1.0 is missing (apt-get install libusb-1.0-0); TFLite metadata will be skipped" >&2
  fi
fi
# tflite-support's metadata writer: its protobuf<4 pin conflicts with TensorFlow, so no deps (see README).
.venv/bin/python -m pip install --quiet --no-deps 'tflite-support==0.4.4'
if [ "${1:-}" != "--install-only" ]; then
  .venv/bin/partlens demo
fi
