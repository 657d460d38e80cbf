"""A version's model.tflite, served as TF Serving serves it with --prefer_tflite_model=true.

TF Serving reads the SignatureDefs that its converter stores in the model's
"signature_defs_metadata" (a flexbuffer map from signature name to a serialized
SignatureDef, whose tensor names are the TF Lite tensors' names plus ":0");
without them it serves one "serving_default" signature whose inputs and
outputs are the model's tensors, by name. Runs go through one
`tf.lite.Interpreter` per version, one at a time (an interpreter is not
thread-safe); an input of another size than the tensor's is resized to it,
within the same rank.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

__all__ = ["TfLiteModel"]

_METADATA = b"signature_defs_metadata"


def _stored_signature_defs(path: str) -> dict:
    """The SignatureDefs that TF Serving's converter stored in the model's metadata, or {}."""
    from flatbuffers import flexbuffers
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    for entry in model.metadata or ():
        if entry.name == _METADATA:
            root = flexbuffers.GetRoot(bytes(model.buffers[entry.buffer].data)).AsMap
            # The values are flexbuffer strings holding binary protos: read as bytes, not decoded as text.
            return {key.AsKey: meta_graph_pb2.SignatureDef.FromString(bytes(value.AsStringBytes))
                    for key, value in zip(root.Keys, root.Values)}
    return {}


def _tensor_info(detail: dict) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=f"{detail['name']}:0", dtype=tf.as_dtype(detail["dtype"]).as_datatype_enum)
    for d in detail.get("shape_signature", detail["shape"]):
        info.tensor_shape.dim.add().size = int(d)
    return info


class _Signature:
    def __init__(self, model: TfLiteModel, signature_def, specs: dict, outputs: dict):
        self._model, self.signature_def = model, signature_def
        self.method_name = signature_def.method_name
        self.structured_input_signature = ((), specs)
        self.output_specs = outputs

    def __call__(self, output_filter=(), **inputs):
        names = tuple(output_filter) or tuple(sorted(self.output_specs))
        return self._model.run(self.signature_def, inputs, names)


class TfLiteModel:
    """The model.tflite at `path`, with `signatures` and `signature_defs` as `SessionModel` has them."""

    def __init__(self, path: str):
        self.interpreter = tf.lite.Interpreter(model_path=path)
        self.interpreter.allocate_tensors()
        self._lock = threading.Lock()
        details = self.interpreter.get_input_details() + self.interpreter.get_output_details()
        self._index = {f"{d['name']}:0": d["index"] for d in details}
        defs = _stored_signature_defs(path)
        if not defs:
            sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            for d in self.interpreter.get_input_details():
                sig.inputs[d["name"]].CopyFrom(_tensor_info(d))
            for d in self.interpreter.get_output_details():
                sig.outputs[d["name"]].CopyFrom(_tensor_info(d))
            defs = {"serving_default": sig}
        from tfdisguise.serving.savedmodel import _tensor_spec

        self.signature_defs = defs
        self.signatures = {}
        for name, sig in defs.items():
            missing = [t.name for t in list(sig.inputs.values()) + list(sig.outputs.values())
                       if t.name not in self._index]
            if missing:
                raise ValueError(f"{path}: signature {name!r} names tensors the model does not have: {missing}")
            self.signatures[name] = _Signature(self, sig, {k: _tensor_spec(v) for k, v in sig.inputs.items()},
                                               {k: _tensor_spec(v) for k, v in sig.outputs.items()})

    def run(self, signature_def, inputs: dict, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        with self._lock:
            resized = False
            for key, value in inputs.items():
                index = self._index[signature_def.inputs[key].name]
                value = np.asarray(value)
                current = next(d for d in self.interpreter.get_input_details() if d["index"] == index)["shape"]
                if tuple(current) != value.shape:
                    self.interpreter.resize_tensor_input(index, list(value.shape), strict=True)
                    resized = True
            if resized:
                self.interpreter.allocate_tensors()
            for key, value in inputs.items():
                self.interpreter.set_tensor(self._index[signature_def.inputs[key].name], np.asarray(value))
            self.interpreter.invoke()
            return {k: np.array(self.interpreter.get_tensor(self._index[signature_def.outputs[k].name]))
                    for k in outputs}
