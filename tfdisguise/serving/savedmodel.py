"""A SavedModel loaded the way TF Serving loads it: its "serve" MetaGraph in a TensorFlow session.

Why not `tf.saved_model.load`: TF Serving runs a signature by feeding its
input tensors and fetching its outputs in a session, for TF1 and TF2
SavedModels alike. `tf.saved_model.load` cannot load some TF1 SavedModels
(graphs whose pruned signatures no longer type-check, e.g. TF Serving's own
`saved_model_half_plus_three`), and it refuses, in Python, any input whose shape
differs from the signature's declaration, where TF Serving hands the tensor to
the model and lets its kernels decide (a [1] for a declared [None, 1] runs).
Loading the MetaGraph into a session serves the same models with the same
answers as TF Serving.

`SessionModel.signatures[name]` mimics what `tf.saved_model.load(...).signatures`
offers the registry: `structured_input_signature[1]` (each input's TensorSpec)
and a call with the inputs by name, which returns numpy arrays by output name.

>>> spec = _tensor_spec(_info("DT_FLOAT", [-1, 1]))
>>> spec.shape.as_list(), spec.dtype.name
([None, 1], 'float32')
>>> _tensor_spec(_info("DT_STRING", None)).shape.rank is None
True
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

__all__ = ["SessionModel", "SessionSignature", "fed_shape", "load_model", "prefer_tflite"]

SERVE_TAG = "serve"


def _info(dtype: str, dims) -> meta_graph_pb2.TensorInfo:
    """A TensorInfo (for the doctests): `dims` None is an unknown rank."""
    info = meta_graph_pb2.TensorInfo(dtype=tf.dtypes.as_dtype(dtype.lower()[3:]).as_datatype_enum)
    if dims is None:
        info.tensor_shape.unknown_rank = True
    for d in dims or ():
        info.tensor_shape.dim.add().size = d
    return info


def _tensor_spec(info) -> tf.TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None
                                                         for d in info.tensor_shape.dim]
    return tf.TensorSpec(shape, tf.dtypes.as_dtype(info.dtype))


class SessionSignature:
    """One signature of a `SessionModel`: called with numpy inputs by name, it returns numpy outputs by name."""

    def __init__(self, model: SessionModel, signature_def):
        self._model = model
        self.signature_def = signature_def
        self.method_name = signature_def.method_name
        specs = {k: _tensor_spec(v) for k, v in signature_def.inputs.items()}
        self.structured_input_signature = ((), specs)
        self.output_specs = {k: _tensor_spec(v) for k, v in signature_def.outputs.items()}
        self._callables: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def _callable(self, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        """A session callable per (inputs, outputs): it feeds without Python's shape check, as TF Serving's
        Session::Run does, so the model's kernels judge the shapes."""
        key = (inputs, outputs)
        with self._lock:
            if key not in self._callables:
                options = config_pb2.CallableOptions(
                    feed=[self.signature_def.inputs[k].name for k in inputs],
                    fetch=[self.signature_def.outputs[k].name for k in outputs])
                # Session.make_callable with feeds goes through Session.run, which refuses a shape that differs
                # from the placeholder's in Python; a callable made from options feeds as the C++ session does.
                self._callables[key] = self._model.session._make_callable_from_options(options)
            return self._callables[key]

    def __call__(self, output_filter=(), **inputs) -> dict[str, np.ndarray]:
        unknown = set(inputs) - set(self.structured_input_signature[1])
        if unknown:
            raise ValueError(f"Unknown inputs {sorted(unknown)}; the signature expects "
                             f"{sorted(self.structured_input_signature[1])}")
        outputs = tuple(output_filter) or tuple(sorted(self.output_specs))
        names = tuple(sorted(inputs))
        values = self._callable(names, outputs)(*[np.asarray(inputs[k]) for k in names])
        return dict(zip(outputs, values))


class SessionModel:
    """The "serve" MetaGraph of the SavedModel at `path`, loaded in its own graph and session.

    `intra_op`/`inter_op` are TensorFlow's thread counts for this session (0:
    TensorFlow picks); by default they follow tf.config.threading, which
    --tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism set.
    """

    def __init__(self, path: str, intra_op: int | None = None, inter_op: int | None = None):
        intra = tf.config.threading.get_intra_op_parallelism_threads() if intra_op is None else intra_op
        inter = tf.config.threading.get_inter_op_parallelism_threads() if inter_op is None else inter_op
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra, inter_op_parallelism_threads=inter,
                                          allow_soft_placement=True)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], path)
        except Exception:
            self.session.close()
            raise
        self.meta_graph = meta_graph
        self.signature_defs = {name: sig for name, sig in meta_graph.signature_def.items()
                               if not name.startswith("__")}
        self.signatures = {name: SessionSignature(self, sig) for name, sig in self.signature_defs.items()}

    def close(self) -> None:
        self.session.close()


def fed_shape(shape, spec_shape: tf.TensorShape) -> tuple[int, ...] | None:
    """The shape to feed for an input of `shape` under a signature that declares `spec_shape`; None if it does not fit.

    A shape that fits is fed as it is. TF Serving feeds any shape and lets the
    kernels judge, so a [1] for a declared [None, 1] runs there, and so does a
    [1] for a declared scalar; feeding a rank the graph was not built for can
    also crash a kernel outright (oneDNN's convolution aborts the process on a
    rank-2 image), so here the only shapes that do not fit but still run are
    those that differ from the declared ones by trailing dimensions of size 1:
    they are fed with the declared rank (same values, 1s added or removed), and
    `Servable.run` gives the outputs the request's rank back the same way.

    >>> fed_shape((3,), tf.TensorShape([None, 1]))
    (3, 1)
    >>> fed_shape((1,), tf.TensorShape([]))
    ()
    >>> fed_shape((2, 9), tf.TensorShape([None, 8])) is None
    True
    >>> fed_shape((3, 4), tf.TensorShape(None))
    (3, 4)
    """
    shape = tuple(shape)
    if spec_shape.is_compatible_with(shape):
        return shape
    if spec_shape.rank is None or spec_shape.rank == len(shape):
        return None
    if spec_shape.rank < len(shape):  # the request has trailing 1s the signature does not declare
        trimmed = shape[:spec_shape.rank]
        ok = all(d == 1 for d in shape[spec_shape.rank:]) and spec_shape.is_compatible_with(trimmed)
        return trimmed if ok else None
    padded = shape + (1,) * (spec_shape.rank - len(shape))
    trailing = spec_shape.as_list()[len(shape):]
    return padded if all(d == 1 for d in trailing) and spec_shape.is_compatible_with(padded) else None


_PREFER_TFLITE = False  # --prefer_tflite_model, for this process (set once by `serve`, before any model loads)


def prefer_tflite(enabled: bool) -> None:
    """TF Serving's --prefer_tflite_model: a version with a model.tflite is served from it."""
    global _PREFER_TFLITE
    _PREFER_TFLITE = bool(enabled)


def load_model(path: str):
    """The version at `path`: its model.tflite under --prefer_tflite_model when it has one, else its SavedModel."""
    tflite = f"{path.rstrip('/')}/model.tflite"
    if _PREFER_TFLITE and tf.io.gfile.exists(tflite):
        from tfdisguise.serving.tflite import TfLiteModel

        return TfLiteModel(tflite)
    return SessionModel(path)
