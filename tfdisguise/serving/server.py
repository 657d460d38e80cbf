"""An embedded server that speaks TF Serving's gRPC and REST APIs.

It serves the same `saved_models/<name>/<version>/` layout as
`tensorflow_model_server`, so clients and scripts move between the two
unchanged. `tfdisguise serve` runs the real binary when it is on PATH.

gRPC: tensorflow.serving.PredictionService/{Predict,GetModelMetadata},
      tensorflow.serving.ModelService/GetModelStatus.
REST: GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            status
      GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   metadata
      POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    instances / inputs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdisguise.serving.registry import ModelRegistry, ServingError

__all__ = ["ModelServer", "main", "build_parser"]

log = logging.getLogger("tfdisguise.serve")
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def _spec_version(spec) -> tuple[int | None, str | None]:
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return spec.version.value, None
    if which == "version_label":
        return None, spec.version_label
    return None, None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):
        try:
            version, label = _spec_version(request.model_spec)
            servable = self.registry.get(request.model_spec.name, version, label)
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except Exception as e:  # a malformed TensorProto
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed input tensor: {e}") from None
            sig = request.model_spec.signature_name or "serving_default"
            outputs = servable.run(sig, inputs, tuple(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = sig
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response
        except ServingError as e:
            context.abort(e.code, e.message)

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Metadata field(s) must be exactly [\"signature_def\"]")
            version, label = _spec_version(request.model_spec)
            servable = self.registry.get(request.model_spec.name, version, label)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for k, v in servable.signature_defs.items():
                sig_map.signature_def[k].CopyFrom(v)
            response.metadata["signature_def"].Pack(sig_map)
            return response
        except ServingError as e:
            context.abort(e.code, e.message)


def _status_response(registry: ModelRegistry, name: str, version: int | None, label: str | None):
    servable = registry.get(name, version, label) if (version or label) else None
    versions = [servable.version] if servable else registry.versions(name)
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in versions:
        status = response.model_version_status.add()
        status.version = v
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        status.status.SetInParent()  # error_code OK, printed like TF Serving does
    return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        try:
            version, label = _spec_version(request.model_spec)
            return _status_response(self.registry, request.model_spec.name, version, label)
        except ServingError as e:
            context.abort(e.code, e.message)


# ---- REST ----------------------------------------------------------------------

_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<verb>:predict|:classify|:regress|/metadata)?$"
)
_HTTP = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNIMPLEMENTED: 501}


def _to_array(value, dtype: tf.DType) -> np.ndarray:
    if dtype == tf.string:
        return np.asarray(value, dtype=object)
    try:
        return np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (ValueError, TypeError) as e:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Input cannot be read as {dtype.name}: {e}") from None


def _decoded(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def _jsonable(array: np.ndarray):
    return _decoded(array.tolist())


def _rest_predict(servable, body: dict) -> dict:
    sig = body.get("signature_name") or "serving_default"
    name, fn = servable.signature(sig)
    spec = fn.structured_input_signature[1]
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Request must have exactly one of 'instances' or 'inputs'.")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'instances' must be a non-empty list.")
        if len(spec) == 1 and not isinstance(instances[0], dict):
            (key,) = spec
            inputs = {key: _to_array(instances, spec[key].dtype)}
        else:
            if not all(isinstance(i, dict) for i in instances):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Each instance must be an object of named inputs.")
            inputs = {k: _to_array([i.get(k) for i in instances], spec[k].dtype) for k in spec}
        outputs = servable.run(name, inputs)
        keys = sorted(outputs)
        if len(keys) == 1:
            return {"predictions": _jsonable(outputs[keys[0]])}
        rows = len(instances)
        return {"predictions": [{k: _jsonable(outputs[k][r]) if outputs[k].ndim else _jsonable(outputs[k])
                                 for k in keys} for r in range(rows)]}
    raw = body["inputs"]
    if isinstance(raw, dict):
        inputs = {k: _to_array(v, spec[k].dtype) if k in spec else np.asarray(v) for k, v in raw.items()}
    else:
        if len(spec) != 1:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"'inputs' must name the inputs {sorted(spec)}.")
        (key,) = spec
        inputs = {key: _to_array(raw, spec[key].dtype)}
    outputs = servable.run(name, inputs)
    if len(outputs) == 1:
        return {"outputs": _jsonable(next(iter(outputs.values())))}
    return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}


def make_rest_app(registry: ModelRegistry):
    """A WSGI app (werkzeug) for TF Serving's REST API."""
    from werkzeug.exceptions import HTTPException
    from werkzeug.wrappers import Request, Response

    def respond(payload, status=200):
        return Response(json.dumps(payload), status=status, mimetype="application/json")

    @Request.application
    def app(request):
        try:
            m = _REST_PATH.match(request.path)
            if not m:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {request.method} {request.path}")
            name, verb = m["name"], m["verb"]
            version = int(m["version"]) if m["version"] else None
            if verb in (":classify", ":regress"):
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb[1:]} is not served; use :predict.")
            if verb == ":predict":
                if request.method != "POST":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, ":predict needs POST")
                servable = registry.get(name, version, m["label"])
                try:
                    body = json.loads(request.get_data(as_text=True))
                except ValueError as e:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {e}") from None
                if not isinstance(body, dict):
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "JSON body must be an object.")
                return respond(_rest_predict(servable, body))
            if verb == "/metadata":
                servable = registry.get(name, version, m["label"])
                sig_map = get_model_metadata_pb2.SignatureDefMap()
                for k, v in servable.signature_defs.items():
                    sig_map.signature_def[k].CopyFrom(v)
                return respond({
                    "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                    "metadata": {"signature_def": json_format.MessageToDict(sig_map)},
                })
            status = _status_response(registry, name, version, m["label"])
            return respond(json_format.MessageToDict(status, always_print_fields_with_no_presence=True,
                                                     preserving_proto_field_name=True))
        except ServingError as e:
            return respond({"error": e.message}, _HTTP.get(e.code, 500))
        except HTTPException as e:
            return respond({"error": str(e)}, e.code or 500)
        except Exception as e:  # never let one bad request take the server down
            log.exception("REST request failed")
            return respond({"error": f"Internal error: {e}"}, 500)

    return app


