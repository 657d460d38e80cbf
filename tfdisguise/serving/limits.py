"""What one request may hold, checked before anything is allocated.

A TensorProto declares its shape apart from its values, so a 41-byte request can
declare [400000, 28, 28, 1] and hold nothing; `tf.make_ndarray` would then build
the whole array. These checks read only the declaration and the lengths of the
value fields: the declared shape and dtype must fit the signature, the values
must be exactly as many as the shape declares, and the decoded size must stay
under a cap. The REST API's JSON gets the same checks on its nested lists.

The REST server's defaults are defined in `tfdisguise.serving` (which the CLI
imports without loading TensorFlow) and re-exported here.

>>> import tensorflow as tf
>>> spec = tf.TensorSpec([None, 2], tf.float32)
>>> bomb = tf.make_tensor_proto(0.0, shape=[400000, 2])
>>> check_tensor_proto("x", bomb, max_bytes=1 << 20, spec=spec)
Traceback (most recent call last):
...
ValueError: Input 'x' declares shape [400000, 2] (3.05 MiB decoded), more than the limit of 1.00 MiB per request.
>>> check_tensor_proto("x", tf.make_tensor_proto([[1.0, 2.0]]), max_bytes=1 << 20, spec=spec)
8
>>> json_shape([[1, 2], [3, 4], [5, 6]])
(3, 2)
"""

from __future__ import annotations

import contextlib
import math
import threading

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tfdisguise.serving import (  # re-exported: the REST server's defaults, beside the checks
    DEFAULT_REST_MAX_BODY_BYTES,
    DEFAULT_REST_MAX_CONNECTIONS,
    DEFAULT_REST_READ_TIMEOUT,
)
from tfdisguise.serving.savedmodel import fed_shape

__all__ = [
    "DEFAULT_REST_MAX_BODY_BYTES",
    "DEFAULT_REST_MAX_CONNECTIONS",
    "DEFAULT_REST_READ_TIMEOUT",
    "InflightBudget",
    "check_json_input",
    "check_tensor_proto",
    "json_shape",
]

# The repeated field that holds a dtype's values (TensorFlow's own reading of a TensorProto).
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val", types_pb2.DT_HALF: "half_val", types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_COMPLEX64: "scomplex_val", types_pb2.DT_COMPLEX128: "dcomplex_val",
}
_POINTER_BYTES = 8  # a string element is at least a pointer once decoded


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def _element_bytes(dtype: tf.DType) -> int:
    return _POINTER_BYTES if dtype == tf.string else dtype.size


def _check_against(name: str, shape: tuple[int, ...], dtype: tf.DType, spec: tf.TensorSpec | None) -> None:
    if spec is None:
        return
    if dtype != spec.dtype:
        raise ValueError(f"Expects input '{name}' to be {spec.dtype.name} but {dtype.name} is provided")
    if fed_shape(shape, spec.shape) is None:  # TF Serving's [1] for a declared [None, 1] fits (see fed_shape)
        raise ValueError(f"Input '{name}' has shape {list(shape)}, but the signature expects {spec.shape.as_list()}")


def _check_size(name: str, shape: tuple[int, ...], dtype: tf.DType, max_bytes: int) -> int:
    nbytes = math.prod(shape) * _element_bytes(dtype)
    if nbytes > max_bytes:
        raise ValueError(f"Input '{name}' declares shape {list(shape)} ({_mib(nbytes)} decoded), more than the "
                         f"limit of {_mib(max_bytes)} per request.")
    return nbytes


def check_tensor_proto(name: str, proto, max_bytes: int, spec: tf.TensorSpec | None = None) -> int:
    """Checks a TensorProto's declaration and value count; returns its decoded size in bytes.

    Raises ValueError, naming `name`, for a shape or dtype that does not fit
    `spec` (when given), a decoded size over `max_bytes`, or values that are
    not exactly as many as the declared shape holds.
    """
    if proto.tensor_shape.unknown_rank:
        raise ValueError(f"Input '{name}' must have a known shape.")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"Input '{name}' has negative dimensions: {list(shape)}")
    if proto.dtype not in _VALUE_FIELD:
        raise ValueError(f"Input '{name}' has dtype {types_pb2.DataType.Name(proto.dtype)}, which is not served.")
    dtype = tf.as_dtype(proto.dtype)
    _check_against(name, shape, dtype, spec)
    nbytes = _check_size(name, shape, dtype, max_bytes)
    count = math.prod(shape)
    if proto.tensor_content and dtype != tf.string:
        held, unit = len(proto.tensor_content), f"bytes of tensor_content (expected {count * dtype.size})"
        ok = held == count * dtype.size
    else:
        field = getattr(proto, _VALUE_FIELD[proto.dtype])
        per_element = 2 if dtype.is_complex else 1
        held, unit = len(field), f"values (expected {count * per_element})"
        ok = held == count * per_element
    if not ok:
        # TensorFlow would fill the missing values with the last one: a few bytes could then claim gigabytes.
        raise ValueError(f"Input '{name}' declares shape {list(shape)} but holds {held} {unit}.")
    return nbytes


class InflightBudget:
    """The decoded input bytes that all requests in flight may hold together (--max_inflight_bytes).

    `hold(nbytes)` is taken once a request's declarations are checked and before its values are decoded, and
    given back when it has been answered; past `limit`, it raises a RESOURCE_EXHAUSTED `ServingError` at once
    (no waiting: a client retries, and a server under a flood keeps its memory).
    """

    def __init__(self, limit: int):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"`max_inflight_bytes` must be a positive integer. Received: {limit!r}")
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, nbytes: int):
        from tfdisguise.serving.registry import ServingError

        with self._lock:
            if self.used + nbytes > self.limit:
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"The server is already decoding {_mib(self.used)} of requests; this one's "
                                   f"{_mib(nbytes)} would pass its limit of {_mib(self.limit)} in flight "
                                   f"(--max_inflight_bytes). Retry later, or send fewer images per request.")
            self.used += nbytes
        try:
            yield
        finally:
            with self._lock:
                self.used -= nbytes


def json_shape(value) -> tuple[int, ...]:
    """The shape that nested JSON lists declare, read along their first elements (ragged lists fail later)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def check_json_input(name: str, value, max_bytes: int, spec: tf.TensorSpec) -> int:
    """The REST counterpart of `check_tensor_proto`, before the JSON lists become an array."""
    shape = json_shape(value)
    if fed_shape(shape, spec.shape) is None:
        raise ValueError(f"Input '{name}' has shape {list(shape)}, but the signature expects {spec.shape.as_list()}")
    return _check_size(name, shape, spec.dtype, max_bytes)
