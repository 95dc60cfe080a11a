"""Session-wide test set-up."""
from __future__ import annotations

# triton (imported by torch._dynamo, e.g. through torchvision.ops) bundles its own LLVM.
# Loading it AFTER TensorFlow/LiteRT is loaded segfaults the process (measured here with
# torch 2.14.1, tensorflow-cpu 2.21, ai-edge-litert 2.3); loading it first is fine. One pytest
# process runs runtime (LiteRT) tests before training/demo (torch) tests, so load it up front.
# (The Kivy UI flow runs in its own process for the same reason: Mesa's llvmpipe.)
try:  # pragma: no cover - depends on the install
    import triton  # noqa: F401
except Exception:  # triton absent (CPU-only torch) or broken: nothing to order
    pass
