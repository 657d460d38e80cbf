"""TF Serving conformance (issue 23): what a TF Serving client sends, the embedded server answers as TF Serving does.

One server, started as a user starts it (`tfdisguise serve --embedded` with
TF Serving's flags, in a second process), serves three tiny models generated
here: a TF1 SavedModel (tf.compat.v1 graph + SavedModelBuilder) with classify,
regress and predict signatures in a zero-padded version directory, a TF2
`tf.saved_model.save` module, and a Keras `model.export`. Clients talk to it
over loopback TCP, its Unix domain socket, and REST.
"""

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grpc
import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

EXE = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
METRICS_PATH = "/monitoring/prometheus/metrics"
TIMEOUT = 10  # seconds for any one call


def _tf1_model(path):
    """half_plus_two as TF1 exported it: a graph, variables, and classify/regress/predict signatures."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        a = tf.compat.v1.Variable(0.5, name="a")
        b = tf.compat.v1.Variable(2.0, name="b")
        serialized = tf.compat.v1.placeholder(tf.string, name="tf_example")
        parsed = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        y = tf.add(a * x, b, name="y")
        y_examples = tf.add(a * parsed["x"], b, name="y_examples")
        classes = tf.fill(tf.shape(y_examples), "plus_two", name="classes")
        scalar = tf.compat.v1.placeholder(tf.float32, [], name="scalar")  # as TF Serving's half_plus_three declares
        y_scalar = tf.add(a * scalar, 3.0, name="y_scalar")
        sess.run(tf.compat.v1.global_variables_initializer())
        info = tf.compat.v1.saved_model.build_tensor_info
        sig = tf.compat.v1.saved_model.build_signature_def
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            "serving_default": sig({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
            "scalar": sig({"x": info(scalar)}, {"y": info(y_scalar)}, "tensorflow/serving/predict"),
            "classify_x_to_y": sig({"inputs": info(serialized)},
                                   {"scores": info(y_examples), "classes": info(classes)},
                                   "tensorflow/serving/classify"),
            "regress_x_to_y": sig({"inputs": info(serialized)}, {"outputs": info(y_examples)},
                                  "tensorflow/serving/regress"),
        })
        builder.save()


class _Tf2(tf.Module):
    """A TF2 model: its signatures have method_name tensorflow/serving/predict, as every tf.saved_model.save's."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(3.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def triple(self, x):
        return {"y": self.w * x}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([], tf.float32),
                                         "k": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})
        return {"outputs": self.w * x["x"] + x["k"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
    def length(self, data):
        return {"n": tf.strings.length(data)}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(proc, port, deadline_s=90):
    """Waits for the model status to answer; fails (with the server's stderr) if the process ends or time runs out."""
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "tf1"}), timeout=1)
            return
        except grpc.RpcError:
            time.sleep(0.3)
    pytest.fail("the server did not answer within 90 s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("conformance")
    _tf1_model(str(base / "tf1" / "00000007"))  # zero-padded, as TF Serving's own test data
    module = _Tf2()
    tf.saved_model.save(module, str(base / "tf2" / "00000002"), signatures={
        "serving_default": module.triple, "regress_x_to_y": module.regress, "length": module.length})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="ones",
                                                                   bias_initializer="zeros")])
    model.export(str(base / "keras" / "1"), verbose=False)
    lite = tf.lite.TFLiteConverter.from_concrete_functions([module.triple.get_concrete_function()], module).convert()
    (base / "lite" / "3").mkdir(parents=True)
    (base / "lite" / "3" / "model.tflite").write_bytes(lite)  # served with --prefer_tflite_model
    config = base / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
        for n in ("tf1", "tf2", "keras", "lite")) + "}\n")
    monitoring = base / "monitoring.config"
    # Written as TF Serving's documentation writes it: "prometheus_config: {", fields on their own lines.
    monitoring.write_text(f'prometheus_config: {{\n  enable: true,\n  path: "{METRICS_PATH}"\n}}\n')
    sock = base / "tfs.sock"
    port, rest_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [EXE, "serve", "--embedded", "--host", "127.0.0.1", f"--port={port}", f"--rest_api_port={rest_port}",
         f"--model_config_file={config}", f"--monitoring_config_file={monitoring}", f"--grpc_socket_path={sock}",
         "--grpc_channel_arguments=grpc.max_connection_age_ms=60000,grpc.so_reuseaddr=1",
         "--rest_api_timeout_in_ms=5000", "--allow_config_reload_rpc", "--file_system_poll_wait_seconds=0",
         "--prefer_tflite_model=true"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_serving(proc, port)
        yield {"port": port, "rest": f"http://127.0.0.1:{rest_port}", "sock": str(sock), "base": base,
               "config": config}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _stub(server, target=None):
    return prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(target or f"127.0.0.1:{server['port']}"))


