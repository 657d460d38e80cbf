"""TF Serving's REST API over a `ModelRegistry`, as a WSGI app (werkzeug).

GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            status
GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   metadata
POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    "instances" (rows) or "inputs" (columns)

Errors answer `{"error": message}` with the HTTP status that TF Serving maps
from the gRPC code: 404 for NOT_FOUND, 400 for INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import logging
import re

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from tfdisguise.serving.grpc_api import model_status, signature_def_map
from tfdisguise.serving.registry import ModelRegistry, Servable, ServingError

__all__ = ["make_rest_app"]

log = logging.getLogger("tfdisguise.serve")

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:predict|:classify|:regress|/metadata)?$"
)
_HTTP_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
                grpc.StatusCode.UNIMPLEMENTED: 501}


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _to_array(value, dtype: tf.DType) -> np.ndarray:
    if dtype == tf.string:
        return np.asarray(value, dtype=object)
    try:
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError) as e:
        raise _invalid(f"Input cannot be read as {dtype.name}: {e}") from None


def _jsonable(value):
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _predict_rows(servable: Servable, signature: str, spec: dict, instances) -> dict:
    if not isinstance(instances, list) or not instances:
        raise _invalid("'instances' must be a non-empty list.")
    if len(spec) == 1 and not isinstance(instances[0], dict):
        (key,) = spec
        inputs = {key: _to_array(instances, spec[key].dtype)}
    else:
        if not all(isinstance(i, dict) for i in instances):
            raise _invalid("Each instance must be an object of named inputs.")
        inputs = {k: _to_array([i.get(k) for i in instances], spec[k].dtype) for k in spec}
    outputs = servable.run(signature, inputs)
    keys = sorted(outputs)
    if len(keys) == 1:
        return {"predictions": _jsonable(outputs[keys[0]])}
    return {"predictions": [{k: _jsonable(outputs[k][row] if outputs[k].ndim else outputs[k]) for k in keys}
                            for row in range(len(instances))]}


def _predict_columns(servable: Servable, signature: str, spec: dict, columns) -> dict:
    if isinstance(columns, dict):
        inputs = {k: _to_array(v, spec[k].dtype) if k in spec else np.asarray(v) for k, v in columns.items()}
    else:
        if len(spec) != 1:
            raise _invalid(f"'inputs' must name the inputs {sorted(spec)}.")
        (key,) = spec
        inputs = {key: _to_array(columns, spec[key].dtype)}
    outputs = servable.run(signature, inputs)
    if len(outputs) == 1:
        return {"outputs": _jsonable(next(iter(outputs.values())))}
    return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}


def _predict(servable: Servable, body: dict) -> dict:
    signature, fn = servable.signature(body.get("signature_name") or "serving_default")
    spec = fn.structured_input_signature[1]
    if ("instances" in body) == ("inputs" in body):
        raise _invalid("Request must have exactly one of 'instances' or 'inputs'.")
    if "instances" in body:
        return _predict_rows(servable, signature, spec, body["instances"])
    return _predict_columns(servable, signature, spec, body["inputs"])


def _metadata(servable: Servable) -> dict:
    return {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(signature_def_map(servable))}}


def _json_body(request: Request) -> dict:
    try:
        body = json.loads(request.get_data(as_text=True))
    except ValueError as e:
        raise _invalid(f"JSON Parse error: {e}") from None
    if not isinstance(body, dict):
        raise _invalid("JSON body must be an object.")
    return body


def _route(registry: ModelRegistry, request: Request) -> dict:
    match = _PATH.match(request.path)
    if not match:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {request.method} {request.path}")
    name, verb, label = match["name"], match["verb"], match["label"]
    version = int(match["version"]) if match["version"] else None
    if verb in (":classify", ":regress"):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb[1:]} is not served; use :predict.")
    if verb == ":predict":
        if request.method != "POST":
            raise _invalid(":predict needs POST")
        servable = registry.get(name, version, label)
        return _predict(servable, _json_body(request))
    if verb == "/metadata":
        return _metadata(registry.get(name, version, label))
    return json_format.MessageToDict(model_status(registry, name, version, label),
                                     always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def make_rest_app(registry: ModelRegistry):
    """The WSGI app that answers TF Serving's REST API for the models in `registry`."""

    def respond(payload: dict, status: int = 200) -> Response:
        return Response(json.dumps(payload), status=status, mimetype="application/json")

    @Request.application
    def app(request: Request) -> Response:
        try:
            return respond(_route(registry, request))
        except ServingError as e:
            return respond({"error": e.message}, _HTTP_STATUS.get(e.code, 500))
        except HTTPException as e:
            return respond({"error": str(e)}, e.code or 500)
        except Exception as e:  # never let one bad request take the server down
            log.exception("REST request failed")
            return respond({"error": f"Internal error: {e}"}, 500)

    return app
