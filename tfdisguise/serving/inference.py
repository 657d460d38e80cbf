"""TF Serving's Classify, Regress and MultiInference, over gRPC and REST, on tf.Example inputs.

As TF Serving: the request's examples (an `Input` proto's example_list, or
example_list_with_context, whose context features every example gets unless it
has its own) are serialized, and the signature's one DT_STRING input receives
them as a [N] batch. A classification signature answers with `scores`
([N, classes] or [N], float) and/or `classes` ([N, classes], string); a
regression one with `outputs` ([N] or [N, 1], float). The signature's method
name is not checked (TF Serving's default), so TF2 signatures, which all say
`tensorflow/serving/predict`, classify and regress; MultiInference dispatches
on each task's method_name (`tensorflow/serving/classify` or `.../regress`).

REST: POST `:classify` / `:regress` with {"signature_name", "examples": [...],
"context": {...}} answers {"results": ...}: per example a list of
[label, score] pairs, or one number. A JSON feature value is a number, a string,
{"b64": "..."} (bytes), or a list of one kind; integers become int64_list,
other numbers float_list, strings bytes_list.

Limits: the serialized examples of one request may hold at most
`max_request_bytes` (the same cap as Predict's decoded inputs), checked before
the model runs; a REST body has its own cap (`rest_api`).

>>> example = json_example({"x": 2.0, "n": [1, 2], "s": "a", "b": {"b64": "AAE="}})
>>> example.features.feature["x"].float_list.value[:], example.features.feature["n"].int64_list.value[:]
([2.0], [1, 2])
>>> example.features.feature["b"].bytes_list.value[0]
b'\\x00\\x01'
"""

from __future__ import annotations

import base64
import binascii

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, regression_pb2

from tfdisguise.serving.registry import ModelRegistry, Servable, ServingError, spec_version

__all__ = ["CLASSIFY", "PREDICT", "REGRESS", "classify", "json_bytes", "json_example", "json_input", "multi_inference",
           "regress", "rest_classify", "rest_regress"]

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def serialized_examples(inputs: input_pb2.Input, max_bytes: int) -> np.ndarray:
    """The `Input`'s examples, serialized as the model's string input receives them ([N], object dtype)."""
    kind = inputs.WhichOneof("kind")
    if kind == "example_list":
        examples = list(inputs.example_list.examples)
        context = None
    elif kind == "example_list_with_context":
        examples = list(inputs.example_list_with_context.examples)
        context = inputs.example_list_with_context.context
    else:
        raise _invalid("Input is empty: give example_list or example_list_with_context.")
    if not examples:
        raise _invalid("Input is empty: the example list holds no examples.")
    out, total = [], 0
    for example in examples:
        if context is not None:  # the context's features, overridden by the example's own (TF Serving's merge)
            merged = tf.train.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            example = merged
        data = example.SerializeToString()
        total += len(data) + 8
        if total > max_bytes:
            raise _invalid(f"The examples take more than the limit of {max_bytes / (1 << 20):.2f} MiB per request.")
        out.append(data)
    return np.array(out, dtype=object)


def _signature(servable: Servable, signature_name: str, method: str):
    """The signature's name, its one string input's name, and its output names, once it suits `method`."""
    # The method_name is not checked, as TF Serving checks it only with --enable_signature_method_name_check
    # (default false): every tf.saved_model.save signature says tensorflow/serving/predict. Inputs and outputs are.
    name, fn = servable.signature(signature_name)
    specs = fn.structured_input_signature[1]
    if len(specs) != 1:
        raise _invalid(f"Expected one input Tensor in signature \"{name}\"; it has {sorted(specs)}.")
    (key, spec), = specs.items()
    if spec.dtype != tf.string:
        raise _invalid(f"Signature \"{name}\" takes {spec.dtype.name} input '{key}'; {method} needs serialized "
                       f"tf.Examples (a string input).")
    return name, key, set(servable.signature_defs[name].outputs)


def _run(servable: Servable, name: str, key: str, examples: np.ndarray, outputs: tuple[str, ...]) -> dict:
    result = servable.run(name, {key: examples}, outputs)
    for output, value in result.items():
        if value.ndim == 0 or value.shape[0] != len(examples):
            raise _invalid(f"Output '{output}' has shape {list(value.shape)}; expected {len(examples)} rows, one "
                           f"per example.")
    return result


