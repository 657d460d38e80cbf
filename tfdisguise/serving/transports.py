"""How the client reaches one served model: TF Serving's gRPC API or its REST API, behind one interface.

A transport makes one attempt per call, and that attempt ends within the
timeout it is given, whatever the server does (REST included: a server that
trickles its answer is cut off at the deadline). The client adds deadlines and
retries. Both report every failure as `TransportError` with the gRPC status
code that TF Serving would give, so the client handles them alike.

The server is not trusted: an answer is checked before it is decoded, as the
server checks requests. Given what the model's metadata declares (`OutputSpec`)
and how many rows to expect, a transport refuses, from the cheap part of the
answer alone (a TensorProto's dtype and shape, a JSON list's lengths), outputs
that are missing or extra, of another dtype, of another shape, or with another
number of rows than images sent. `limit_answers` caps the bytes an answer may
take on the wire (gRPC's receive limit, the REST body), so that a hostile server
cannot make the client read, parse or allocate more than its answer needs.

`predict_future` starts a call and returns at once (gRPC's own futures; a
thread pool for REST, whose idle connections are pooled and reused), so that a
client keeps several requests in flight.

Tensors are converted with numpy alone (`tensor_proto`, `ndarray`): for the
dtypes the client sends and receives, `tf.make_tensor_proto` and
`tf.make_ndarray` spend most of their time on checks and dispatch.

A new API is one more `Transport` subclass, and one line in `transport_for`.

>>> proto = tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))
>>> ndarray(proto).tolist()
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import math
import socket
import ssl
import threading
import time
import urllib.parse

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES
from tfdisguise.serving.limits import check_tensor_proto, json_shape

__all__ = ["GrpcTransport", "OutputSpec", "RestTransport", "Signature", "Transport", "TransportError", "check_answer",
           "ndarray", "tensor_proto", "transport_for"]

# The REST API answers with an HTTP status; TF Serving maps its gRPC codes to these.
_GRPC_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
              403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
              405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.INVALID_ARGUMENT,
              429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
              502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.UNAVAILABLE}
_NON_FINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


# Numeric dtypes whose TensorProto can carry raw little-endian bytes in tensor_content.
_FAST_DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
                np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64,
                np.dtype(np.uint8): types_pb2.DT_UINT8}
_FAST_NP = {v: k for k, v in _FAST_DTYPES.items()}


def tensor_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """`tf.make_tensor_proto(value)`, built directly for numeric arrays (the same bytes on the wire)."""
    value = np.asarray(value)
    dtype = _FAST_DTYPES.get(value.dtype)
    if dtype is None or value.dtype.byteorder == ">":
        return tf.make_tensor_proto(value)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                   for d in value.shape])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, tensor_content=value.tobytes())


def ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """`tf.make_ndarray(proto)`, read directly for numeric tensor_content (what TF Serving sends)."""
    dtype = _FAST_NP.get(proto.dtype)
    if dtype is None or not proto.tensor_content:
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()


class TransportError(Exception):
    """One failed attempt, with TF Serving's gRPC status `code`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def retryable(self) -> bool:
        """Whether another attempt may succeed: the server is restarting, or not up yet."""
        return self.code == grpc.StatusCode.UNAVAILABLE


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What a signature declares of one output: a `types_pb2` dtype, and a shape (-1 for any size, None for any)."""

    dtype: int
    shape: tuple[int, ...] | None

    def elements(self, rows: int) -> int | None:
        """How many numbers `rows` rows of this output hold; None when the metadata leaves their size open."""
        if self.shape is None or any(d < 0 for d in self.shape[1:]) or self.dtype not in _FAST_NP:
            return None
        return rows * math.prod(self.shape[1:])


def _answer_bytes(expect: dict[str, OutputSpec], rows: int, per_element) -> int | None:
    """The most bytes an answer of `rows` rows may take, `per_element(spec)` bytes a number, with room for framing."""
    counts = [(spec, spec.elements(rows)) for spec in expect.values()]
    if not counts or any(n is None for _, n in counts):
        return None
    return int(1.25 * sum(n * per_element(spec) for spec, n in counts)) + (64 << 10)


@dataclasses.dataclass(frozen=True)
class Signature:
    """A served signature's input shapes (-1 for any size) by name, its output names, and their `OutputSpec`s."""

    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]
    output_specs: dict[str, OutputSpec] = dataclasses.field(default_factory=dict, compare=False)


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else f"dtype {dtype}"


