"""Issue 14: the embedded server's parity with TF Serving (version polling, batching, metrics, config reload,
deadlines) and the client's concurrency, on loopback with a tiny model."""

import os
import shutil
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
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdisguise.export import export
from tfdisguise.serving import grpc_api
from tfdisguise.serving.batching import Batcher, BatchingParameters
from tfdisguise.serving.client import DisguisedClient
from tfdisguise.serving.registry import ModelRegistry, Servable, ServingError
from tfdisguise.serving.server import ModelServer

SHAPE = (8, 8, 1)
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))


@pytest.fixture(scope="module")
def key():
    return make_key(image_shape=SHAPE, block_size=4, rmt="orthogonal", rmt_mode="vector")


@pytest.fixture(scope="module")
def models():
    return [_model(0), _model(1)]


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-3, 3, (n, *SHAPE)).astype(np.float32)


def _request(name: str, x: np.ndarray, version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version:
        request.model_spec.version.value = version
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(x))
    return request


def _status(channel, name: str) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    return {s.version: s for s in answer.model_version_status}


def _wait(condition, seconds: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


def _metrics(server) -> dict:
    text = requests.get(f"http://127.0.0.1:{server.rest_api_port}/monitoring/prometheus/metrics", timeout=5).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_version_swap_under_load_and_a_corrupt_version(tmp_path, key, models):
    export(models[0], str(tmp_path), "m", key=key)
    server = ModelServer(ModelRegistry.from_flags("m", str(tmp_path / "m")), port=0, host="127.0.0.1",
                         file_system_poll_wait_seconds=0.1).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = _images(1)
    expected = {v + 1: m.predict(x, verbose=0) for v, m in enumerate(models)}
    answered, failures, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                answer = stub.Predict(_request("m", x), timeout=10)
                version = answer.model_spec.version.value
                np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probabilities"]), expected[version],
                                           rtol=1e-5, atol=1e-6)
                answered.append(version)
            except Exception as e:  # every failure is what this test counts
                failures.append(e)

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        _wait(lambda: len(answered) > 10, 10)
        export(models[1], str(tmp_path), "m", key=key)
        took = _wait(lambda: _status(channel, "m").get(2) and _status(channel, "m")[2].state == AVAILABLE, 5)
        _wait(lambda: _status(channel, "m")[1].state == END, 5)  # latest 1: v1 leaves once v2 serves
        count = len(answered)
        _wait(lambda: len(answered) > count + 10, 10)
        # A version that cannot load: skipped and reported, and v2 keeps serving.
        (tmp_path / "m" / "3").mkdir()
        (tmp_path / "m" / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        _wait(lambda: 3 in _status(channel, "m"), 5)
        count = len(answered)
        _wait(lambda: len(answered) > count + 10, 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
        status = _status(channel, "m")
        channel.close()
        server.stop(grace=1)
    assert failures == [] and took < 5
    assert answered[0] == 1 and answered[-1] == 2 and sorted(set(answered)) == [1, 2]
    assert status[2].state == AVAILABLE and status[1].state == END and status[1].status.error_code == 0
    assert status[3].state == END and status[3].status.error_code == grpc.StatusCode.UNKNOWN.value[0]
    assert "Failed to load m version 3" in status[3].status.error_message


def test_an_old_version_is_released_only_after_its_requests(tmp_path, key, models):
    export(models[0], str(tmp_path), "m", key=key)
    registry = ModelRegistry.from_flags("m", str(tmp_path / "m"))
    export(models[1], str(tmp_path), "m", key=key)
    with registry.hold("m") as held:
        poller = threading.Thread(target=registry.poll)
        poller.start()
        _wait(lambda: registry.status("m")[1].state == "UNLOADING", 10)
        assert registry.get("m").version == 2  # new requests go to v2 at once
        time.sleep(0.2)
        assert registry.status("m")[1].state == "UNLOADING" and held.version == 1
        held.run("serving_default", {"image": _images(1)})  # the held version still answers
    poller.join(timeout=10)
    assert registry.status("m")[1].state == "END" and registry.versions("m") == [2]


def test_version_policies(tmp_path, key, models):
    for _ in range(3):
        export(models[0], str(tmp_path), "m", key=key)
    from tensorflow_serving.config import model_server_config_pb2

    def served(policy: str) -> list[int]:
        cfg = model_server_config_pb2.ModelServerConfig()
        mc = cfg.model_config_list.config.add(name="m", base_path=str(tmp_path / "m"))
        from google.protobuf import text_format

        text_format.Merge(policy, mc.model_version_policy)
        return ModelRegistry(cfg).versions("m")

    assert served("latest { num_versions: 2 }") == [2, 3]
    assert served("all {}") == [1, 2, 3]
    assert served("specific { versions: 1 versions: 3 }") == [1, 3]
    assert served("") == [3]


def test_batching_merges_concurrent_requests(tmp_path, key, models):
    export(models[0], str(tmp_path), "m", key=key)
    params = BatchingParameters(max_batch_size=16, batch_timeout_micros=200_000, num_batch_threads=1,
                                allowed_batch_sizes=(4, 8, 16))
    server = ModelServer(ModelRegistry.from_flags("m", str(tmp_path / "m")), port=0, rest_api_port=0,
                         host="127.0.0.1", batching=params, metrics_path="/monitoring/prometheus/metrics").start()
    x = _images(16, seed=3)
    expected = models[0].predict(x, verbose=0)
    results, errors = {}, []
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(_request("m", x[:1]), timeout=10)  # connection up before the burst
        barrier = threading.Barrier(16)

        def one(i):
            try:
                barrier.wait()
                answer = stub.Predict(_request("m", x[i:i + 1]), timeout=10)
                results[i] = tf.make_ndarray(answer.outputs["probabilities"])
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sizes = _metrics(server)[":tensorflow:serving:batching_session:processed_batch_size"]
        channel.close()
    finally:
        server.stop(grace=1)
    assert errors == []
    np.testing.assert_allclose(np.concatenate([results[i] for i in range(16)]), expected, rtol=1e-5, atol=1e-6)
    count = next(s.value for s in sizes.samples if s.name.endswith("_count"))
    assert 2 <= count < 17 - 8  # 17 requests (the first alone), merged into far fewer batches


class _SlowServable:
    """Stands in for a Servable whose model runs until `release` is set."""

    name, version = "slow", 1

    def __init__(self):
        self.release, self.calls = threading.Event(), []

    def run(self, signature, inputs, output_filter=()):
        self.calls.append(len(inputs["x"]))
        self.release.wait(10)
        return {"y": inputs["x"] * 2}


def test_a_full_batching_queue_answers_unavailable_at_once():
    servable = _SlowServable()
    batcher = Batcher(BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1))
    answers = []
    first = threading.Thread(target=lambda: answers.append(batcher.run(servable, "s", {"x": np.ones(1)})))
    first.start()
    _wait(lambda: servable.calls, 5)  # the first runs; the second waits in the queue; a third has no room
    second = threading.Thread(target=lambda: answers.append(batcher.run(servable, "s", {"x": np.ones(1)})))
    second.start()
    _wait(lambda: sum(q.size for q in batcher._queues.values()) == 1, 5)
    start = time.monotonic()
    with pytest.raises(ServingError) as refused:
        batcher.run(servable, "s", {"x": np.ones(1)})
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - start < 1
    servable.release.set()
    first.join(5)
    second.join(5)
    batcher.close()
    assert len(answers) == 2 and all(a["y"].tolist() == [2.0] for a in answers)


def test_a_request_past_its_deadline_is_not_run(tmp_path, key, models, monkeypatch):
    export(models[0], str(tmp_path), "m", key=key)
    registry = ModelRegistry.from_flags("m", str(tmp_path / "m"))
    runs = []
    original = Servable.run
    monkeypatch.setattr(Servable, "run", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))

    class Expired:
        def time_remaining(self):
            return 0.0

        def abort(self, code, message):
            raise grpc.RpcError(code, message)

    with pytest.raises(grpc.RpcError) as aborted:
        grpc_api.PredictionServicer(registry).Predict(_request("m", _images(1)), Expired())
    assert aborted.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED and runs == []
    # A task whose deadline passes while it waits for a batch is dropped, not run.
    registry.batcher = Batcher(BatchingParameters(max_batch_size=4, batch_timeout_micros=300_000))
    with pytest.raises(ServingError) as late:
        grpc_api.run_predict(registry, registry.get("m"), "serving_default", {"image": _images(1)},
                             deadline=time.monotonic() + 0.05)
    registry.batcher.close()
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and runs == []
    # Over the wire: an expired deadline is DEADLINE_EXCEEDED, and the server goes on serving.
    with ModelServer(registry, port=0, host="127.0.0.1") as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as expired:
            stub.Predict(_request("m", _images(1)), timeout=1e-6)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.Predict(_request("m", _images(1)), timeout=10).model_spec.version.value == 1


