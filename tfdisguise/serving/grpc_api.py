"""TF Serving's gRPC API over a `ModelRegistry`.

tensorflow.serving.PredictionService: Predict, GetModelMetadata.
tensorflow.serving.ModelService: GetModelStatus.

The status and metadata messages are built here and also serve the REST API,
which answers with their JSON form, as TF Serving does.
"""

from __future__ import annotations

import functools

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdisguise.serving.registry import ModelRegistry, Servable, ServingError

__all__ = ["ModelStatusServicer", "PredictionServicer", "add_servicers", "model_status", "signature_def_map"]


def _aborts_on_serving_error(method):
    """Ends the call with the error's status code, as TF Serving does, instead of an UNKNOWN crash."""

    @functools.wraps(method)
    def call(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as e:
            context.abort(e.code, e.message)

    return call


def _version(model_spec) -> tuple[int | None, str | None]:
    which = model_spec.WhichOneof("version_choice")
    if which == "version":
        return model_spec.version.value, None
    if which == "version_label":
        return None, model_spec.version_label
    return None, None


def _servable(registry: ModelRegistry, model_spec) -> Servable:
    return registry.get(model_spec.name, *_version(model_spec))


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
    """Every loaded version of `name`, or only the one that `version` or `label` picks."""
    versions = [registry.get(name, version, label).version] if (version or label) else registry.versions(name)
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in versions:
        status = response.model_version_status.add()
        status.version = v
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        status.status.SetInParent()  # error_code OK, printed like TF Serving does
    return response


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    @_aborts_on_serving_error
    def Predict(self, request, context):
        servable = _servable(self.registry, request.model_spec)
        try:
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        except Exception as e:  # a malformed TensorProto
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed input tensor: {e}") from None
        signature = request.model_spec.signature_name or "serving_default"
        outputs = servable.run(signature, inputs, tuple(request.output_filter))
        response = predict_pb2.PredictResponse()
        _answered_by(response.model_spec, servable)
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

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
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    @_aborts_on_serving_error
    def GetModelStatus(self, request, context):
        return model_status(self.registry, request.model_spec.name, *_version(request.model_spec))


def add_servicers(server: grpc.Server, registry: ModelRegistry) -> None:
    """Serves both services of `registry` on `server`."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(registry), server)