def _classify(servable: Servable, signature_name: str, examples: np.ndarray,
              result: classification_pb2.ClassificationResult) -> str:
    name, key, outputs = _signature(servable, signature_name, CLASSIFY)
    wanted = tuple(k for k in ("classes", "scores") if k in outputs)
    if not wanted:
        raise _invalid(f"Signature \"{name}\" has neither a 'classes' nor a 'scores' output; it has "
                       f"{sorted(outputs)}.")
    values = _run(servable, name, key, examples, wanted)
    scores, classes = values.get("scores"), values.get("classes")
    if scores is not None:
        if scores.dtype.kind != "f":
            raise _invalid(f"Expected output 'scores' to be float; it is {scores.dtype}.")
        scores = scores.reshape(len(examples), -1)
    if classes is not None:
        if classes.dtype != object:
            raise _invalid(f"Expected output 'classes' to be string; it is {classes.dtype}.")
        classes = classes.reshape(len(examples), -1)
    if scores is not None and classes is not None and scores.shape != classes.shape:
        raise _invalid(f"Outputs 'classes' {list(classes.shape)} and 'scores' {list(scores.shape)} differ in shape.")
    width = (scores if scores is not None else classes).shape[1]
    for row in range(len(examples)):
        classification = result.classifications.add()
        for j in range(width):
            entry = classification.classes.add()
            if classes is not None:
                entry.label = classes[row, j].decode("utf-8", "replace") if isinstance(classes[row, j], bytes) \
                    else str(classes[row, j])
            if scores is not None:
                entry.score = float(scores[row, j])
    return name


def _regress(servable: Servable, signature_name: str, examples: np.ndarray,
             result: regression_pb2.RegressionResult) -> str:
    name, key, outputs = _signature(servable, signature_name, REGRESS)
    if "outputs" not in outputs:
        raise _invalid(f"Signature \"{name}\" has no 'outputs' output; it has {sorted(outputs)}.")
    values = _run(servable, name, key, examples, ("outputs",))["outputs"]
    if values.dtype.kind != "f":
        raise _invalid(f"Expected output 'outputs' to be float; it is {values.dtype}.")
    if values.size != len(examples):
        raise _invalid(f"Expected output 'outputs' to hold one value per example ([{len(examples)}] or "
                       f"[{len(examples)}, 1]); it has shape {list(values.shape)}.")
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)
    return name


def _answered_by(model_spec, servable: Servable, signature: str) -> None:
    model_spec.name = servable.name
    model_spec.version.value = servable.version
    model_spec.signature_name = signature


def classify(registry: ModelRegistry, request, max_bytes: int) -> classification_pb2.ClassificationResponse:
    """PredictionService.Classify."""
    response = classification_pb2.ClassificationResponse()
    with registry.hold(request.model_spec.name, *spec_version(request.model_spec)) as servable:
        examples = serialized_examples(request.input, max_bytes)
        name = _classify(servable, request.model_spec.signature_name, examples, response.result)
    _answered_by(response.model_spec, servable, name)
    return response


def regress(registry: ModelRegistry, request, max_bytes: int) -> regression_pb2.RegressionResponse:
    """PredictionService.Regress."""
    response = regression_pb2.RegressionResponse()
    with registry.hold(request.model_spec.name, *spec_version(request.model_spec)) as servable:
        examples = serialized_examples(request.input, max_bytes)
        name = _regress(servable, request.model_spec.signature_name, examples, response.result)
    _answered_by(response.model_spec, servable, name)
    return response


def multi_inference(registry: ModelRegistry, request, max_bytes: int) -> inference_pb2.MultiInferenceResponse:
    """PredictionService.MultiInference: classify and regress tasks of one model on the same examples."""
    tasks = list(request.tasks)
    if not tasks:
        raise _invalid("MultiInferenceRequest has no tasks.")
    model = tasks[0].model_spec
    seen = set()
    for task in tasks:
        if task.model_spec.name != model.name or spec_version(task.model_spec) != spec_version(model):
            raise _invalid("Input ModelSpecs must name the same model and version in every task.")
        signature = task.model_spec.signature_name or "serving_default"
        if signature in seen:
            raise _invalid(f"Duplicate evaluation of signature: {signature}")
        seen.add(signature)
        if task.method_name not in (CLASSIFY, REGRESS):
            raise _invalid(f"Unsupported signature method_name: {task.method_name!r}; expected {CLASSIFY} or "
                           f"{REGRESS}.")
    response = inference_pb2.MultiInferenceResponse()
    with registry.hold(model.name, *spec_version(model)) as servable:
        examples = serialized_examples(request.input, max_bytes)
        for task in tasks:
            result = response.results.add()
            if task.method_name == CLASSIFY:
                name = _classify(servable, task.model_spec.signature_name, examples, result.classification_result)
            else:
                name = _regress(servable, task.model_spec.signature_name, examples, result.regression_result)
            _answered_by(result.model_spec, servable, name)
    return response


# ---- REST -------------------------------------------------------------------------------------


