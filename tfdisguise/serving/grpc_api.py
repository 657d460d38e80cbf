"""TF Serving's gRPC API over a `ModelRegistry`.

tensorflow.serving.PredictionService: Predict, GetModelMetadata; Classify, Regress and
MultiInference on tf.Examples (`inference`).
tensorflow.serving.ModelService: GetModelStatus, HandleReloadConfigRequest (refused,
PERMISSION_DENIED, unless the server allows it: --allow_config_reload_rpc).

A Predict whose deadline has already passed is answered DEADLINE_EXCEEDED and
not run. It holds its model version (`ModelRegistry.hold`) until it is
answered, so an unloaded version finishes its requests first. With a
`registry.batcher` it is merged with concurrent requests; with
`registry.metrics` it is counted.

Predict checks each input's declared shape, dtype and value count against the
signature and a size cap (`limits`) before it decodes a single value.

The status and metadata messages are built here and also serve the REST API,
which answers with their JSON form, as TF Serving does.
"""

from __future__ import annotations

import contextlib
import functools
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES, inference
from tfdisguise.serving.limits import check_tensor_proto
from tfdisguise.serving.registry import ModelRegistry, Servable, ServingError, spec_version

__all__ = ["ModelStatusServicer", "PredictionServicer", "add_servicers", "counted", "model_status", "run_predict",
           "signature_def_map"]


def _aborts_on_serving_error(method):
    """Ends the call with the error's status code, as TF Serving does, instead of an UNKNOWN crash."""

    @functools.wraps(method)
    def call(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as e:
            context.abort(e.code, e.message)

    return call


def _servable(registry: ModelRegistry, model_spec) -> Servable:
    return registry.get(model_spec.name, *spec_version(model_spec))


def _answered_by(model_spec, servable: Servable) -> None:
    model_spec.name = servable.name
    model_spec.version.value = servable.version


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    """The servable's signatures, as GetModelMetadata reports them."""
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        sig_map.signature_def[name].CopyFrom(signature_def)
    return sig_map


def model_status(registry: ModelRegistry, name: str, version: int | None = None,
                 label: str | None = None) -> get_model_status_pb2.GetModelStatusResponse:
    """Every version of `name` the server has seen (failed loads included), or only the one `version` or `label`
    picks."""
    states = registry.status(name)
    if label:
        version = registry.get(name, None, label).version
    if version:
        if version not in states:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        states = {version: states[version]}
    response = get_model_status_pb2.GetModelStatusResponse()
    for v, state in sorted(states.items()):
        status = response.model_version_status.add()
        status.version = v
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state.state)
        status.status.SetInParent()  # error_code OK, printed like TF Serving does
        if state.error_code != grpc.StatusCode.OK:
            status.status.error_code = state.error_code.value[0]
            status.status.error_message = state.error_message
    return response


def run_predict(registry: ModelRegistry, servable: Servable, signature: str, inputs: dict, output_filter=(),
                deadline: float | None = None) -> dict:
    """Runs a request, through the registry's batcher if it has one; not at all once `deadline` has passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded before the request ran")
    batcher = getattr(registry, "batcher", None)
    if batcher is None or output_filter:
        return servable.run(signature, inputs, output_filter)
    return batcher.run(servable, signature, inputs, deadline)


def counted(registry: ModelRegistry, model: str, api: str, entrypoint: str):
    """A context that counts one request in the registry's metrics (if any), with the status it ends with.

    Only a configured model's name becomes a label; any other name is counted under the empty name. Why: every
    label value is kept for good, so made-up names (one per request) would grow the server's memory without bound.
    """
    known = getattr(registry, "is_configured", None)
    if known is not None and not known(model):
        model = ""
    return _Counted(getattr(registry, "metrics", None), model, api, entrypoint)


class _Counted:
    def __init__(self, metrics, model, api, entrypoint):
        self.metrics, self.labels = metrics, (model, api, entrypoint)

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, kind, error, tb):
        if self.metrics is not None:
            status = "OK" if error is None else (error.code.name if isinstance(error, ServingError) else "INTERNAL")
            model, api, entrypoint = self.labels
            self.metrics.request(model, api, entrypoint, status, time.perf_counter() - self.start)
        return False


def inflight(registry: ModelRegistry, nbytes: int):
    """A context that holds `nbytes` of the registry's in-flight budget (`limits.InflightBudget`), if it has one."""
    budget = getattr(registry, "inflight", None)
    return contextlib.nullcontext() if budget is None else budget.hold(nbytes)


