"""TF Serving's REST API over a `ModelRegistry`, as a WSGI app (werkzeug).

GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            status
GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   metadata
POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    "instances" (rows) or "inputs" (columns)
POST /v1/models/<name>[/versions/<v>|/labels/<l>]:classify   "examples" (tf.Example features), see `inference`
POST /v1/models/<name>[/versions/<v>|/labels/<l>]:regress    "examples"

Errors answer `{"error": message}` with the HTTP status that TF Serving maps
from the gRPC code: 404 for NOT_FOUND, 400 for INVALID_ARGUMENT; other HTTP
methods get 405, and a body over the size limit 413. Inputs are checked against
the signature and the size cap (`limits`) before they become arrays. Answers are
strict JSON: a NaN or infinite output is written as the string "NaN",
"Infinity" or "-Infinity", as protobuf's JSON mapping writes them.

`make_rest_app(metrics_path=...)` also answers GET at that path with the
registry's Prometheus metrics; `timeout_in_ms` gives each predict a deadline
(--rest_api_timeout_in_ms), past which it is not run (504, DEADLINE_EXCEEDED).
A full batching queue answers 503 (UNAVAILABLE).

The app serves under any WSGI server; `rest_server` hosts it with TLS, time
limits and a connection cap.

>>> _jsonable(np.array([0.5, np.nan, -np.inf], np.float32))
[0.5, 'NaN', '-Infinity']
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES, inference
from tfdisguise.serving.grpc_api import counted, inflight, model_status, run_predict, signature_def_map
from tfdisguise.serving.limits import DEFAULT_REST_MAX_BODY_BYTES, check_json_input
from tfdisguise.serving.registry import ModelRegistry, Servable, ServingError

__all__ = ["body_too_large", "make_rest_app"]

log = logging.getLogger("tfdisguise.serve")

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:predict|:classify|:regress|/metadata)?$"
)
_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
                grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.RESOURCE_EXHAUSTED: 429}
_NON_FINITE = (("NaN", np.isnan), ("Infinity", np.isposinf), ("-Infinity", np.isneginf))


class _MethodNotAllowed(Exception):
    def __init__(self, method: str, allowed: str):
        super().__init__(f"Method {method} is not allowed here; use {allowed}.")
        self.allowed = allowed


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _to_array(value, dtype: tf.DType) -> np.ndarray:
    if dtype == tf.string:  # {"b64": "..."} is bytes, other strings their UTF-8, as TF Serving reads them
        return np.asarray(inference.json_bytes(value), dtype=object)
    try:
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError) as e:
        raise _invalid(f"Input cannot be read as {dtype.name}: {e}") from None


def _jsonable(value):
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            named = np.asarray(value).astype(object)
            for text, where in _NON_FINITE:
                named[where(value)] = text
            value = named
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _arrays(columns: dict, spec: dict, max_bytes: int, reserve=None) -> dict:
    """The inputs as arrays, once their nested lists' shapes fit the signature and `max_bytes` together (and
    `reserve(nbytes)`, if given, has accepted their decoded size: the in-flight budget)."""
    unknown = set(columns) - set(spec)
    if unknown:
        raise _invalid(f"Unknown inputs {sorted(unknown)}; the signature expects {sorted(spec)}.")
    left = max_bytes
    for key, value in columns.items():
        try:
            left -= check_json_input(key, value, left, spec[key])
        except ValueError as e:
            raise _invalid(str(e)) from None
    if reserve is not None:
        reserve(max_bytes - left)
    return {key: _to_array(value, spec[key].dtype) for key, value in columns.items()}


def _predict_rows(run, spec: dict, instances, max_bytes: int, reserve=None) -> dict:
    if not isinstance(instances, list) or not instances:
        raise _invalid("'instances' must be a non-empty list.")
    named = isinstance(instances[0], dict) and set(instances[0]) != {"b64"}  # {"b64": ...} is one bytes value
    if len(spec) == 1 and not named:
        (key,) = spec
        inputs = _arrays({key: instances}, spec, max_bytes, reserve)
    else:
        if not all(isinstance(i, dict) for i in instances):
            raise _invalid("Each instance must be an object of named inputs.")
        for row, instance in enumerate(instances):
            # Named, not dropped: a misspelt input name must not run the model on something else.
            unknown, missing = sorted(set(instance) - set(spec)), sorted(set(spec) - set(instance))
            if unknown or missing:
                wrong = ([f"has unknown inputs {unknown}"] if unknown else []) + (
                    [f"lacks inputs {missing}"] if missing else [])
                raise _invalid(f"Instance {row} {' and '.join(wrong)}; the signature expects {sorted(spec)}.")
        inputs = _arrays({k: [i.get(k) for i in instances] for k in spec}, spec, max_bytes, reserve)
    outputs = run(inputs)
    keys = sorted(outputs)
    if len(keys) == 1:
        return {"predictions": _jsonable(outputs[keys[0]])}
    return {"predictions": [{k: _jsonable(outputs[k][row] if outputs[k].ndim else outputs[k]) for k in keys}
                            for row in range(len(instances))]}


def _predict_columns(run, spec: dict, columns, max_bytes: int, reserve=None) -> dict:
    if not isinstance(columns, dict):
        if len(spec) != 1:
            raise _invalid(f"'inputs' must name the inputs {sorted(spec)}.")
        (key,) = spec
        columns = {key: columns}
    outputs = run(_arrays(columns, spec, max_bytes, reserve))
    if len(outputs) == 1:
        return {"outputs": _jsonable(next(iter(outputs.values())))}
    return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}


def _predict(registry: ModelRegistry, servable: Servable, body: dict, max_bytes: int, deadline) -> dict:
    signature_name = body.get("signature_name") or "serving_default"
    if not isinstance(signature_name, str):
        raise _invalid(f"'signature_name' must be a string. Received: {type(signature_name).__name__} "
                       f"{json.dumps(signature_name)[:80]}")
    signature, spec = servable.input_specs(signature_name)
    if ("instances" in body) == ("inputs" in body):
        raise _invalid("Request must have exactly one of 'instances' or 'inputs'.")

    def run(inputs):
        return run_predict(registry, servable, signature, inputs, (), deadline)

    with contextlib.ExitStack() as held:
        def reserve(nbytes):
            held.enter_context(inflight(registry, nbytes))

        if "instances" in body:
            return _predict_rows(run, spec, body["instances"], max_bytes, reserve)
        return _predict_columns(run, spec, body["inputs"], max_bytes, reserve)


def _metadata(servable: Servable) -> dict:
    return {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            # Field for field as TF Serving writes it: proto field names, and defaults ("defaults": {}, "name": "").
            "metadata": {"signature_def": json_format.MessageToDict(
                signature_def_map(servable), always_print_fields_with_no_presence=True,
                preserving_proto_field_name=True)}}


def _json_body(request: Request) -> dict:
    try:
        body = json.loads(request.get_data(as_text=True))
    except ValueError as e:
        raise _invalid(f"JSON Parse error: {e}") from None
    except RecursionError:
        raise _invalid("JSON Parse error: nested too deeply.") from None
    if not isinstance(body, dict):
        raise _invalid("JSON body must be an object.")
    return body


_INT64_MAX = (1 << 63) - 1


def _int64_version(digits: str) -> int:
    """The URL's version, which must fit TF Serving's int64 (checked before `int()`: 5000 digits would raise)."""
    if len(digits.lstrip("0")) > 19 or int(digits) > _INT64_MAX:
        raise _invalid(f"The version in the URL must be a 64-bit integer (at most {_INT64_MAX}). Received "
                       f"{len(digits)} digits: {digits[:24]}{'...' if len(digits) > 24 else ''}")
    return int(digits)


def _route(registry: ModelRegistry, request: Request, max_request_bytes: int, timeout: float | None) -> dict:
    match = _PATH.match(request.path)
    if not match:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {request.method} {request.path}")
    name, verb, label = match["name"], match["verb"], match["label"]
    version = _int64_version(match["version"]) if match["version"] else None
    allowed = "POST" if verb in (":predict", ":classify", ":regress") else "GET"
    if request.method != allowed:
        raise _MethodNotAllowed(request.method, allowed)
    if verb in (":classify", ":regress"):
        handler = inference.rest_classify if verb == ":classify" else inference.rest_regress
        with counted(registry, name, verb[1:], "REST"), registry.hold(name, version, label) as servable:
            return handler(registry, servable, _json_body(request), max_request_bytes)
    if verb == ":predict":
        deadline = None if timeout is None else time.monotonic() + timeout
        with counted(registry, name, "predict", "REST"), registry.hold(name, version, label) as servable:
            return _predict(registry, servable, _json_body(request), max_request_bytes, deadline)
    if verb == "/metadata":
        return _metadata(registry.get(name, version, label))
    return json_format.MessageToDict(model_status(registry, name, version, label),
                                     always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def body_too_large(max_body_bytes: int) -> str:
    """The 413 answer's message."""
    return (f"The request body is larger than the server's limit of {max_body_bytes} bytes; "
            f"send fewer images per request.")