def test_metrics_count_requests_by_model_and_status(tmp_path, key, models):
    export(models[0], str(tmp_path), "m", key=key)
    server = ModelServer(ModelRegistry.from_flags("m", str(tmp_path / "m")), port=0, rest_api_port=0,
                         host="127.0.0.1", metrics_path="/monitoring/prometheus/metrics").start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(3):
                stub.Predict(_request("m", _images(1)), timeout=10)
            with pytest.raises(grpc.RpcError):
                stub.Predict(_request("m", _images(1), version=9), timeout=10)
        rest = f"http://127.0.0.1:{server.rest_api_port}/v1/models/m:predict"
        for _ in range(2):
            assert requests.post(rest, json={"instances": _images(1).tolist()}, timeout=10).status_code == 200
        families = _metrics(server)
    finally:
        server.stop(grace=1)
    counts = {(s.labels["model_name"], s.labels["status"]): s.value
              for s in families[":tensorflow:serving:request_count"].samples}
    assert counts == {("m", "OK"): 5, ("m", "NOT_FOUND"): 1}
    latency = families[":tensorflow:serving:request_latency"].samples
    by_entry = {s.labels["entrypoint"]: s.value for s in latency if s.name.endswith("_count")}
    assert by_entry == {"GRPC": 4, "REST": 2}
    loads = {s.labels["status"]: s.value for s in families[":tensorflow:cc:saved_model:load_attempt_count"].samples}
    assert loads == {"success": 1}
    states = families[":tensorflow:serving:model_version_state"].samples
    assert [(s.labels["version"], s.labels["state"]) for s in states] == [("1", "AVAILABLE")]


