"""Loads SavedModel versions from `<base_path>/<version>/`, as TF Serving does, and runs them.

Errors carry TF Serving's status codes: NOT_FOUND for an unknown model or
version, INVALID_ARGUMENT for inputs that do not fit the signature.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

__all__ = ["ServingError", "Servable", "ModelRegistry", "parse_model_config"]


class ServingError(Exception):
    """An error with a gRPC status code, reported to the client as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def parse_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Reads a `models.config` text proto (TF Serving's --model_config_file)."""
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{path} is not a valid ModelServerConfig text proto: {e}") from None


_NP_TO_TF = {np.dtype(np.float32): tf.float32, np.dtype(np.float64): tf.float64, np.dtype(np.int32): tf.int32,
             np.dtype(np.int64): tf.int64, np.dtype(np.uint8): tf.uint8, np.dtype(object): tf.string}


@dataclasses.dataclass
class Servable:
    """One loaded version of one model."""

    name: str
    version: int
    path: str
    loaded: object
    signature_defs: dict  # name -> tensorflow.SignatureDef proto, as saved

    def signature(self, signature_name: str):
        name = signature_name or "serving_default"
        if name not in self.loaded.signatures:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: \"{name}\" not found in signature def")
        return name, self.loaded.signatures[name]

    def input_specs(self, signature_name: str) -> tuple[str, dict[str, tf.TensorSpec]]:
        """The signature's name and its inputs' `TensorSpec`s by name: what a request is checked against."""
        name, fn = self.signature(signature_name)
        return name, fn.structured_input_signature[1]

    def run(self, signature_name: str, inputs: dict, output_filter=()) -> dict[str, np.ndarray]:
        """Checks `inputs` against the signature and runs it."""
        name, spec = self.input_specs(signature_name)
        fn = self.loaded.signatures[name]
        if set(inputs) != set(spec):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Signature \"{name}\" expects inputs {sorted(spec)}; got {sorted(inputs)}")
        feed = {}
        for key, value in inputs.items():
            expected = spec[key]
            value = np.asarray(value)
            got = _NP_TO_TF.get(value.dtype)
            if got != expected.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Expects input '{key}' to be {expected.dtype.name} but {value.dtype} is provided")
            if not expected.shape.is_compatible_with(value.shape):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Input '{key}' has shape {list(value.shape)}, but the signature expects "
                                   f"{expected.shape.as_list()}")
            feed[key] = tf.constant(value)
        try:
            outputs = fn(**feed)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e).split("\n")[0]) from None
        if output_filter:
            unknown = set(output_filter) - set(outputs)
            if unknown:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {sorted(unknown)}")
            outputs = {k: outputs[k] for k in output_filter}
        return {k: np.asarray(v.numpy(), dtype=object if v.dtype == tf.string else None) for k, v in outputs.items()}


def _signature_defs(path: str) -> dict:
    sm = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        sm.ParseFromString(f.read())
    defs = sm.meta_graphs[0].signature_def
    return {k: defs[k] for k in defs if not k.startswith("__")}


def _versions(base_path: str) -> list[int]:
    if not tf.io.gfile.isdir(base_path):
        raise ValueError(f"Model base path {base_path} does not exist or is not a directory.")
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base_path) if re.fullmatch(r"\d+/?", n))


class ModelRegistry:
    """The models a server serves, with their loaded versions."""

    def __init__(self, config: model_server_config_pb2.ModelServerConfig):
        self._lock = threading.Lock()
        self._models: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        for mc in config.model_config_list.config:
            self._load(mc)

    @classmethod
    def from_flags(cls, model_name=None, model_base_path=None, model_config_file=None) -> ModelRegistry:
        if model_config_file:
            return cls(parse_model_config(model_config_file))
        if not model_base_path:
            raise ValueError("Give --model_config_file, or --model_base_path (with --model_name).")
        config = model_server_config_pb2.ModelServerConfig()
        mc = config.model_config_list.config.add()
        mc.name = model_name or "default"
        mc.base_path = model_base_path
        return cls(config)

    def _load(self, mc) -> None:
        versions = _versions(mc.base_path)
        policy = mc.model_version_policy.WhichOneof("policy_choice")
        if policy == "all":
            chosen = versions
        elif policy == "specific":
            chosen = [v for v in versions if v in set(mc.model_version_policy.specific.versions)]
        else:  # TF Serving's default: the latest version(s)
            n = mc.model_version_policy.latest.num_versions if policy == "latest" else 1
            chosen = versions[-max(1, n):]
        if not chosen:
            raise ValueError(f"Model {mc.name!r}: no servable versions under {mc.base_path}.")
        servables = {}
        for v in chosen:
            path = os.path.join(mc.base_path, str(v))
            servables[v] = Servable(mc.name, v, path, tf.saved_model.load(path), _signature_defs(path))
        with self._lock:
            self._models[mc.name] = servables
            self._labels[mc.name] = dict(mc.version_labels)

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._lookup(name))

    def _lookup(self, name: str) -> dict[int, Servable]:
        if name not in self._models:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        return self._models[name]

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        servables = self._lookup(name)
        if label:
            if label not in self._labels.get(name, {}):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {label}")
            version = self._labels[name][label]
        if version is None:
            return servables[max(servables)]
        if version not in servables:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return servables[version]
