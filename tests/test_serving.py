"""Export, the embedded TF-Serving-compatible server, and the owner's client, end to end on loopback."""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
from helpers import make_key
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from test_leaks import leaks
from test_privacy import synthetic_classes

from tfdisguise import Disguise, KeyMismatchError, cli, disguise
from tfdisguise.export import ExportError, export, read_export_info
from tfdisguise.serving import transports
from tfdisguise.serving.client import DisguisedClient, ServingClientError
from tfdisguise.serving.registry import ModelRegistry, parse_model_config
from tfdisguise.serving.server import ModelServer
from tfdisguise.train import TrainConfig, train_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model trained on disguised data, exported as two versions under two names, served."""
    base = tmp_path_factory.mktemp("saved_models")
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector")
    x, y = synthetic_classes(np.random.default_rng(0), n=160)
    model, _ = train_classifier(x, y, key=key, config=TrainConfig(epochs=2, batch_size=32), progress=False)
    for name in ("tiny", "tiny2"):
        export(model, str(base), name, key=key)
        export(model, str(base), name, key=key)
    config = base / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" '
        f'model_version_policy {{ all {{}} }} version_labels {{ key: "stable" value: 1 }} }}\n'
        for n in ("tiny", "tiny2")) + "}\n")
    server = ModelServer(ModelRegistry.from_flags(model_config_file=str(config)), port=0, rest_api_port=0,
                         host="127.0.0.1").start()
    yield {"server": server, "key": key, "model": model, "base": base, "x": x, "y": y, "config": str(config)}
    server.stop(grace=1)


def grpc_target(served):
    return f"127.0.0.1:{served['server'].port}"


def rest_target(served):
    return f"http://127.0.0.1:{served['server'].rest_api_port}"


# ---- export ----------------------------------------------------------------------------


def test_export_layout_signature_and_info(served):
    version_dir = os.path.join(served["base"], "tiny", "2")
    assert {"saved_model.pb", "variables", "assets.extra"} <= set(os.listdir(version_dir))
    info = read_export_info(version_dir)
    assert info["fingerprint"] == served["key"].fingerprint and info["spec"] == served["key"].spec.to_dict()
    records = list(tf.data.TFRecordDataset(os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")))
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    assert log.predict_log.request.inputs["image"].tensor_shape.dim[1].size == 8
    cli_exe = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli_exe, "show", "--all", "--dir", version_dir], capture_output=True, text=True,
                           check=True).stdout
    for needle in ("signature_def['serving_default']", "inputs['image']", "outputs['probabilities']",
                   "outputs['class_id']", "shape: (-1, 8, 8, 1)", "signature_def['tfdisguise_info']"):
        assert needle in shown


def test_export_holds_no_key_material(served):
    for folder, _, files in os.walk(os.path.join(served["base"], "tiny")):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert leaks(f.read(), served["key"]) == [], os.path.join(folder, name)


def test_export_refuses_a_model_with_the_key_inside(served, tmp_path):
    owner_model = keras.Sequential([keras.Input((8, 8, 1)), Disguise(served["key"]), served["model"]])
    with pytest.raises(ExportError, match="contains a Disguise layer"):
        export(owner_model, str(tmp_path), "leaky", key=served["key"])
    assert not os.path.exists(tmp_path / "leaky" / "1")
    with pytest.raises(ExportError, match="already exists"):
        export(served["model"], str(served["base"]), "tiny", key=served["key"], version=1)
    with pytest.raises(ExportError, match="spec is for"):
        export(served["model"], str(tmp_path), "m", key=make_key(image_shape=(16, 16, 1), block_size=4))


# ---- deployment files ------------------------------------------------------------------


def test_deployment_files_parse():
    import yaml

    config = parse_model_config(os.path.join(ROOT, "serving", "models.config"))
    assert [c.name for c in config.model_config_list.config] == ["mnist"]
    k8s = pathlib.Path(ROOT, "serving", "k8s")
    deployment, service = (yaml.safe_load((k8s / f).read_text()) for f in ("deployment.yaml", "service.yaml"))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v1/models/mnist", "port": 8501}
    assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
    docker = pathlib.Path(ROOT, "Dockerfile").read_text()
    assert re.search(r"^FROM tensorflow/serving:(\S+)$", docker, re.M).group(1) == tf.__version__


# ---- the owner's client ------------------------------------------------------------------


def test_client_predictions_equal_in_process_predictions(served):
    x = served["x"][:20]
    expected = served["model"].predict(disguise(x, served["key"]), verbose=0)
    with DisguisedClient(grpc_target(served), "tiny", served["key"], batch_size=8) as client:
        assert client.metadata["input"] == "image" and client.metadata["outputs"] == ["class_id", "probabilities"]
        out = client.predict(x)
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
        np.testing.assert_array_equal(out["class_id"], expected.argmax(1))
    with DisguisedClient(rest_target(served), "tiny", served["key"]) as client:
        out = client.predict(x)
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
        np.testing.assert_array_equal(out["class_id"], expected.argmax(1))


def test_noisy_key_disguises_client_side(served, tmp_path):
    key = make_key(seed=4, image_shape=(8, 8, 1), block_size=4, noise=30)
    x, y = served["x"], served["y"]
    model, _ = train_classifier(x, y, key=key, config=TrainConfig(epochs=1, batch_size=32), progress=False)
    export(model, str(tmp_path), "noisy", key=key)
    registry = ModelRegistry.from_flags("noisy", str(tmp_path / "noisy"))
    with ModelServer(registry, port=0, host="127.0.0.1") as server, \
            DisguisedClient(f"127.0.0.1:{server.port}", "noisy", key) as client:
        a, b = client.predict(x[:10])["probabilities"], client.predict(x[:10])["probabilities"]
    assert a.shape == (10, 2) and not np.allclose(a, b)  # fresh noise on every query


def test_plain_tf_serving_client_code(served):
    # Only TF Serving's own API below: what any existing client does.
    disguised = disguise(served["x"][:4], served["key"])
    channel = grpc.insecure_channel(grpc_target(served))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tiny"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(disguised))
    response = stub.Predict(request, timeout=10)
    probs = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probs, served["model"].predict(disguised, verbose=0), atol=1e-5)
    assert response.model_spec.version.value == 2  # latest by default

    meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec={"name": "tiny"}, metadata_field=["signature_def"]), timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sig_map)
    assert set(sig_map.signature_def["serving_default"].outputs) == {"probabilities", "class_id"}

    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "tiny"}), timeout=10)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE), (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    channel.close()


def test_versions_labels_and_rest_status(served):
    rest = rest_target(served)
    for version in (1, 2):
        with DisguisedClient(grpc_target(served), "tiny2", served["key"], version=version) as client:
            assert client.predict(served["x"][:2])["class_id"].shape == (2,)
    assert requests.get(f"{rest}/v1/models/tiny").json() == {"model_version_status": [
        {"version": v, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}} for v in ("1", "2")]}
    assert requests.get(f"{rest}/v1/models/tiny/labels/stable").json()["model_version_status"][0]["version"] == "1"
    meta = requests.get(f"{rest}/v1/models/tiny/versions/1/metadata").json()
    assert meta["model_spec"]["version"] == "1"
    # TF Serving's field names (signature_def, method_name), not protobuf's camelCase JSON names.
    assert meta["metadata"]["signature_def"]["signature_def"]["serving_default"]["method_name"] \
        == "tensorflow/serving/predict"
    instances = disguise(served["x"][:3], served["key"]).tolist()
    rows = requests.post(f"{rest}/v1/models/tiny:predict", json={"instances": instances}).json()["predictions"]
    assert [sorted(r) for r in rows] == [["class_id", "probabilities"]] * 3


# ---- errors --------------------------------------------------------------------------------


def test_wrong_key_is_refused_before_data_leaves(served):
    other = make_key(seed=99, image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector")
    with DisguisedClient(grpc_target(served), "tiny", other) as client, \
            pytest.raises(KeyMismatchError, match=f"belongs to key {served['key'].fingerprint}"):
        client.predict(served["x"][:2])
    with DisguisedClient(grpc_target(served), "tiny", served["key"]) as client, \
            pytest.raises(ValueError, match=r"must be \[N, 8, 8, 1\]"):
        client.predict(np.zeros((2, 28, 28, 1)))


def test_error_codes_and_malformed_requests_leave_the_server_serving(served):
    channel = grpc.insecure_channel(grpc_target(served))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def predict(name, array, version=None):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        if version:
            request.model_spec.version.value = version
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(array))
        return stub.Predict(request, timeout=10)

    good = disguise(served["x"][:2], served["key"])
    cases = [(("nope", good), grpc.StatusCode.NOT_FOUND), (("tiny", good, 99), grpc.StatusCode.NOT_FOUND),
             (("tiny", np.zeros((2, 9, 9, 1), np.float32)), grpc.StatusCode.INVALID_ARGUMENT),
             (("tiny", good.astype(np.float64)), grpc.StatusCode.INVALID_ARGUMENT)]
    for args, code in cases:
        with pytest.raises(grpc.RpcError) as err:
            predict(*args)
        assert err.value.code() == code, (args[0], err.value.details())
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError):
        raw(b"\xff\x00garbage\x12", timeout=10)
    rest = rest_target(served)
    assert requests.post(f"{rest}/v1/models/tiny:predict", data="{not json").status_code == 400
    assert requests.post(f"{rest}/v1/models/tiny:predict", json={"instances": [[1, 2]]}).status_code == 400
    assert requests.post(f"{rest}/v1/models/nope:predict", json={"instances": [[1]]}).status_code == 404
    assert requests.get(f"{rest}/v2/what").status_code == 404
    # Still serving, correctly.
    np.testing.assert_allclose(tf.make_ndarray(predict("tiny", good).outputs["probabilities"]),
                               served["model"].predict(good, verbose=0), atol=1e-5)
    channel.close()


def test_unknown_model_through_the_client(served):
    with DisguisedClient(grpc_target(served), "nope", served["key"]) as client, \
            pytest.raises(ServingClientError, match="NOT_FOUND") as err:
        client.predict(served["x"][:1])
    assert err.value.code == grpc.StatusCode.NOT_FOUND


# ---- load and faults ------------------------------------------------------------------------


def test_sixteen_concurrent_clients(served):
    x = served["x"][:8]
    expected = served["model"].predict(disguise(x, served["key"]), verbose=0).argmax(1)
    errors, correct = [], []

    def worker():
        with DisguisedClient(grpc_target(served), "tiny", served["key"]) as client:
            for i in range(50):
                try:
                    out = client.predict(x[i % 8:i % 8 + 1])
                    correct.append(int(out["class_id"][0]) == expected[i % 8])
                except Exception as e:  # counted, not raised: the assertion reports them all
                    errors.append(repr(e))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and len(correct) == 800 and all(correct)


def test_client_retries_through_a_server_restart(served):
    """The first answers are awaited for at most 30 s: a server that never answers fails this test, not hangs it.

    Mutations tried: none run for this bound (it holds by construction: the loop ends at its deadline).
    """
    registry = ModelRegistry.from_flags("tiny", str(served["base"] / "tiny"))
    server = ModelServer(registry, port=0, host="127.0.0.1").start()
    port = server.port
    x = served["x"][:10]
    expected = served["model"].predict(disguise(x, served["key"]), verbose=0).argmax(1)
    done, failures = [], []

    def run():
        with DisguisedClient(f"127.0.0.1:{port}", "tiny", served["key"], timeout=15, max_retries=30) as client:
            for i in range(40):
                try:
                    done.append((i, int(client.predict(x[i % 10:i % 10 + 1])["class_id"][0])))
                except Exception as e:
                    failures.append(repr(e))
                time.sleep(0.02)

    t = threading.Thread(target=run)
    t.start()
    # Bounded: a server that never answers must fail this test, not hang it.
    started = time.monotonic()
    while len(done) < 5 and time.monotonic() - started < 30:
        time.sleep(0.01)
    if len(done) < 5:
        server.stop(grace=0)
        t.join(timeout=60)
    assert len(done) >= 5, f"only {len(done)} answers in 30 s before the restart; failures: {failures[:3]}"
    server.stop(grace=0.5)
    time.sleep(1.0)
    restarted = ModelServer(registry, port=port, host="127.0.0.1").start()
    t.join(timeout=60)
    restarted.stop(grace=0.5)
    assert failures == []
    assert [i for i, _ in done] == list(range(40))  # every request reported done, none lost
    assert all(c == expected[i % 10] for i, c in done)


# ---- commands --------------------------------------------------------------------------------


def test_serve_command_runs_and_stops_gracefully_on_sigterm(served):
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    proc = subprocess.Popen([exe, "serve", "--embedded", "--host", "127.0.0.1", "--port", "0",
                             "--model_name", "tiny", "--model_base_path", str(served["base"] / "tiny")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The server's first stdout line says where it serves. Read it on a thread with a deadline: a server
        # that stays alive but never says so must fail this test, not hang the suite.
        first = []
        reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert first and first[0], f"no 'serving' line within 120 s (exit code {proc.poll()})"
        line = first[0]
        assert "serving" in line, line
        port = int(re.search(r"gRPC port (\d+)", line).group(1))
        with DisguisedClient(f"127.0.0.1:{port}", "tiny", served["key"]) as client:
            assert client.predict(served["x"][:3])["class_id"].shape == (3,)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "server stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_predict_and_export_commands(served, tmp_path, capsys):
    key_path = str(tmp_path / "key.json")
    served["key"].save(key_path)
    np.save(tmp_path / "imgs.npy", served["x"][:3])
    assert cli.main(["predict", "--key", key_path, "--server", grpc_target(served), "--model", "tiny",
                     str(tmp_path / "imgs.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(re.search(r"class \d \(p=", line) for line in lines)
    model_path = str(tmp_path / "model.keras")
    served["model"].save(model_path)
    assert cli.main(["export", "--model", model_path, "--base", str(tmp_path / "sm"), "--name", "m",
                     "--key", key_path]) == 0
    assert os.path.isdir(tmp_path / "sm" / "m" / "1")
    assert cli.main(["export", "--model", model_path, "--base", str(tmp_path / "sm"), "--name", "m"]) == 1
    assert "pass --key or --manifest" in capsys.readouterr().err


def test_tls(served, tmp_path):
    from tfdisguise.serving.tls import read_ssl_config

    key_file, cert_file = tmp_path / "server.key", tmp_path / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key_file), "-out", str(cert_file)],
                   check=True, capture_output=True)
    ssl_config = tmp_path / "ssl.config"
    ssl_config.write_text(f'server_key: "{key_file.read_text()}"\nserver_cert: "{cert_file.read_text()}"\n')
    ssl = read_ssl_config(str(ssl_config))
    with ModelServer(ModelRegistry.from_flags("tiny", str(served["base"] / "tiny")), port=0, host="127.0.0.1",
                     ssl=ssl) as server:
        creds = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
        with DisguisedClient(f"localhost:{server.port}", "tiny", served["key"], credentials=creds) as client:
            assert client.predict(served["x"][:2])["class_id"].shape == (2,)
        with DisguisedClient(f"localhost:{server.port}", "tiny", served["key"], timeout=2) as plain, \
                pytest.raises(ServingClientError):
            plain.predict(served["x"][:2])


def _flags_handed_over(tmp_path, flags) -> list[str]:
    """Runs `tfdisguise serve *flags` with a stand-in tensorflow_model_server on PATH; returns what it was given."""
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'args.txt'}\n")
    fake.chmod(0o755)
    exe = os.path.join(os.path.dirname(sys.executable), "tfdisguise")
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
    done = subprocess.run([exe, "serve", *flags], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return (tmp_path / "args.txt").read_text().split()


def test_serve_runs_tensorflow_model_server_when_on_path(tmp_path):
    # Scripts must move between the two unchanged.
    flags = ["--port=8500", "--rest_api_port=8501", "--model_name=mnist", "--model_base_path=/models/mnist"]
    assert _flags_handed_over(tmp_path, flags) == flags


def test_serve_hands_unknown_flags_to_tensorflow_model_server(tmp_path):
    # "--port 8500" is handed over as TF Serving spells it; flags that neither server declares, as given.
    given = ["--port", "8500", "--model_config_file=/models/models.config", "--num_load_threads=2",
             "--enable_batching", "--batching_parameters_file=/models/batching.config"]
    assert _flags_handed_over(tmp_path, given) == [
        "--port=8500", "--model_config_file=/models/models.config", "--enable_batching=true",
        "--batching_parameters_file=/models/batching.config", "--num_load_threads=2"]


@pytest.fixture(scope="module")
def one_output_model(tmp_path_factory):
    """A SavedModel whose signature has one output: REST then answers with the bare value."""
    base = tmp_path_factory.mktemp("one") / "double"

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2 * x}

    module = Double()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    with ModelServer(ModelRegistry.from_flags("double", str(base)), port=0, rest_api_port=0,
                     host="127.0.0.1") as server:
        yield server


def test_grpc_and_rest_transports_answer_alike(one_output_model):
    server = one_output_model
    x = np.array([[1, 2], [3, 4]], np.float32)
    for transport in (transports.transport_for(f"127.0.0.1:{server.port}", "double"),
                      transports.transport_for(f"http://127.0.0.1:{server.rest_api_port}", "double", version=1)):
        try:
            assert transport.signatures(timeout=10)["serving_default"] == transports.Signature({"x": (-1, 2)}, ("y",))
            np.testing.assert_allclose(transport.predict({"x": x}, "serving_default", timeout=10)["y"], 2 * x)
            with pytest.raises(transports.TransportError) as err:
                transport.predict({"x": np.zeros((2, 3), np.float32)}, "serving_default", timeout=10)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and not err.value.retryable
        finally:
            transport.close()


def test_transports_report_an_absent_server_as_retryable():
    port = _free_port()
    for target in (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        transport = transports.transport_for(target, "double")
        try:
            with pytest.raises(transports.TransportError) as err:
                transport.signatures(timeout=1)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retryable
        finally:
            transport.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