def check_answer(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, int] | None,
                 expect: dict[str, OutputSpec] | None, rows: int | None) -> None:
    """Raises TransportError (INTERNAL) unless an answer's outputs are the `expect`ed ones, with `rows` rows.

    `shapes` and `dtypes` are what the answer declares, read without decoding
    its values (dtypes None: REST, whose JSON has none to check here).
    """
    if expect is None:
        return
    if set(shapes) != set(expect):
        raise TransportError(grpc.StatusCode.INTERNAL, f"The server answered the outputs {sorted(shapes)}, but the "
                                                       f"model's metadata declares {sorted(expect)}.")
    for name, shape in shapes.items():
        spec = expect[name]
        if rows is not None and (not shape or shape[0] != rows):
            got = f"{shape[0]} rows" if shape else "a scalar"
            raise TransportError(grpc.StatusCode.INTERNAL, f"The server answered {got} of '{name}' for {rows} "
                                                           f"images; refusing its answer.")
        if dtypes is not None and dtypes[name] != spec.dtype:
            raise TransportError(grpc.StatusCode.INTERNAL,
                                 f"The server answered '{name}' as {_dtype_name(dtypes[name])}, but the "
                                 f"model's metadata declares {_dtype_name(spec.dtype)}.")
        fixed = spec.shape if rows is None else spec.shape[1:] if spec.shape else None  # rows replace dim 0
        answered = shape if rows is None else shape[1:]
        if spec.shape is not None and (len(shape) != len(spec.shape) or
                                       any(d != s for d, s in zip(answered, fixed) if s >= 0)):
            raise TransportError(grpc.StatusCode.INTERNAL, f"The server answered '{name}' of shape {list(shape)}, but "
                                                           f"the model's metadata declares {list(spec.shape)}.")


