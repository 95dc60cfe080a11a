"""Export trained models to ONNX / TFLite behind a parity gate, and pack them into signed bundles.

Modules (torch, onnx, litert-torch are imported lazily, inside the functions that need them):
``formats`` (the format table and its options), ``wrapper`` (what is exported), ``onnx_export``,
``tflite_export`` (+ ``tflite_io`` float interface, ``metadata``), ``runners`` (run any model by
output name), ``parity`` (the gate), ``inputs`` / ``catalogue`` (real images through the device
preprocessing), ``pipeline`` (export a checkpoint, bundle exports), ``bundle`` (the signed bundle
writer; :mod:`edge_app.bundle` reads and verifies), ``commands`` (CLI).
"""