def _predict_request(name, x, signature="serving_default", input_name="x"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(x))
    return request


def _examples(request_input, *xs, context=None):
    target = request_input.example_list_with_context if context else request_input.example_list
    if context:
        target.context.features.feature["k"].float_list.value.append(context)
    for x in xs:
        target.examples.add().features.feature["x"].float_list.value.append(x)


# ---- Predict ------------------------------------------------------------------------------------


def test_predict_as_tf_serving_answers_it_zero_padded_version_and_float_val(server):
    stub = _stub(server)
    # TF Serving's own end-to-end request: a [1] tensor for a signature that declares [None, 1].
    answer = stub.Predict(_predict_request("tf1", np.array([2.0], np.float32)), timeout=TIMEOUT)
    assert answer.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(answer.outputs["y"].float_val) == [3.0]  # the typed field, as TF Serving writes it
    assert [d.size for d in answer.outputs["y"].tensor_shape.dim] == [1]
    assert answer.model_spec.version.value == 7 and answer.model_spec.signature_name == "serving_default"
    # ... and a [1] for a declared scalar: the answer has the request's rank.
    answer = stub.Predict(_predict_request("tf1", np.array([2.0], np.float32), "scalar"), timeout=TIMEOUT)
    assert list(answer.outputs["y"].float_val) == [4.0] and [d.size for d in answer.outputs["y"].tensor_shape.dim] \
        == [1]
    answer = stub.Predict(_predict_request("tf1", np.array([[2.0], [4.0]], np.float32)), timeout=TIMEOUT)
    np.testing.assert_array_equal(tf.make_ndarray(answer.outputs["y"]), [[3.0], [4.0]])
    # A TF2 model and a Keras export.
    answer = stub.Predict(_predict_request("tf2", np.array([1.0, 2.0], np.float32)), timeout=TIMEOUT)
    assert list(answer.outputs["y"].float_val) == [3.0, 6.0] and answer.model_spec.version.value == 2
    meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "keras"}, metadata_field=["signature_def"]), timeout=TIMEOUT)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    (keras_input,) = sig_map.signature_def["serving_default"].inputs
    (keras_output,) = sig_map.signature_def["serving_default"].outputs
    answer = stub.Predict(_predict_request("keras", np.array([[1.0, 2.0]], np.float32), input_name=keras_input),
                          timeout=TIMEOUT)
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs[keras_output]), [[3.0]])
    # Other shapes that do not fit are still refused before the model runs, as are wrong dtypes.
    for bad, needle in ((np.zeros((2, 3), np.float32), "signature expects [None, 1]"),
                        (np.zeros((2, 1, 1, 3), np.float32), "signature expects [None, 1]"),
                        (np.array([2.0], np.float64), "to be float32")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(_predict_request("tf1", bad), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()


def test_tflite_model_with_prefer_tflite_model(server):
    stub = _stub(server)
    meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "lite"}, metadata_field=["signature_def"]), timeout=TIMEOUT)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    signature = sig_map.signature_def["serving_default"]
    (lite_input,), (lite_output,) = signature.inputs, signature.outputs
    for x in ([1.0, 2.0], [4.0]):  # the interpreter is resized to each request's batch
        answer = stub.Predict(_predict_request("lite", np.array(x, np.float32), input_name=lite_input),
                              timeout=TIMEOUT)
        assert list(answer.outputs[lite_output].float_val) == [3 * v for v in x]
        assert answer.model_spec.version.value == 3


def test_rest_predict_rows_columns_and_b64(server):
    url = f"{server['rest']}/v1/models/tf1:predict"
    assert requests.post(url, json={"instances": [2.0, 3.0, 4.0]}, timeout=TIMEOUT).json() == {
        "predictions": [3.0, 3.5, 4.0]}
    assert requests.post(url, json={"inputs": [2.0, 3.0, 4.0]}, timeout=TIMEOUT).json() == {"outputs": [3.0, 3.5, 4.0]}
    assert requests.post(url, json={"instances": [[2.0], [3.0]]}, timeout=TIMEOUT).json() == {
        "predictions": [[3.0], [3.5]]}
    assert requests.post(url, json={"inputs": {"x": [[2.0]]}}, timeout=TIMEOUT).json() == {"outputs": [[3.0]]}
    # {"b64": ...} is bytes (here with a zero byte and invalid UTF-8), plain strings their UTF-8.
    url = f"{server['rest']}/v1/models/tf2:predict"
    body = {"signature_name": "length", "instances": [{"b64": base64.b64encode(b"\x00\xff\x01").decode()}, "héllo"]}
    assert requests.post(url, json=body, timeout=TIMEOUT).json() == {"predictions": [3, 6]}
    answer = requests.post(url, json={"signature_name": "length", "instances": [{"b64": "not base64!"}]},
                           timeout=TIMEOUT)
    assert answer.status_code == 400 and "b64" in answer.json()["error"]


