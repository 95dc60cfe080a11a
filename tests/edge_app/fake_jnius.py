"""A fake ``jnius`` exposing just enough of the Java LiteRT API to drive AndroidBackend.

It asserts what the real Java interpreter needs: direct ByteBuffers in native byte order, of
exactly the tensor's byte size, and outputs requested by signature output NAME (or by the
index of the named tensor). The "model" is a small NumPy function.
"""
from __future__ import annotations

import sys
import types

import numpy as np

NATIVE = "LITTLE_ENDIAN" if sys.byteorder == "little" else "BIG_ENDIAN"
IN_SHAPE = [1, 8, 8, 3]  # NHWC int8
IN_SCALE, IN_ZP = 2.0 / 255, -1
EMB_DIM, N_CLASSES = 6, 4
LOGIT_SCALE, LOGIT_ZP = 0.05, 128
W = np.random.default_rng(3).normal(size=(3 * 64, EMB_DIM)).astype(np.float32) / 8


def reference(x_nhwc_float: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the fake model computes from a dequantized float input."""
    emb = x_nhwc_float.reshape(len(x_nhwc_float), -1) @ W
    logits = emb[:, :N_CLASSES]
    return emb, logits


class ByteOrder:
    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def nativeOrder() -> "ByteOrder":
        return ByteOrder(NATIVE)

    @staticmethod
    def bigEndian() -> "ByteOrder":
        return ByteOrder("BIG_ENDIAN")


class ByteBuffer:
    allocations: list["ByteBuffer"] = []

    def __init__(self, n: int, direct: bool) -> None:
        self.data = bytearray(n)
        self.direct = direct
        self.byte_order = "BIG_ENDIAN"  # Java's default
        self.pos = 0

    @classmethod
    def allocateDirect(cls, n: int) -> "ByteBuffer":
        b = cls(n, True)
        cls.allocations.append(b)
        return b

    @classmethod
    def allocate(cls, n: int) -> "ByteBuffer":
        return cls(n, False)

    def order(self, o: ByteOrder) -> "ByteBuffer":
        self.byte_order = o.name
        return self

    def capacity(self) -> int:
        return len(self.data)

    def put(self, src: bytes) -> "ByteBuffer":
        assert isinstance(src, (bytes, bytearray)), type(src)
        assert self.pos + len(src) <= len(self.data), "BufferOverflowException"
        self.data[self.pos:self.pos + len(src)] = src
        self.pos += len(src)
        return self

    def get(self, dst: bytearray) -> "ByteBuffer":
        assert self.pos + len(dst) <= len(self.data), "BufferUnderflowException"
        dst[:] = self.data[self.pos:self.pos + len(dst)]  # pyjnius copies byte[] back into a bytearray
        self.pos += len(dst)
        return self

    def rewind(self) -> "ByteBuffer":
        self.pos = 0
        return self


class HashMap(dict):
    def put(self, k, v):
        self[k] = v


class Integer(int):
    pass


class File:
    def __init__(self, path: str) -> None:
        self.path = path


def _returns(java_type: str):
    """A fake Java method whose returned object pyjnius wraps by looking up ``java_type`` (the method's declared
    return type) on the CALLING thread, as the real pyjnius does (``convert_jobject_to_python``)."""
    def wrap(fn):
        def method(*args, **kwargs):
            out = fn(*args, **kwargs)
            _find_class(java_type)
            return out
        return method
    return wrap


class Options:
    def __init__(self) -> None:
        self.threads = None
        self.closed = False

    # the real Interpreter.Options narrows InterpreterApi.Options.setNumThreads's return type; javac adds a bridge
    # method returning InterpreterApi$Options and pyjnius, seeing both, calls the bridge (the longer signature)
    @_returns("org.tensorflow.lite.InterpreterApi$Options")
    def setNumThreads(self, n: int) -> "Options":
        self.threads = n
        return self


class _Named:
    def __init__(self, name: str) -> None:
        self._n = name

    def name(self) -> str:
        return self._n


class _Quant:
    def __init__(self, scale: float, zp: int) -> None:
        self.s, self.z = scale, zp

    def getScale(self) -> float:
        return self.s

    def getZeroPoint(self) -> int:
        return self.z


class Tensor:
    def __init__(self, name, dtype, shape, scale=0.0, zp=0) -> None:
        self._name, self._dtype, self._shape, self._q = name, dtype, shape, _Quant(scale, zp)

    def name(self):
        return self._name

    @_returns("org.tensorflow.lite.DataType")
    def dataType(self):
        return _Named(self._dtype)

    def shape(self):
        return list(self._shape)

    def numBytes(self):
        return int(np.prod(self._shape)) * {"FLOAT32": 4, "INT8": 1, "UINT8": 1}[self._dtype]

    @_returns("org.tensorflow.lite.Tensor$QuantizationParams")
    def quantizationParams(self):
        return self._q


class Interpreter:
    """Fake ``org.tensorflow.lite.Interpreter``; ``with_signature`` toggles the signature API."""

    with_signature = True
    instances: list["Interpreter"] = []

    def __init__(self, file: File, options: Options) -> None:
        assert isinstance(file, File)
        self.options = options
        self.input = Tensor("serving_default_image:0", "INT8", IN_SHAPE, IN_SCALE, IN_ZP)
        self.outs = {"embedding": Tensor("StatefulPartitionedCall:0", "FLOAT32", [1, EMB_DIM]),
                     "logits": Tensor("StatefulPartitionedCall:1", "UINT8", [1, N_CLASSES], LOGIT_SCALE, LOGIT_ZP)}
        self.out_order = ["logits", "embedding"]  # index order differs from the name order on purpose
        self.runs = 0
        Interpreter.instances.append(self)

    # signature API
    def getSignatureKeys(self):
        return ["serving_default"] if self.with_signature else []

    def getSignatureInputs(self, key):
        return ["image"]

    def getSignatureOutputs(self, key):
        return list(self.outs)

    @_returns("org.tensorflow.lite.Tensor")
    def getInputTensorFromSignature(self, name, key):
        assert name == "image"
        return self.input

    @_returns("org.tensorflow.lite.Tensor")
    def getOutputTensorFromSignature(self, name, key):
        return self.outs[name]

    # index API
    def getInputTensorCount(self):
        return 1

    @_returns("org.tensorflow.lite.Tensor")
    def getInputTensor(self, i):
        return self.input

    def getOutputTensorCount(self):
        return len(self.out_order)

    @_returns("org.tensorflow.lite.Tensor")
    def getOutputTensor(self, i):
        t = self.outs[self.out_order[i]]
        return Tensor(self.out_order[i], t._dtype, t._shape, t._q.s, t._q.z)

    @staticmethod
    def _check(buf: ByteBuffer, tensor: Tensor) -> None:
        assert isinstance(buf, ByteBuffer), type(buf)
        assert buf.direct, "the Java interpreter needs a DIRECT ByteBuffer"
        assert buf.byte_order == NATIVE, f"ByteBuffer must be in native order, got {buf.byte_order}"
        assert buf.capacity() == tensor.numBytes(), (buf.capacity(), tensor.numBytes())

    def _compute(self, inp: ByteBuffer, outs: dict[str, ByteBuffer]) -> None:
        self._check(inp, self.input)
        q = np.frombuffer(bytes(inp.data), np.int8).reshape(IN_SHAPE)
        x = (q.astype(np.float32) - IN_ZP) * IN_SCALE
        emb, logits = reference(x)
        ql = np.clip(np.rint(logits / LOGIT_SCALE) + LOGIT_ZP, 0, 255).astype(np.uint8)
        values = {"embedding": emb.astype("<f4").tobytes(), "logits": ql.tobytes()}
        for name, buf in outs.items():
            self._check(buf, self.outs[name])
            buf.data[:] = values[name]
        self.runs += 1

    def runSignature(self, inputs: HashMap, outputs: HashMap, key: str) -> None:
        assert self.with_signature and key == "serving_default"
        assert set(inputs) == {"image"}, inputs.keys()
        assert set(outputs) <= set(self.outs), f"outputs must be keyed by signature output name: {list(outputs)}"
        self._compute(inputs["image"], dict(outputs))

    def runForMultipleInputsOutputs(self, inputs, outputs: HashMap) -> None:
        assert not self.with_signature
        assert len(inputs) == 1
        self._compute(inputs[0], {self.out_order[int(i)]: b for i, b in outputs.items()})

    def close(self) -> None:
        assert not self.closed, "Interpreter.close() twice"
        self.closed = True

    closed = False


CLASSES = {
    "org.tensorflow.lite.Interpreter": Interpreter,
    "org.tensorflow.lite.Interpreter$Options": Options,
    "java.io.File": File,
    "java.nio.ByteBuffer": ByteBuffer,
    "java.nio.ByteOrder": ByteOrder,
    "java.util.HashMap": HashMap,
    "java.lang.Integer": Integer,
}


#: the package of the app's gradle dependency (LiteRT): the JVM's system class loader, which a thread pyjnius
#: attaches (the app's worker thread) uses, does not know these classes; every other class here is a system one
APP_PACKAGE = "org.tensorflow.lite."
#: classes only ever met as a returned object's type (pyjnius looks them up to wrap the object)
RETURN_TYPES = {"org.tensorflow.lite.InterpreterApi$Options", "org.tensorflow.lite.InterpreterApi",
                "org.tensorflow.lite.InterpreterImpl$Options", "org.tensorflow.lite.Tensor",
                "org.tensorflow.lite.Tensor$QuantizationParams", "org.tensorflow.lite.DataType"}
#: looked up on the main thread (pyjnius caches classes by name)
LOADED: set[str] = set()


class JavaException(Exception):
    pass


def _find_class(name: str) -> None:
    """Like Android: a thread other than the main one finds only system classes, unless pyjnius cached it."""
    import threading

    if name not in CLASSES and name not in RETURN_TYPES:
        raise JavaException(f"java.lang.ClassNotFoundException: {name}")
    if name.startswith(APP_PACKAGE) and name not in LOADED:
        if threading.current_thread() is not threading.main_thread():
            raise JavaException(f"java.lang.ClassNotFoundException: {name}")
        LOADED.add(name)


def autoclass(name: str):
    _find_class(name)
    return CLASSES.get(name, object)


def module() -> types.ModuleType:
    mod = types.ModuleType("jnius")
    mod.autoclass = autoclass  # type: ignore[attr-defined]
    return mod