def _decoded_inputs(servable: Servable, signature: str, request, max_bytes: int, reserve=None) -> dict:
    """The request's inputs as arrays, once their declarations fit the signature and `max_bytes` together
    (and `reserve(nbytes)`, if given, has accepted their decoded size)."""
    name, specs = servable.input_specs(signature)
    if set(request.inputs) != set(specs):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Signature \"{name}\" expects inputs {sorted(specs)}; got {sorted(request.inputs)}")
    left = max_bytes
    for key, proto in request.inputs.items():
        try:
            left -= check_tensor_proto(key, proto, left, specs[key])
        except ValueError as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    if reserve is not None:
        reserve(max_bytes - left)
    try:
        return {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    except Exception as e:  # a TensorProto that is malformed in some other way
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed input tensor: {e}") from None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; a request's inputs may decode to at most `max_request_bytes` in all."""

    def __init__(self, registry: ModelRegistry, max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.registry = registry
        self.max_request_bytes = max_request_bytes

    @_aborts_on_serving_error
    def Predict(self, request, context):
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        spec = request.model_spec
        with counted(self.registry, spec.name, "predict", "GRPC"):
            if deadline is not None and remaining <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded before the request ran")
            with self.registry.hold(spec.name, *spec_version(spec)) as servable, contextlib.ExitStack() as held:
                signature = spec.signature_name or "serving_default"
                inputs = _decoded_inputs(servable, signature, request, self.max_request_bytes,
                                         lambda nbytes: held.enter_context(inflight(self.registry, nbytes)))
                outputs = run_predict(self.registry, servable, signature, inputs, tuple(request.output_filter),
                                      deadline)
        response = predict_pb2.PredictResponse()
        _answered_by(response.model_spec, servable)
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(inference.tensor_proto(value))  # float_val etc., as TF Serving writes
        return response

    def _examples_api(self, api: str, handler, request, context):
        """Classify, Regress and MultiInference (`inference`): counted, held, refused past their deadline."""
        remaining = context.time_remaining()
        spec = request.tasks[0].model_spec if api == "multi_inference" and request.tasks else \
            getattr(request, "model_spec", None)
        with counted(self.registry, spec.name if spec is not None else "", api, "GRPC"):
            if remaining is not None and remaining <= 0:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded before the request ran")
            return handler(self.registry, request, self.max_request_bytes)

    @_aborts_on_serving_error
    def Classify(self, request, context):
        return self._examples_api("classify", inference.classify, request, context)

    @_aborts_on_serving_error
    def Regress(self, request, context):
        return self._examples_api("regress", inference.regress, request, context)

    @_aborts_on_serving_error
    def MultiInference(self, request, context):
        return self._examples_api("multi_inference", inference.multi_inference, request, context)

    @_aborts_on_serving_error
    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != ["signature_def"]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, 'Metadata field(s) must be exactly ["signature_def"]')
        servable = _servable(self.registry, request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _answered_by(response.model_spec, servable)
        response.metadata["signature_def"].Pack(signature_def_map(servable))
        return response


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest only if `allow_config_reload_rpc`.

    Why off by default: the RPC has no authentication, and one call unloads
    every model (an empty list) or serves any directory on this machine under
    a new name. TF Serving always allows it; here the operator must ask for it
    (--allow_config_reload_rpc).
    """

    def __init__(self, registry: ModelRegistry, allow_config_reload_rpc: bool = False):
        self.registry = registry
        self.allow_config_reload_rpc = bool(allow_config_reload_rpc)

    @_aborts_on_serving_error
    def GetModelStatus(self, request, context):
        return model_status(self.registry, request.model_spec.name, *spec_version(request.model_spec))

    def HandleReloadConfigRequest(self, request, context):
        """Serves the models of `request.config` from now on: added ones loaded, removed ones unloaded."""
        if not self.allow_config_reload_rpc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "HandleReloadConfigRequest is disabled on this server: it would let any client unload "
                          "or add models. Start the server with --allow_config_reload_rpc to allow it.")
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.registry.reload(request.config)
        except (ValueError, ServingError) as e:
            response.status.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            response.status.error_message = str(e)
        return response


def add_servicers(server: grpc.Server, registry: ModelRegistry,
                  max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, allow_config_reload_rpc: bool = False) -> None:
    """Serves both services of `registry` on `server` (the reload RPC only if `allow_config_reload_rpc`)."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry, max_request_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelStatusServicer(registry, allow_config_reload_rpc), server)