def make_rest_app(registry: ModelRegistry, *, max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES, metrics_path: str | None = None,
                  timeout_in_ms: int | None = None):
    """The WSGI app that answers TF Serving's REST API for the models in `registry`.

    A request body may hold at most `max_body_bytes`, and its inputs may decode
    to at most `max_request_bytes` in all. `metrics_path` serves
    `registry.metrics` as Prometheus text; `timeout_in_ms` bounds each predict.
    """
    timeout = timeout_in_ms / 1000 if timeout_in_ms else None

    class CappedRequest(Request):
        max_content_length = max_body_bytes  # werkzeug answers 413 past it, also for chunked bodies

    def respond(payload: dict, status: int = 200, headers=None) -> Response:
        return Response(json.dumps(payload, allow_nan=False), status=status, mimetype="application/json",
                        headers=headers)

    @CappedRequest.application
    def app(request: Request) -> Response:
        if metrics_path and request.path == metrics_path and request.method == "GET":
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(registry.metrics.text(), content_type=CONTENT_TYPE_LATEST)
        try:
            return respond(_route(registry, request, max_request_bytes, timeout))
        except ServingError as e:
            return respond({"error": e.message}, _HTTP_STATUS.get(e.code, 500))
        except _MethodNotAllowed as e:
            return respond({"error": str(e)}, 405, {"Allow": e.allowed})
        except RequestEntityTooLarge:
            return respond({"error": body_too_large(max_body_bytes)}, 413)
        except HTTPException as e:
            return respond({"error": str(e)}, e.code or 500)
        except Exception as e:  # never let one bad request take the server down
            log.exception("REST request failed")
            return respond({"error": f"Internal error: {e}"}, 500)

    return app