class Transport:
    """One served model (`model_name`, at `version` or the latest when None) over one API."""

    def __init__(self, target: str, model_name: str, version: int | None = None):
        self.target, self.model_name, self.version = target, model_name, version

    def signatures(self, timeout: float) -> dict[str, Signature]:
        """The model's signatures by name, from its metadata."""
        raise NotImplementedError

    tls = False  # whether the server's certificate is checked (and the channel encrypted)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float,
                expect: dict[str, OutputSpec] | None = None, rows: int | None = None) -> dict[str, np.ndarray]:
        """Runs `signature_name` on `inputs`; returns its outputs by name.

        With `expect`, the answer must hold exactly those outputs, as declared;
        with `rows`, each with that many rows (see `check_answer`).
        """
        raise NotImplementedError

    def limit_answers(self, expect: dict[str, OutputSpec], rows: int) -> None:
        """From now on, refuses answers larger on the wire than `rows` rows of `expect` take (before reading or
        parsing more); an output whose size the metadata leaves open keeps the transport's own limit."""
        raise NotImplementedError

    _pool: concurrent.futures.ThreadPoolExecutor | None = None

    def predict_future(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float,
                       expect: dict[str, OutputSpec] | None = None, rows: int | None = None):
        """Starts `predict`; returns an object whose `result()` gives its answer or raises its TransportError,
        and whose `cancel()` gives it up."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="predict")
        return self._pool.submit(self.predict, inputs, signature_name, timeout, expect, rows)

    def close(self) -> None:
        raise NotImplementedError


class GrpcTransport(Transport):
    """tensorflow.serving.PredictionService over a gRPC channel (TLS with `credentials`)."""

    def __init__(self, target: str, model_name: str, version: int | None = None, *, credentials=None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(target, model_name, version)
        self.max_message_bytes, self.max_answer_bytes = max_message_bytes, max_message_bytes
        self._credentials, self.tls = credentials, credentials is not None
        self._open()

    def _open(self) -> None:
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_answer_bytes)]
        self._channel = (grpc.secure_channel(self.target, self._credentials, options) if self._credentials
                         else grpc.insecure_channel(self.target, options))
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def limit_answers(self, expect: dict[str, OutputSpec], rows: int) -> None:
        # Integers may come as varints, up to 10 bytes each, rather than as raw bytes.
        max_bytes = _answer_bytes(expect, rows, lambda spec: 10 if _FAST_NP[spec.dtype].kind in "iu"
                                  else _FAST_NP[spec.dtype].itemsize)
        max_bytes = self.max_message_bytes if max_bytes is None else min(max_bytes, self.max_message_bytes)
        # A channel's receive limit is fixed when it is made: a new channel, before any prediction is in flight.
        if max_bytes != self.max_answer_bytes:
            self.max_answer_bytes = max_bytes
            self._channel.close()
            self._open()

    def _model_spec(self, spec, signature_name: str) -> None:
        spec.name = self.model_name
        spec.signature_name = signature_name
        if self.version:
            spec.version.value = self.version

    def _call(self, method, request, timeout: float):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: grpc.RpcError) -> TransportError:
        """`e` as a TransportError; an oversized answer and a refused certificate say so, and are not retried."""
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            return TransportError(code, f"The server's answer is larger than the {self.max_answer_bytes} bytes "
                                        f"this request's answer may take; refusing it ({details}).")
        if any(sign in details for sign in ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed")):
            return TransportError(grpc.StatusCode.UNAUTHENTICATED,
                                  f"TLS: the server's certificate is refused ({details}).")
        return TransportError(code, details)

    def signatures(self, timeout: float) -> dict[str, Signature]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, "")
        response = self._call(self._stub.GetModelMetadata, request, timeout)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(sig_map):
            raise TransportError(grpc.StatusCode.INTERNAL, "The model's metadata holds no SignatureDefMap.")
        return {name: Signature(inputs={k: tuple(d.size for d in v.tensor_shape.dim) for k, v in sig.inputs.items()},
                                outputs=tuple(sorted(sig.outputs)),
                                output_specs={k: OutputSpec(v.dtype, None if v.tensor_shape.unknown_rank else
                                                            tuple(d.size for d in v.tensor_shape.dim))
                                              for k, v in sig.outputs.items()})
                for name, sig in sig_map.signature_def.items()}

    def _request(self, inputs: dict[str, np.ndarray], signature_name: str) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tensor_proto(value))
        return request

    def _outputs(self, response, expect=None, rows=None) -> dict[str, np.ndarray]:
        outputs = response.outputs
        # Declared dtypes and shapes first: reading them decodes none of the values.
        check_answer({name: tuple(d.size for d in value.tensor_shape.dim) for name, value in outputs.items()},
                     {name: value.dtype for name, value in outputs.items()}, expect, rows)
        try:
            for name, value in outputs.items():
                check_tensor_proto(name, value, self.max_message_bytes)  # a server's answer may lie like a request
            return {name: ndarray(value) for name, value in outputs.items()}
        except Exception as e:
            raise TransportError(grpc.StatusCode.INTERNAL, f"The server's answer is malformed: {e}") from None

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float,
                expect: dict[str, OutputSpec] | None = None, rows: int | None = None) -> dict[str, np.ndarray]:
        return self._outputs(self._call(self._stub.Predict, self._request(inputs, signature_name), timeout),
                             expect, rows)

    def predict_future(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float,
                       expect: dict[str, OutputSpec] | None = None, rows: int | None = None):
        future = self._stub.Predict.future(self._request(inputs, signature_name), timeout=timeout)
        return _GrpcFuture(self, future, expect, rows)

    def close(self) -> None:
        self._channel.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class _GrpcFuture:
    def __init__(self, transport: GrpcTransport, future, expect, rows):
        self.transport, self.future, self.expect, self.rows = transport, future, expect, rows

    def result(self) -> dict[str, np.ndarray]:
        try:
            response = self.future.result()
        except grpc.RpcError as e:
            raise self.transport._error(e) from None
        return self.transport._outputs(response, self.expect, self.rows)

    def cancel(self) -> None:
        self.future.cancel()


class RestTransport(Transport):
    """TF Serving's REST API at `target` ("http://host:port" or "https://host:port[/prefix]").

    `ssl_context` (for https) checks the server's certificate and may present
    the client's; the system's CAs by default. Answers over
    `max_response_bytes` are refused.
    """

    def __init__(self, target: str, model_name: str, version: int | None = None, *,
                 ssl_context: ssl.SSLContext | None = None, max_response_bytes: int = 4 * DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(target.rstrip("/"), model_name, version)
        url = urllib.parse.urlsplit(self.target)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"`target` must be http://HOST:PORT or https://HOST:PORT. Received: target={target!r}")
        if ssl_context is not None and url.scheme != "https":
            raise ValueError(f"TLS settings were given, but `target` is plain HTTP; use https://. "
                             f"Received: target={target!r}")
        self._scheme, self._host, self._port, self._prefix = url.scheme, url.hostname, url.port, url.path
        self._ssl_context = ssl_context or (ssl.create_default_context() if url.scheme == "https" else None)
        self.tls = url.scheme == "https"
        self._max_response_bytes = self._max_body_bytes = max_response_bytes
        self._outputs: dict[str, tuple[str, ...]] = {}
        self._idle: list[http.client.HTTPConnection] = []  # kept alive between calls, one per concurrent call
        self._lock = threading.Lock()
        self.connections_opened = 0

    def _path(self, suffix: str) -> str:
        # Escaped: a model name is one path segment, whatever it holds ("/", "..", "?", spaces).
        version = f"/versions/{self.version}" if self.version else ""
        return f"{self._prefix}/v1/models/{urllib.parse.quote(self.model_name, safe='')}{version}{suffix}"

    def _connection(self, timeout: float, reuse: bool = True) -> http.client.HTTPConnection:
        """The kept-alive connection (if `reuse`), or a new one (not yet connected)."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
            if connection is None or not reuse:
                self.connections_opened += 1
        if connection is not None and reuse:
            connection.sock.settimeout(timeout)
            return connection
        if connection is not None:
            connection.close()
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl_context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _exchange(self, method: str, suffix: str, timeout: float, body: bytes | None) -> tuple[int, bytes]:
        """One request and its whole answer, within `timeout` seconds however slowly the server sends."""
        deadline = time.monotonic() + timeout
        reused = bool(self._idle)
        try:
            return self._exchange_once(method, suffix, timeout, body, reuse=True)
        except TransportError as e:
            # A kept-alive connection that the server has closed meanwhile fails before any answer: once more, fresh.
            if not (reused and e.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline):
                raise
        return self._exchange_once(method, suffix, deadline - time.monotonic(), body, reuse=False)

    def _exchange_once(self, method: str, suffix: str, timeout: float, body: bytes | None,
                       reuse: bool) -> tuple[int, bytes]:
        expired = threading.Event()
        connection = self._connection(timeout, reuse)

        def expire():
            expired.set()
            sock = connection.sock
            if sock is not None:
                # Ends a read in progress at once; the plain socket's call, so no TLS state is touched.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            if connection.sock is None:
                connection.connect()
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, self._path(suffix), body=body, headers=headers)
            response = connection.getresponse()
            # `limit_answers` caps predictions (POST); metadata, read again for a bare answer, keeps the full cap.
            limit = self._max_response_bytes if method == "POST" else self._max_body_bytes
            data = response.read(limit + 1)
        except ssl.SSLCertVerificationError as e:
            connection.close()
            raise TransportError(grpc.StatusCode.UNAUTHENTICATED,
                                 f"TLS: the server's certificate is refused: {e.verify_message}") from None
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            if expired.is_set():
                raise TransportError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"no complete answer within {timeout:.3g} s") from None
            raise TransportError(grpc.StatusCode.UNAVAILABLE, f"{type(e).__name__}: {e}") from None
        finally:
            watchdog.cancel()
        if expired.is_set() or len(data) > limit or response.will_close:
            connection.close()
            if expired.is_set():
                raise TransportError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no complete answer within {timeout:.3g} s")
            if len(data) > limit:
                raise TransportError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"The answer is larger than {limit} bytes; refusing it unread.")
        else:
            with self._lock:
                if len(self._idle) < 16:
                    self._idle.append(connection)
                    connection = None
            if connection is not None:
                connection.close()
        return response.status, data

    def _call(self, method: str, suffix: str, timeout: float, payload=None) -> dict:
        body = None if payload is None else json.dumps(payload, allow_nan=False).encode()
        status, data = self._exchange(method, suffix, timeout, body)
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            answer = None
        if status != 200:
            message = answer.get("error") if isinstance(answer, dict) else None
            message = message or data[:500].decode("utf-8", "replace") or f"HTTP {status} with no message"
            raise TransportError(_GRPC_CODE.get(status, grpc.StatusCode.INTERNAL), message)
        if not isinstance(answer, dict):
            raise TransportError(grpc.StatusCode.INTERNAL,
                                 f"The server's answer is not a JSON object: {data[:200].decode('utf-8', 'replace')}")
        return answer

    def signatures(self, timeout: float) -> dict[str, Signature]:
        answer = self._call("GET", "/metadata", timeout)
        try:
            defs = _field(answer["metadata"]["signature_def"], "signature_def")
            found = {name: Signature(inputs={k: _json_shape_of(v) for k, v in sig.get("inputs", {}).items()},
                                     outputs=tuple(sorted(sig.get("outputs", {}))),
                                     output_specs={k: _json_output_spec(v) for k, v in sig.get("outputs", {}).items()})
                     for name, sig in defs.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TransportError(grpc.StatusCode.INTERNAL, f"The model's metadata is malformed ({e!r}).") from None
        self._outputs = {name: sig.outputs for name, sig in found.items()}
        return found

    def limit_answers(self, expect: dict[str, OutputSpec], rows: int) -> None:
        # A number in JSON takes at most about 25 characters; pretty printing may add a line and its indent to each.
        max_bytes = _answer_bytes(expect, rows, lambda spec: 64)
        self._max_response_bytes = self._max_body_bytes if max_bytes is None else min(max_bytes, self._max_body_bytes)

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float,
                expect: dict[str, OutputSpec] | None = None, rows: int | None = None) -> dict[str, np.ndarray]:
        deadline = time.monotonic() + timeout
        body = {"signature_name": signature_name, "inputs": {k: v.tolist() for k, v in inputs.items()}}
        try:
            outputs = self._call("POST", ":predict", timeout, body)["outputs"]
        except KeyError:
            raise TransportError(grpc.StatusCode.INTERNAL, "The server's answer has no 'outputs'.") from None
        if not isinstance(outputs, dict):
            # A signature with one output answers with the bare value; its name is in the metadata.
            if signature_name not in self._outputs:
                self.signatures(max(deadline - time.monotonic(), 0.001))
            names = self._outputs.get(signature_name, ())
            if len(names) != 1:
                raise TransportError(grpc.StatusCode.INTERNAL, f"Signature {signature_name!r} has outputs {names}, "
                                                               f"but the answer holds one bare value.")
            outputs = {names[0]: outputs}
        # The lengths of the lists first: a body within the cap may still nest lists that would not fit an array.
        check_answer({name: json_shape(value) for name, value in outputs.items()}, None, expect, rows)
        arrays = {name: _from_json(value) for name, value in outputs.items()}
        for name, array in arrays.items():
            if expect is None:
                break
            if array.shape != json_shape(outputs[name]):
                raise TransportError(grpc.StatusCode.INTERNAL, f"The server's answer '{name}' is a ragged list.")
            arrays[name] = _as_declared(name, array, expect[name].dtype)
        return arrays

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _json_output_spec(info: dict) -> OutputSpec:
    """An output's TensorInfo, as the REST API's metadata writes it."""
    shape = _field(info, "tensor_shape", {})
    return OutputSpec(types_pb2.DataType.Value(info.get("dtype", "DT_INVALID")),
                      None if _field(shape, "unknown_rank", False) else _json_shape_of(info))