def test_config_reload_adds_and_removes_models_live(tmp_path, key, models):
    for name in ("a", "b"):
        export(models[0], str(tmp_path), name, key=key)

    def config(*names):
        return "model_config_list {\n" + "".join(
            f'  config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}\n'
            for n in names) + "}\n"

    path = tmp_path / "models.config"
    path.write_text(config("a"))
    server = ModelServer(ModelRegistry.from_flags(model_config_file=str(path)), port=0, host="127.0.0.1",
                         model_config_file_poll_wait_seconds=0.1, allow_config_reload_rpc=True).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            models_stub = model_service_pb2_grpc.ModelServiceStub(channel)

            def serves(name):
                try:
                    return stub.Predict(_request(name, _images(1)), timeout=10).model_spec.name == name
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND
                    return False

            assert serves("a") and not serves("b")
            request = model_management_pb2.ReloadConfigRequest(config=parse_model_config_text(config("b")))
            answer = models_stub.HandleReloadConfigRequest(request, timeout=60)
            assert answer.status.error_code == 0
            assert serves("b") and not serves("a")
            bad = model_management_pb2.ReloadConfigRequest(
                config=parse_model_config_text(config("b").replace(str(tmp_path / "b"), str(tmp_path / "none"))))
            assert models_stub.HandleReloadConfigRequest(bad, timeout=60).status.error_code == 0  # b keeps serving
            # The config file, polled, is applied whenever it changes: a comes back, then b goes.
            path.write_text(config("a", "b"))
            _wait(lambda: serves("a") and serves("b"), 10)
            path.write_text(config("a"))
            _wait(lambda: serves("a") and not serves("b"), 10)
    finally:
        server.stop(grace=1)