# ---- Classify, Regress, MultiInference -------------------------------------------------------------


def test_classify_regress_and_multi_inference_over_grpc(server):
    stub = _stub(server)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "tf1", "classify_x_to_y"
    _examples(request.input, 2.0, 4.0)
    answer = stub.Classify(request, timeout=TIMEOUT)
    assert [[(c.label, c.score) for c in row.classes] for row in answer.result.classifications] == [
        [("plus_two", 3.0)], [("plus_two", 4.0)]]
    assert (answer.model_spec.name, answer.model_spec.version.value, answer.model_spec.signature_name) == (
        "tf1", 7, "classify_x_to_y")

    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "tf1", "regress_x_to_y"
    _examples(request.input, 2.0)
    assert [r.value for r in stub.Regress(request, timeout=TIMEOUT).result.regressions] == [3.0]
    # A TF2 signature (method_name predict) takes examples too; the context's features reach every example.
    request.model_spec.name = "tf2"
    request.input.Clear()
    _examples(request.input, 1.0, 2.0, context=10.0)
    assert [r.value for r in stub.Regress(request, timeout=TIMEOUT).result.regressions] == [13.0, 16.0]

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = "tf1", signature
        task.method_name = f"tensorflow/serving/{method}"
    _examples(request.input, 2.0)
    answer = stub.MultiInference(request, timeout=TIMEOUT)
    assert answer.results[0].regression_result.regressions[0].value == 3.0
    assert answer.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [r.model_spec.signature_name for r in answer.results] == ["regress_x_to_y", "classify_x_to_y"]

    # Mistakes answer INVALID_ARGUMENT with what was expected.
    bad = classification_pb2.ClassificationRequest()
    bad.model_spec.name, bad.model_spec.signature_name = "tf1", "regress_x_to_y"
    _examples(bad.input, 2.0)
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(bad, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "neither a 'classes' nor a 'scores'" in \
        err.value.details()
    bad.model_spec.signature_name = "serving_default"
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(bad, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "string input" in err.value.details()
    request.tasks[1].method_name = "tensorflow/serving/predict"
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(request, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "method_name" in err.value.details()


def test_classify_and_regress_over_rest(server):
    rest = server["rest"]
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}, {"x": [4.0]}]}
    assert requests.post(f"{rest}/v1/models/tf1:classify", json=body, timeout=TIMEOUT).json() == {
        "results": [[["plus_two", 3.0]], [["plus_two", 4.0]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert requests.post(f"{rest}/v1/models/tf1/versions/7:regress", json=body, timeout=TIMEOUT).json() == {
        "results": [3.0]}
    body = {"signature_name": "regress_x_to_y", "context": {"k": 10.0}, "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert requests.post(f"{rest}/v1/models/tf2:regress", json=body, timeout=TIMEOUT).json() == {
        "results": [13.0, 16.0]}
    # As in TF Serving, a number without a fraction is an int64 feature, which a float feature does not take.
    body["examples"] = [{"x": 2}]
    answer = requests.post(f"{rest}/v1/models/tf2:regress", json=body, timeout=TIMEOUT)
    assert answer.status_code == 400 and "x" in answer.json()["error"]
    answer = requests.post(f"{rest}/v1/models/tf1:classify", json={"examples": []}, timeout=TIMEOUT)
    assert answer.status_code == 400 and "'examples' must be a non-empty list" in answer.json()["error"]


# ---- metadata and status --------------------------------------------------------------------------


def test_model_metadata_field_for_field_over_grpc_and_rest(server):
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((server["base"] / "tf1" / "00000007" / "saved_model.pb").read_bytes())
    on_disk = {k: v for k, v in saved.meta_graphs[0].signature_def.items() if not k.startswith("__")}
    meta = _stub(server).GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "tf1"}, metadata_field=["signature_def"]), timeout=TIMEOUT)
    assert (meta.model_spec.name, meta.model_spec.version.value) == ("tf1", 7) and list(meta.metadata) == [
        "signature_def"]
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    assert dict(sig_map.signature_def) == on_disk
    # REST: TF Serving's JSON, field for field (proto field names, default values written out).
    expected_map = get_model_metadata_pb2.SignatureDefMap(signature_def=on_disk)
    rest = requests.get(f"{server['rest']}/v1/models/tf1/metadata", timeout=TIMEOUT).json()
    assert rest == {"model_spec": {"name": "tf1", "signature_name": "", "version": "7"},
                    "metadata": {"signature_def": json_format.MessageToDict(
                        expected_map, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)}}
    regress = rest["metadata"]["signature_def"]["signature_def"]["regress_x_to_y"]
    assert regress["method_name"] == "tensorflow/serving/regress" and regress["defaults"] == {}
    assert regress["outputs"]["outputs"]["tensor_shape"] == {"dim": [], "unknown_rank": True}
    x = rest["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]
    assert x == {"dtype": "DT_FLOAT", "name": "x:0", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}}
    assert requests.get(f"{server['rest']}/v1/models/tf1", timeout=TIMEOUT).json() == {"model_version_status": [
        {"version": "7", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


# ---- transport flags --------------------------------------------------------------------------------


def test_unix_domain_socket_and_channel_arguments(server):
    # The server above was started with --grpc_socket_path and --grpc_channel_arguments (as TF Serving's suite is).
    answer = _stub(server, f"unix:{server['sock']}").Predict(
        _predict_request("tf1", np.array([2.0], np.float32)), timeout=TIMEOUT)
    assert list(answer.outputs["y"].float_val) == [3.0]
    # Arguments that would lift the server's own limits are refused before anything loads, naming the flag.
    for argument, flag in (("grpc.max_receive_message_length=1000000000", "--max_message_bytes"),
                           ("grpc.so_reuseport=1", "grpc.so_reuseport")):
        done = subprocess.run([EXE, "serve", "--embedded", "--model_base_path", str(server["base"] / "tf1"),
                               f"--grpc_channel_arguments=grpc.keepalive_time_ms=1000,{argument}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "--grpc_channel_arguments" in done.stderr and flag in done.stderr
    done = subprocess.run([EXE, "serve", "--embedded", "--model_base_path", str(server["base"] / "tf1"),
                           "--grpc_channel_arguments=grpc.keepalive_time_ms"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "name=value" in done.stderr


def test_prometheus_metrics_at_the_monitoring_config_path(server):
    stub = _stub(server)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "tf1", "regress_x_to_y"
    _examples(request.input, 2.0)
    stub.Regress(request, timeout=TIMEOUT)
    answer = requests.get(server["rest"] + METRICS_PATH, timeout=TIMEOUT)
    assert answer.status_code == 200 and "# TYPE" in answer.text
    assert re.search(r':tensorflow:serving:request_count\{[^}]*model_name="tf1"[^}]*\} [1-9]', answer.text)
    assert re.search(r'API="regress"', answer.text)
    assert requests.get(server["rest"] + "/metrics", timeout=TIMEOUT).status_code == 404  # only at its path


def test_config_reload_with_the_flag(server):
    stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(f"127.0.0.1:{server['port']}"))
    request = model_management_pb2.ReloadConfigRequest()
    for name in ("tf1", "again"):
        config = request.config.model_config_list.config.add()
        config.name, config.base_path, config.model_platform = name, str(server["base"] / "tf2"), "tensorflow"
    request.config.model_config_list.config[0].base_path = str(server["base"] / "tf1")
    try:
        answer = stub.HandleReloadConfigRequest(request, timeout=60)
        assert answer.status.error_code == 0, answer.status.error_message
        answer = _stub(server).Predict(_predict_request("again", np.array([2.0], np.float32)), timeout=TIMEOUT)
        assert list(answer.outputs["y"].float_val) == [6.0] and answer.model_spec.version.value == 2
        with pytest.raises(grpc.RpcError) as err:  # keras left the config
            _stub(server).Predict(_predict_request("keras", np.zeros((1, 2), np.float32)), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:  # the other tests' models back
        request = model_management_pb2.ReloadConfigRequest()
        for name in ("tf1", "tf2", "keras", "lite"):
            config = request.config.model_config_list.config.add()
            config.name, config.base_path, config.model_platform = name, str(server["base"] / name), "tensorflow"
        assert stub.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0


def test_bad_model_config_fails_as_tf_serving_does(tmp_path):
    config = tmp_path / "bad.config"
    config.write_text("improperly formatted file")
    done = subprocess.run([EXE, "serve", "--embedded", f"--model_config_file={config}"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in done.stderr
    assert "--model_config_file" in done.stderr
