"""How the client reaches one served model: TF Serving's gRPC API or its REST API, behind one interface.

A transport makes one attempt per call, with the timeout it is given; the
client adds deadlines and retries. Both report failures as `TransportError`
with the gRPC status code that TF Serving would give, so the client handles
them alike.

A new API is one more `Transport` subclass, and one line in `transport_for`.
"""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["GrpcTransport", "RestTransport", "Signature", "Transport", "TransportError", "transport_for"]

# The REST API answers with an HTTP status; TF Serving maps its gRPC codes to these.
_GRPC_CODE = {404: grpc.StatusCode.NOT_FOUND, 400: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}


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
class Signature:
    """A served signature's input shapes (-1 for any size) by name, and its output names."""

    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]


class Transport:
    """One served model (`model_name`, at `version` or the latest when None) over one API."""

    def __init__(self, target: str, model_name: str, version: int | None = None):
        self.target, self.model_name, self.version = target, model_name, version

    def signatures(self, timeout: float) -> dict[str, Signature]:
        """The model's signatures by name, from its metadata."""
        raise NotImplementedError

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float) -> dict[str, np.ndarray]:
        """Runs `signature_name` on `inputs`; returns its outputs by name."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class GrpcTransport(Transport):
    """tensorflow.serving.PredictionService over a gRPC channel (TLS with `credentials`)."""

    def __init__(self, target: str, model_name: str, version: int | None = None, *, credentials=None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        super().__init__(target, model_name, version)
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self._channel = (grpc.secure_channel(target, credentials, options) if credentials
                         else grpc.insecure_channel(target, options))
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def _model_spec(self, spec, signature_name: str) -> None:
        spec.name = self.model_name
        spec.signature_name = signature_name
        if self.version:
            spec.version.value = self.version

    def _call(self, method, request, timeout: float):
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as e:
            raise TransportError(e.code(), e.details()) from None

    def signatures(self, timeout: float) -> dict[str, Signature]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, "")
        response = self._call(self._stub.GetModelMetadata, request, timeout)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return {name: Signature(inputs={k: tuple(d.size for d in v.tensor_shape.dim) for k, v in sig.inputs.items()},
                                outputs=tuple(sorted(sig.outputs)))
                for name, sig in sig_map.signature_def.items()}

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._stub.Predict, request, timeout)
        return {name: tf.make_ndarray(value) for name, value in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


class RestTransport(Transport):
    """TF Serving's REST API at `target` ("http://host:port" or "https://...")."""

    def __init__(self, target: str, model_name: str, version: int | None = None):
        import requests

        super().__init__(target.rstrip("/"), model_name, version)
        self._requests = requests
        self._session = requests.Session()
        self._outputs: dict[str, tuple[str, ...]] = {}

    def _call(self, method: str, suffix: str, timeout: float, payload=None) -> dict:
        version = f"/versions/{self.version}" if self.version else ""
        url = f"{self.target}/v1/models/{self.model_name}{version}{suffix}"
        try:
            response = self._session.request(method, url, json=payload, timeout=timeout)
        except (self._requests.ConnectionError, self._requests.Timeout) as e:
            raise TransportError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise TransportError(_GRPC_CODE.get(response.status_code, grpc.StatusCode.INTERNAL), message)
        return response.json()

    def signatures(self, timeout: float) -> dict[str, Signature]:
        defs = self._call("GET", "/metadata", timeout)["metadata"]["signature_def"]["signatureDef"]
        found = {name: Signature(inputs={k: tuple(int(d.get("size", -1)) for d in v["tensorShape"].get("dim", []))
                                         for k, v in sig.get("inputs", {}).items()},
                                 outputs=tuple(sorted(sig.get("outputs", {}))))
                 for name, sig in defs.items()}
        self._outputs = {name: sig.outputs for name, sig in found.items()}
        return found

    def predict(self, inputs: dict[str, np.ndarray], signature_name: str, timeout: float) -> dict[str, np.ndarray]:
        body = {"signature_name": signature_name, "inputs": {k: v.tolist() for k, v in inputs.items()}}
        outputs = self._call("POST", ":predict", timeout, body)["outputs"]
        if not isinstance(outputs, dict):
            # A signature with one output answers with the bare value; its name is in the metadata.
            if signature_name not in self._outputs:
                self.signatures(timeout)
            outputs = {self._outputs[signature_name][0]: outputs}
        return {name: np.asarray(value) for name, value in outputs.items()}

    def close(self) -> None:
        self._session.close()


def transport_for(target: str, model_name: str, version: int | None = None, *, credentials=None,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Transport:
    """REST for an "http://" or "https://" target, gRPC ("host:port") otherwise."""
    if target.startswith(("http://", "https://")):
        return RestTransport(target, model_name, version)
    return GrpcTransport(target, model_name, version, credentials=credentials, max_message_bytes=max_message_bytes)