def _field(message: dict, name: str, default=KeyError):
    """A field of a proto as JSON, by its proto name (as TF Serving writes it) or its lowerCamelCase name."""
    camel = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
    for key in (name, camel):
        if key in message:
            return message[key]
    if default is KeyError:
        raise KeyError(name)
    return default


def _json_shape_of(info: dict) -> tuple[int, ...]:
    """A TensorInfo's dims (-1 for any size), as JSON."""
    return tuple(int(d.get("size", -1)) for d in _field(info, "tensor_shape", {}).get("dim", []))


def _as_declared(name: str, array: np.ndarray, dtype: int) -> np.ndarray:
    """A JSON output as the numeric dtype its metadata declares (as gRPC answers it), or TransportError."""
    np_dtype = _FAST_NP.get(dtype) or {types_pb2.DT_BOOL: np.dtype(bool)}.get(dtype)
    if np_dtype is None:
        return array  # strings and the rarer dtypes: as the JSON holds them
    fits = {"f": "biuf", "i": "biu", "u": "biu", "b": "b"}[np_dtype.kind]
    if array.dtype.kind not in fits:
        raise TransportError(grpc.StatusCode.INTERNAL,
                             f"The server answered '{name}' as {array.dtype} values, but the model's metadata "
                             f"declares {types_pb2.DataType.Name(dtype)}.")
    return array.astype(np_dtype)