def _feature(name: str, value) -> tf.train.Feature:
    values = value if isinstance(value, list) else [value]
    feature = tf.train.Feature()
    if not values:
        return feature
    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, float, str, dict)) for v in values):
        raise _invalid(f"Feature '{name}': expected numbers, strings or {{\"b64\": ...}} values, got {value!r:.80}.")
    if all(isinstance(v, int) for v in values):
        feature.int64_list.value.extend(values)
    elif all(isinstance(v, (int, float)) for v in values):
        feature.float_list.value.extend(values)
    elif all(isinstance(v, (str, dict)) for v in values):
        data = []
        for v in values:
            if isinstance(v, dict):
                if set(v) != {"b64"} or not isinstance(v["b64"], str):
                    raise _invalid(f"Feature '{name}': an object value must be {{\"b64\": \"...\"}}, got {v!r:.80}.")
                try:
                    data.append(base64.b64decode(v["b64"], validate=True))
                except binascii.Error as e:
                    raise _invalid(f"Feature '{name}': the b64 value is not base64: {e}") from None
            else:
                data.append(v.encode("utf-8"))
        feature.bytes_list.value.extend(data)
    else:
        raise _invalid(f"Feature '{name}': a feature's values must be all numbers or all strings, got {value!r:.80}.")
    return feature


def json_bytes(value):
    """A REST string input's nested lists, with each {"b64": "..."} decoded and each str encoded as UTF-8."""
    if isinstance(value, list):
        return [json_bytes(v) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise _invalid(f"An object in a string input must be {{\"b64\": \"...\"}}, got {value!r:.80}.")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as e:
            raise _invalid(f"A b64 value is not base64: {e}") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise _invalid(f"Expected a string or {{\"b64\": ...}} for a string input, got {value!r:.80}.")


def json_example(features) -> tf.train.Example:
    """One REST example (an object of feature name to value) as a tf.Example."""
    if not isinstance(features, dict):
        raise _invalid(f"Each example must be an object of named features, got {features!r:.80}.")
    example = tf.train.Example()
    for name, value in features.items():
        example.features.feature[name].CopyFrom(_feature(name, value))
    return example


def json_input(body: dict) -> input_pb2.Input:
    """The `Input` of a REST :classify or :regress body ("examples", and optionally "context")."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise _invalid("'examples' must be a non-empty list of objects.")
    inputs = input_pb2.Input()
    if "context" in body:
        target = inputs.example_list_with_context
        target.context.CopyFrom(json_example(body["context"]))
    else:
        target = inputs.example_list
    for features in examples:
        target.examples.add().CopyFrom(json_example(features))
    return inputs


def rest_classify(registry: ModelRegistry, servable: Servable, body: dict, max_bytes: int) -> dict:
    """A REST :classify answer: {"results": [[[label, score], ...] per example]}."""
    result = classification_pb2.ClassificationResult()
    _classify(servable, body.get("signature_name") or "", serialized_examples(json_input(body), max_bytes), result)
    return {"results": [[[c.label, c.score] for c in row.classes] for row in result.classifications]}


def rest_regress(registry: ModelRegistry, servable: Servable, body: dict, max_bytes: int) -> dict:
    """A REST :regress answer: {"results": [value per example]}."""
    result = regression_pb2.RegressionResult()
    _regress(servable, body.get("signature_name") or "", serialized_examples(json_input(body), max_bytes), result)
    return {"results": [r.value for r in result.regressions]}


# ---- answers ----------------------------------------------------------------------------------

# The repeated field that TF Serving's Tensor::AsProtoField fills for each dtype; others go in tensor_content.
_TYPED_FIELD = {np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val", np.dtype(np.int32): "int_val",
                np.dtype(np.int16): "int_val", np.dtype(np.int8): "int_val", np.dtype(np.uint8): "int_val",
                np.dtype(np.uint16): "int_val", np.dtype(np.int64): "int64_val", np.dtype(np.bool_): "bool_val",
                np.dtype(np.uint32): "uint32_val", np.dtype(np.uint64): "uint64_val"}


def tensor_proto(value) -> tf.compat.v1.TensorProto:
    """`value` as TF Serving writes an output: the dtype's typed field (float_val, ...), not tensor_content.

    Clients that read tensor_content only, or float_val only, get what they get from TF Serving.

    >>> tensor_proto(np.array([3.0], np.float32)).float_val[:]
    [3.0]
    >>> tensor_proto(np.array([b"a"], object)).string_val[:]
    [b'a']
    """
    value = np.asarray(value)
    field = _TYPED_FIELD.get(value.dtype)
    if field is None:
        return tf.make_tensor_proto(value)
    proto = tf.make_tensor_proto(np.zeros((0,), value.dtype))
    proto.tensor_content = b""
    proto.tensor_shape.Clear()
    for d in value.shape:
        proto.tensor_shape.dim.add().size = d
    getattr(proto, field).extend(value.ravel().tolist())
    return proto