# ---- server --------------------------------------------------------------------


def _read_ssl_config(path: str) -> dict:
    """TF Serving's --ssl_config_file (SSLConfig text proto): server_key, server_cert, custom_ca, client_verify."""
    with open(path) as f:
        text = f.read()
    fields = {}
    for key in ("server_key", "server_cert", "custom_ca"):
        m = re.search(key + r'\s*:\s*"((?:[^"\\]|\\.)*)"', text, re.S)
        if m:
            fields[key] = m.group(1).encode().decode("unicode_escape").encode()
    fields["client_verify"] = bool(re.search(r"client_verify\s*:\s*true", text))
    if "server_key" not in fields or "server_cert" not in fields:
        raise ValueError(f"{path}: an SSL config needs server_key and server_cert.")
    return fields


class ModelServer:
    """gRPC (and optionally REST) front ends over one `ModelRegistry`.

    `port=0` picks a free port; `rest_api_port=None` disables REST and 0 picks
    a free port. After `start()`, `port` and `rest_api_port` hold the bound ports.
    """

    def __init__(self, registry: ModelRegistry, *, port: int = 8500, rest_api_port: int | None = None,
                 host: str = "0.0.0.0", max_workers: int = 16, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ssl: dict | None = None):
        self.registry = registry
        self.host, self.port, self.rest_api_port = host, port, rest_api_port
        self.enable_rest = rest_api_port is not None
        self.max_workers, self.max_message_bytes, self.ssl = max_workers, max_message_bytes, ssl
        self._grpc = None
        self._http = None
        self._http_thread = None

    def start(self) -> "ModelServer":
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.so_reuseport", 1)]
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=self.max_workers), options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.registry), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(self.registry), self._grpc)
        address = f"{self.host}:{self.port}"
        if self.ssl:
            creds = grpc.ssl_server_credentials([(self.ssl["server_key"], self.ssl["server_cert"])],
                                                root_certificates=self.ssl.get("custom_ca"),
                                                require_client_auth=self.ssl.get("client_verify", False))
            self.port = self._grpc.add_secure_port(address, creds)
        else:
            self.port = self._grpc.add_insecure_port(address)
        if not self.port:
            raise OSError(f"Cannot bind gRPC to {address}.")
        self._grpc.start()
        if self.enable_rest:
            from werkzeug.serving import make_server

            self._http = make_server(self.host, self.rest_api_port, make_rest_app(self.registry), threaded=True)
            self.rest_api_port = self._http.server_port
            self._http_thread = threading.Thread(target=self._http.serve_forever, name="rest", daemon=True)
            self._http_thread.start()
        log.info("serving %s on gRPC port %d%s", self.registry.names, self.port,
                 f" and REST port {self.rest_api_port}" if self._http else "")
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stops taking new requests and lets in-flight ones finish for up to `grace` seconds."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)


def build_parser() -> argparse.ArgumentParser:
    # The flag names are tensorflow_model_server's, so scripts move between the two unchanged.
    p = argparse.ArgumentParser(prog="tfdisguise serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 picks a free one)")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 disables REST, as in TF Serving")
    p.add_argument("--model_name", default="default")
    p.add_argument("--model_base_path", default=None)
    p.add_argument("--model_config_file", default=None)
    p.add_argument("--ssl_config_file", default=None, help="SSLConfig text proto: server_key, server_cert[, custom_ca]")
    p.add_argument("--grpc_max_threads", type=int, default=16)
    p.add_argument("--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--host", default="0.0.0.0", help="address to bind (embedded server only)")
    p.add_argument("--embedded", action="store_true", help="use the embedded server even if tensorflow_model_server is on PATH")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    binary = shutil.which("tensorflow_model_server")
    if binary and not args.embedded:
        passthrough = [a for a in argv if not a.startswith(("--host", "--embedded", "--max_message_bytes"))]
        print(f"running {binary}", file=sys.stderr, flush=True)
        os.execv(binary, [binary] + passthrough)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    registry = ModelRegistry.from_flags(args.model_name, args.model_base_path, args.model_config_file)
    server = ModelServer(registry, port=args.port, rest_api_port=args.rest_api_port or None, host=args.host,
                         max_workers=args.grpc_max_threads, max_message_bytes=args.max_message_bytes,
                         ssl=_read_ssl_config(args.ssl_config_file) if args.ssl_config_file else None)
    server.start()
    print(f"serving {registry.names} on gRPC port {server.port}"
          + (f", REST port {server.rest_api_port}" if args.rest_api_port else ""), flush=True)
    done = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: shutting down gracefully", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    server.stop(grace=5.0)
    print("server stopped", flush=True)
    return 0