def _from_json(value) -> np.ndarray:
    """An output as an array; "NaN", "Infinity" and "-Infinity" among numbers are read as those floats."""
    array = np.asarray(value)
    if array.dtype.kind in "UO" and array.size:
        objects = np.asarray(value, dtype=object)  # the JSON values as they came, numbers and strings apart
        flat = objects.reshape(-1).tolist()
        numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat]
        if any(numbers) and all(n or (isinstance(v, str) and v in _NON_FINITE) for n, v in zip(numbers, flat)):
            return np.asarray([v if n else _NON_FINITE[v] for n, v in zip(numbers, flat)]).reshape(objects.shape)
    return array


def transport_for(target: str, model_name: str, version: int | None = None, *, credentials=None, tls=None,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Transport:
    """REST for an "http://" or "https://" target, gRPC ("host:port") otherwise.

    `tls` (a `tls.ClientTLS`) serves both; `credentials` (grpc's own) only gRPC.
    """
    if target.startswith(("http://", "https://")):
        if credentials is not None:
            raise ValueError("`credentials` are gRPC's; for a REST target pass `tls` (a ClientTLS).")
        return RestTransport(target, model_name, version, ssl_context=tls.ssl_context() if tls else None,
                             max_response_bytes=4 * max_message_bytes)
    if tls is not None:
        if credentials is not None:
            raise ValueError("Pass `tls` or `credentials`, not both.")
        credentials = tls.grpc_credentials()
    return GrpcTransport(target, model_name, version, credentials=credentials, max_message_bytes=max_message_bytes)
