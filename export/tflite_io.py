"""Give a fully-int8 TFLite model a float32 interface.

The litert-torch PT2E path folds the boundary quantize/dequantize ops into int8 model inputs and
outputs. The product contract is float32 in (the normalised image) and float32 out (``logits``
and ``embedding``), so this rewrites the flatbuffer: each int8/uint8 input gets a float32 input
followed by a QUANTIZE op, each int8/uint8 output a DEQUANTIZE op to a float32 output. Signature
names are kept (outputs are matched by name, never by index).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)



def _opcode_index(model, builtin: int) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == builtin:
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode = builtin
    oc.deprecatedBuiltinCode = min(builtin, 127)
    oc.version = 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _new_float_tensor(model, sub, like, name: str) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    t = schema.TensorT()
    t.shape = list(like.shape) if like.shape is not None else None
    t.shapeSignature = list(like.shapeSignature) if like.shapeSignature is not None else None
    t.type = schema.TensorType.FLOAT32
    t.name = name.encode() if isinstance(name, str) else name
    model.buffers.append(schema.BufferT())
    t.buffer = len(model.buffers) - 1
    sub.tensors.append(t)
    return len(sub.tensors) - 1


def float_interface(model_bytes: bytes) -> tuple[bytes, list[str]]:
    """Rewrite int8 model inputs/outputs to float32; return (new bytes, names of what changed)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(model_bytes))
    quant_types = (schema.TensorType.INT8, schema.TensorType.UINT8)
    changed: list[str] = []
    for si, sub in enumerate(model.subgraphs):
        remap: dict[int, int] = {}
        new_first, new_last = [], []
        for pos, ti in enumerate(list(sub.inputs)):
            t = sub.tensors[ti]
            if t.type not in quant_types:
                continue
            fi = _new_float_tensor(model, sub, t, (t.name.decode() if isinstance(t.name, bytes) else t.name) + "_float")
            op = schema.OperatorT()
            op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.QUANTIZE)
            op.inputs, op.outputs = [fi], [ti]
            new_first.append(op)
            sub.inputs[pos] = fi
            remap[ti] = fi
            changed.append(f"input {t.name!r}")
        for pos, ti in enumerate(list(sub.outputs)):
            t = sub.tensors[ti]
            if t.type not in quant_types:
                continue
            fo = _new_float_tensor(model, sub, t, (t.name.decode() if isinstance(t.name, bytes) else t.name) + "_float")
            op = schema.OperatorT()
            op.opcodeIndex = _opcode_index(model, schema.BuiltinOperator.DEQUANTIZE)
            op.inputs, op.outputs = [ti], [fo]
            new_last.append(op)
            sub.outputs[pos] = fo
            remap[ti] = fo
            changed.append(f"output {t.name!r}")
        sub.operators = new_first + list(sub.operators or []) + new_last
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex != si:
                continue
            for tm in list(sig.inputs or []) + list(sig.outputs or []):
                if tm.tensorIndex in remap:
                    tm.tensorIndex = remap[tm.tensorIndex]
    if changed:
        log.info("float32 interface added for %s", ", ".join(changed))
    return bytes(fbu.convert_object_to_bytearray(model)), changed