def parse_model_config_text(text: str):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_client_concurrency_and_rest_connection_reuse(tmp_path, key, models):
    export(models[0], str(tmp_path), "m", key=key)
    x = np.random.default_rng(1).integers(0, 256, (37, *SHAPE), dtype=np.uint8)
    with ModelServer(ModelRegistry.from_flags("m", str(tmp_path / "m")), port=0, rest_api_port=0,
                     host="127.0.0.1") as server:
        with DisguisedClient(f"127.0.0.1:{server.port}", "m", key, batch_size=5) as client:
            sequential = client.predict(x)
            concurrent = client.predict(x, concurrency=4)
        with DisguisedClient(f"http://127.0.0.1:{server.rest_api_port}", "m", key, batch_size=5) as client:
            over_rest = client.predict(x, concurrency=3)
            connections = client._transport.connections_opened
    np.testing.assert_allclose(concurrent["probabilities"], sequential["probabilities"], rtol=1e-6)
    np.testing.assert_array_equal(concurrent["class_id"], sequential["class_id"])
    np.testing.assert_allclose(over_rest["probabilities"], sequential["probabilities"], rtol=1e-5, atol=1e-6)
    assert connections <= 3  # 8 batches and the metadata over at most one connection per thread


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server is not on PATH (not installable here); the embedded server's "
                           "tests cover the same scenario")
def test_same_scenario_against_real_tensorflow_model_server(tmp_path, key, models):
    export(models[0], str(tmp_path), "m", key=key)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("tensorflow_model_server"), f"--port={port}", "--model_name=m",
                             f"--model_base_path={tmp_path / 'm'}", "--file_system_poll_wait_seconds=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait(lambda: _ready(channel), 60)
            with DisguisedClient(f"127.0.0.1:{port}", "m", key) as client:
                assert client.predict(np.zeros((2, *SHAPE), np.uint8))["probabilities"].shape == (2, 3)
            export(models[1], str(tmp_path), "m", key=key)
            _wait(lambda: _status(channel, "m").get(2) is not None and _status(channel, "m")[2].state == AVAILABLE,
                  10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(channel) -> bool:
    try:
        return any(s.state == AVAILABLE for s in _status(channel, "m").values())
    except grpc.RpcError:
        return False


def test_serve_command_hands_the_parity_flags_to_the_embedded_server():
    import inspect

    from tfdisguise import cli
    from tfdisguise.cli import serve
    from tfdisguise.serving.server import serve as serve_function

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = cli.build_parser().parse_args([
        "serve", "--model_base_path=/m", "--enable_batching",
        f"--batching_parameters_file={root}/serving/batching_parameters.txt",
        f"--monitoring_config_file={root}/serving/monitoring.config", "--file_system_poll_wait_seconds=0",
        "--model_config_file_poll_wait_seconds=30", "--rest_api_num_threads=4", "--rest_api_timeout_in_ms=500",
        "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=2"])
    options, notes = serve.embedded_options(args)
    assert notes == []
    assert options["enable_batching"] == "true" and options["file_system_poll_wait_seconds"] == 0
    assert options["rest_api_num_threads"] == 4 and options["rest_api_timeout_in_ms"] == 500
    assert options["tensorflow_intra_op_parallelism"] == 1 and options["tensorflow_inter_op_parallelism"] == 2
    inspect.signature(serve_function).bind(**options)  # every option is one of serve()'s arguments
    argv = serve.model_server_argv(args)
    assert "--file_system_poll_wait_seconds=0" in argv and "--tensorflow_intra_op_parallelism=1" in argv


def test_tensorflow_thread_flags_set_the_pools_before_any_model_loads():
    # In a fresh process, as `tfdisguise serve` runs: the server module imports without running a TensorFlow op,
    # so the pools can still be sized; a negative value is refused with the flag's name.
    code = (
        "from tfdisguise.serving.server import set_tensorflow_threads\n"
        "import tensorflow as tf\n"
        "set_tensorflow_threads(1, 3)\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads())\n"
        "print(float(tf.reduce_sum(tf.ones([4]))))\n"
        "try:\n"
        "    set_tensorflow_threads(-1)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "1 3" and lines[1] == "4.0"
    assert lines[2].startswith("refused: --tensorflow_intra_op_parallelism must be an integer >= 0")
