"""The embedded server's boundary (issue 22): each audit finding, reproduced from the outside.

Every test talks to a real server over loopback (gRPC or HTTP clients, raw
sockets), with real model directories on disk, and is bounded in time: a
server that regressed fails a test, it does not hang it. Each test's
docstring lists the mutations of the server that were tried against it (the
protection removed), each of which made it fail.
"""

import contextlib
import os
import pathlib
import re
import select
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfdisguise.serving.registry import ModelRegistry, parse_model_config
from tfdisguise.serving.server import ModelServer


def save_double(path) -> None:
    """A SavedModel that doubles a [None, 2] float32 input "x" into "y"."""

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2 * x}

    module = Double()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def write_config(path: pathlib.Path, models: dict) -> pathlib.Path:
    path.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }}\n'
        for name, base in models.items()) + "}\n")
    return path


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    """A saved "double" model, version 1, to copy from."""
    path = tmp_path_factory.mktemp("double") / "1"
    save_double(path)
    return path


def copy_version(source: pathlib.Path, target: pathlib.Path) -> None:
    """A version directory copied file by file (fast; the same SavedModel under another version)."""
    for item in source.rglob("*"):
        dest = target / item.relative_to(source)
        if item.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(item.read_bytes())


def predict_request(name: str, x, version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    return request


@contextlib.contextmanager
def serving(models: dict, tmp_path: pathlib.Path, **options):
    """A server over a models.config for `models` (name -> base path), on loopback, with gRPC and REST."""
    config = write_config(tmp_path / "models.config", models)
    registry = ModelRegistry.from_flags(model_config_file=str(config))
    options = {"port": 0, "rest_api_port": 0, "host": "127.0.0.1", **options}
    server = ModelServer(registry, **options).start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def served_versions(server, name: str) -> list[int]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
        except grpc.RpcError:
            return []
    return sorted(s.version for s in answer.model_version_status
                  if s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE)


def grpc_predict(server, name: str, x, version: int | None = None, timeout: float = 5):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return tf.make_ndarray(stub.Predict(predict_request(name, x, version), timeout=timeout).outputs["y"])


# ---- 4. the config-reload RPC is off unless the operator turns it on -----------------------------


def test_config_reload_rpc_is_refused_unless_allowed(double, tmp_path):
    """An unauthenticated client can neither unload every model nor serve a directory of its choosing.

    Mutations tried: the PERMISSION_DENIED check removed from HandleReloadConfigRequest (the empty config
    unloads "m", and "stolen" serves); `allow_config_reload_rpc` ignored by ModelServer (the allowed
    server refuses).
    """
    copy_version(double, tmp_path / "m" / "1")
    copy_version(double, tmp_path / "elsewhere" / "1")
    empty = model_management_pb2.ReloadConfigRequest()
    empty.config.model_config_list.SetInParent()
    steal = model_management_pb2.ReloadConfigRequest()
    steal.config.CopyFrom(parse_model_config(str(write_config(tmp_path / "steal.config",
                                                               {"stolen": tmp_path / "elsewhere"}))))
    with serving({"m": tmp_path / "m"}, tmp_path) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for request in (empty, steal):
            with pytest.raises(grpc.RpcError) as err:
                stub.HandleReloadConfigRequest(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "--allow_config_reload_rpc" in err.value.details()
        assert served_versions(server, "m") == [1] and served_versions(server, "stolen") == []
        np.testing.assert_allclose(grpc_predict(server, "m", [[1, 2]]), [[2, 4]])
    with serving({"m": tmp_path / "m"}, tmp_path, allow_config_reload_rpc=True) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        answer = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(steal, timeout=30)
        assert answer.status.error_code == 0
        assert served_versions(server, "stolen") == [1] and served_versions(server, "m") == []


# ---- 7. version directories: int64 only, zero-padded names served as named ------------------------


def test_version_directories_above_int64_are_ignored_and_zero_padded_ones_served(double, tmp_path):
    """A directory named above int64 is not a version; `00000123` is version 123, loaded from that directory.

    Mutations tried: the int64 check removed from `_versions` (the huge version serves as latest and its status
    cannot be answered); versions loaded from `str(version)` instead of the directory's own name (version 123
    fails to load from a missing `123`, so the model has no version and the server does not start).
    """
    copy_version(double, tmp_path / "m" / "1")
    copy_version(double, tmp_path / "m" / "99999999999999999999")
    copy_version(double, tmp_path / "p" / "00000123")
    with serving({"m": tmp_path / "m", "p": tmp_path / "p"}, tmp_path, file_system_poll_wait_seconds=0.1) as server:
        time.sleep(0.3)  # a few polls
        assert served_versions(server, "m") == [1] and served_versions(server, "p") == [123]
        np.testing.assert_allclose(grpc_predict(server, "m", [[1, 2]]), [[2, 4]])
        np.testing.assert_allclose(grpc_predict(server, "p", [[1, 2]], version=123), [[2, 4]])
        rest = f"http://127.0.0.1:{server.rest_api_port}/v1/models"
        answer = requests.get(f"{rest}/m", timeout=5)
        assert answer.status_code == 200 and [s["version"] for s in answer.json()["model_version_status"]] == ["1"]
        answer = requests.post(f"{rest}/p/versions/123:predict", json={"instances": [[1, 2]]}, timeout=5)
        assert answer.status_code == 200 and answer.json() == {"predictions": [[2.0, 4.0]]}


# ---- 14. a version half-written when polled is retried once it changes ---------------------------


def test_a_version_that_failed_to_load_is_retried_once_its_directory_changes(double, tmp_path):
    """Version 2 appears half-written (a truncated saved_model.pb), fails, and is served once completed.

    Mutations tried: failed versions never retried (the old `failed` map; version 2 never serves).
    """
    copy_version(double, tmp_path / "m" / "1")
    with serving({"m": tmp_path / "m"}, tmp_path, file_system_poll_wait_seconds=0.1) as server:
        assert served_versions(server, "m") == [1]
        half = tmp_path / "staging"
        copy_version(double, half)
        version = tmp_path / "m" / "2"
        version.mkdir()
        pb = (half / "saved_model.pb").read_bytes()
        (version / "saved_model.pb").write_bytes(pb[:len(pb) // 3])

        def failed():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = "m"
                answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
            return any(s.version == 2 and s.status.error_code != 0 for s in answer.model_version_status)

        wait_for(failed, 10, "version 2 reported as failed")
        copy_version(half, version)  # the writer finishes
        wait_for(lambda: served_versions(server, "m") == [2], 10, "version 2 retried and served")
        np.testing.assert_allclose(grpc_predict(server, "m", [[1, 2]], version=2), [[2, 4]])


# ---- 16. careless input: 400s that name the problem, flags that refuse what they cannot mean -------


def test_rest_answers_400_naming_the_problem(double, tmp_path):
    """A list or dict signature_name, a 5000-digit version, an unknown key in an instance: 400, with why.

    Mutations tried: the string check on signature_name removed (500: unhashable list); the int64 check on the
    URL's version removed (500: int() refuses 5000 digits); instance keys no longer checked (200: "extra"
    silently dropped).
    """
    copy_version(double, tmp_path / "m" / "1")
    with serving({"m": tmp_path / "m"}, tmp_path) as server:
        url = f"http://127.0.0.1:{server.rest_api_port}/v1/models/m"
        for name in (["serving_default"], {"a": 1}):
            answer = requests.post(f"{url}:predict", json={"signature_name": name, "instances": [[1, 2]]}, timeout=5)
            assert answer.status_code == 400 and "'signature_name' must be a string" in answer.json()["error"]
        for path in (f"/versions/{'9' * 5000}:predict", f"/versions/{'9' * 20}:predict", f"/versions/{'1' * 5000}"):
            answer = requests.post(url + path, json={"instances": [[1, 2]]}, timeout=5) if ":" in path else \
                requests.get(url + path, timeout=5)
            assert answer.status_code == 400 and "must be a 64-bit integer" in answer.json()["error"], path
        answer = requests.post(f"{url}:predict", json={"instances": [{"x": [1, 2], "extra": 3}]}, timeout=5)
        assert answer.status_code == 400 and "Instance 0 has unknown inputs ['extra']" in answer.json()["error"]
        answer = requests.post(f"{url}:predict", json={"instances": [{"x": [1, 2]}, {"y": [1, 2]}]}, timeout=5)
        assert answer.status_code == 400 and "Instance 1 has unknown inputs ['y'] and lacks inputs ['x']" in \
            answer.json()["error"]
        answer = requests.post(f"{url}:predict", json={"instances": [{"x": [1, 2]}]}, timeout=5)
        assert answer.status_code == 200 and answer.json() == {"predictions": [[2.0, 4.0]]}


@pytest.mark.parametrize("flags, needle", [
    (["--port", "70000"], "argument --port: expected a port number from 0 to 65535, got 70000"),
    (["--port", "-1"], "argument --port: expected a port number from 0 to 65535, got -1"),
    (["--rest_api_port", "65536"], "argument --rest_api_port: expected a port number from 0 to 65535, got 65536"),
    (["--max_message_bytes", "-1"], "argument --max_message_bytes: expected a positive integer, got -1"),
    (["--max_message_bytes", "0"], "argument --max_message_bytes: expected a positive integer, got 0"),
])
def test_serve_refuses_ports_and_limits_it_cannot_mean(flags, needle, tmp_path, capsys):
    """Mutations tried: `--port`/`--rest_api_port` typed `int` again (the server binds 70000 % 65536 = 4464;
    here the command goes on and fails later, without naming the flag); `--max_message_bytes` typed `int` again."""
    from tfdisguise import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--embedded", "--host", "127.0.0.1", "--model_base_path", str(tmp_path), *flags])
    assert exit_.value.code == 2 and needle in capsys.readouterr().err


def test_serve_refuses_a_config_that_names_a_model_twice(double, tmp_path):
    """Mutations tried: the duplicate-name check removed (the last "m" silently wins and the server starts)."""
    copy_version(double, tmp_path / "a" / "1")
    copy_version(double, tmp_path / "b" / "1")
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n"
                      f'  config {{ name: "m" base_path: "{tmp_path / "a"}" model_platform: "tensorflow" }}\n'
                      f'  config {{ name: "m" base_path: "{tmp_path / "b"}" model_platform: "tensorflow" }}\n}}\n')
    exe = pathlib.Path(sys.executable).parent / "tfdisguise"
    try:  # a second process, bounded: a server that starts anyway fails here instead of serving forever
        done = subprocess.run([str(exe), "serve", "--embedded", "--host", "127.0.0.1", "--port", "0",
                               "--model_config_file", str(config)], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the server started: {e.stdout}") from None
    assert done.returncode == 1 and "model name 'm' appears more than once" in done.stderr, done.stderr


def test_the_wildcard_host_serves_grpc_and_rest_on_both_ip_versions(double, tmp_path):
    """`--host ::` (or 0.0.0.0): gRPC and REST reachable over IPv4 and IPv6 alike, as gRPC binds a wildcard.

    Mutations tried: REST bound to the host as given (tornado binds `::` IPv6-only: 127.0.0.1 refused).
    """
    copy_version(double, tmp_path / "m" / "1")
    for host in ("::", "0.0.0.0"):
        with serving({"m": tmp_path / "m"}, tmp_path, host=host) as server:
            for address in ("127.0.0.1", "[::1]"):
                answer = requests.post(f"http://{address}:{server.rest_api_port}/v1/models/m:predict",
                                       json={"instances": [[1, 2]]}, timeout=5)
                assert answer.status_code == 200, (host, address)
                with grpc.insecure_channel(f"{address}:{server.port}") as channel:
                    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                    y = stub.Predict(predict_request("m", [[1, 2]]), timeout=5).outputs["y"]
                    np.testing.assert_allclose(tf.make_ndarray(y), [[2, 4]])


# ---- 6. made-up model names do not grow the server -----------------------------------------------


def test_made_up_model_names_become_no_metric_labels(double, tmp_path):
    """300 requests for made-up names (gRPC and REST) leave one bucket in the metrics, not 300 labels.

    Mutations tried: `counted` labelling with the request's name again (300 new label values, the text grows by
    hundreds of kilobytes).
    """
    copy_version(double, tmp_path / "m" / "1")
    with serving({"m": tmp_path / "m"}, tmp_path, metrics_path="/metrics") as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, requests.Session() as http:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        rest = f"http://127.0.0.1:{server.rest_api_port}"

        def made_up(i):
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(predict_request(f"nosuch{i}", [[1, 2]]), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            answer = http.post(f"{rest}/v1/models/nosuch{i}x:predict", json={"instances": [[1, 2]]}, timeout=5)
            assert answer.status_code == 404

        stub.Predict(predict_request("m", [[1, 2]]), timeout=5)
        made_up(0)
        before = len(http.get(f"{rest}/metrics", timeout=5).text)
        for i in range(1, 150):
            made_up(i)
        text = http.get(f"{rest}/metrics", timeout=5).text
    assert "nosuch" not in text
    labels = set(re.findall(r'model_name="([^"]*)"', text))
    assert labels == {"m", ""}, labels
    assert len(text) - before < 200, len(text) - before  # counts change, no new series


# ---- 11. warm-up records pass the checks of a request --------------------------------------------


def _reset_peak_rss() -> None:
    """Starts the peak resident size (VmHWM) again from the present size (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read())[1]) << 10


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_warmup(version: pathlib.Path, *protos) -> None:
    from tensorflow_serving.apis import prediction_log_pb2

    (version / "assets.extra").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(version / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for proto in protos:
            entry = prediction_log_pb2.PredictionLog()
            entry.predict_log.request.model_spec.name = "m"
            entry.predict_log.request.inputs["x"].CopyFrom(proto)
            writer.write(entry.SerializeToString())


@pytest.mark.parametrize("bomb, needle", [
    (tf.make_tensor_proto(0.0, tf.float64, shape=[80_000_000, 2]), "to be float32 but float64"),  # 1.2 GB
    (tf.make_tensor_proto(0.0, tf.float32, shape=[160_000_000, 2]), "more than the limit"),  # 1.2 GB
])
def test_warm_up_records_are_checked_before_they_are_decoded(double, tmp_path, bomb, needle):
    """A tiny warm-up record that declares 1.2 GB fails its version's load at once, allocating nothing.

    Mutations tried: `_warm_up` decoding records unchecked, as before (the process grows by 1.2 GB, past the
    bound here).
    """
    copy_version(double, tmp_path / "m" / "1")
    write_warmup(tmp_path / "m" / "1", tf.make_tensor_proto(np.ones((3, 2), np.float32)))  # a good one still runs
    with serving({"m": tmp_path / "m"}, tmp_path, file_system_poll_wait_seconds=0.1) as server:
        assert served_versions(server, "m") == [1]
        staging = tmp_path / "staging"
        copy_version(double, staging)
        write_warmup(staging, bomb)
        assert (staging / "assets.extra" / "tf_serving_warmup_requests").stat().st_size < 100
        rss = _rss_bytes()
        _reset_peak_rss()
        staging.rename(tmp_path / "m" / "2")

        def failed():
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = "m"
                answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
            return [s.status.error_message for s in answer.model_version_status if s.version == 2
                    and s.status.error_code != 0]

        message = wait_for(failed, 20, "version 2 refused")[0]
        assert needle in message and "tf_serving_warmup_requests, record 0" in message, message
        assert _peak_rss_bytes() - rss < 300 << 20  # the peak while it loaded and failed, not just after
        assert served_versions(server, "m") == [1]
        np.testing.assert_allclose(grpc_predict(server, "m", [[1, 2]]), [[2, 4]])


# ---- 13. a memory budget for the requests in flight, across gRPC and REST --------------------------


def test_requests_in_flight_share_one_memory_budget(double, tmp_path):
    """With 800 decoded bytes in flight (a gRPC request held 1.5 s by the batcher), a 400-byte request is
    refused over REST (429) and gRPC (RESOURCE_EXHAUSTED); once it is answered, the same requests pass.

    Mutations tried: no budget taken by gRPC (the REST request passes while the gRPC one is in flight); no
    budget taken by REST (the 1600-byte REST request passes); the budget never given back (the requests after
    the hold are refused).
    """
    from tfdisguise.serving.batching import BatchingParameters

    copy_version(double, tmp_path / "m" / "1")
    batching = BatchingParameters(max_batch_size=1000, batch_timeout_micros=1_500_000)
    with serving({"m": tmp_path / "m"}, tmp_path, max_inflight_bytes=1000, batching=batching) as server:
        url = f"http://127.0.0.1:{server.rest_api_port}/v1/models/m:predict"
        held = {}

        def hold():
            held["y"] = grpc_predict(server, "m", np.ones((100, 2)), timeout=20)  # 800 bytes decoded

        holder = threading.Thread(target=hold)
        holder.start()
        time.sleep(0.5)
        try:
            answer = requests.post(url, json={"instances": np.ones((50, 2)).tolist()}, timeout=5)  # 400 bytes
            assert answer.status_code == 429 and "--max_inflight_bytes" in answer.json()["error"], answer.text
            with pytest.raises(grpc.RpcError) as err:
                grpc_predict(server, "m", np.ones((50, 2)))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert holder.is_alive()  # all of this happened while the first request was in flight
        finally:
            holder.join(timeout=20)
        np.testing.assert_allclose(held["y"], 2 * np.ones((100, 2)))
        answer = requests.post(url, json={"instances": np.ones((50, 2)).tolist()}, timeout=10)
        assert answer.status_code == 200
        np.testing.assert_allclose(grpc_predict(server, "m", np.ones((50, 2)), timeout=10), 2 * np.ones((50, 2)))
        answer = requests.post(url, json={"inputs": np.ones((200, 2)).tolist()}, timeout=5)  # 1600 bytes alone
        assert answer.status_code == 429


# ---- 5. stalled gRPC calls hold no worker thread, and are cut off --------------------------------


@contextlib.contextmanager
def stalled_calls(server, count: int):
    """`count` Predict calls that send their headers and never a request message (no deadline)."""
    from tensorflow_serving.apis import predict_pb2 as p

    release = threading.Event()

    def never():
        release.wait(60)
        return
        yield

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stall = channel.stream_unary("/tensorflow.serving.PredictionService/Predict",
                                     request_serializer=p.PredictRequest.SerializeToString,
                                     response_deserializer=p.PredictResponse.FromString)
        calls = [stall.future(never()) for _ in range(count)]
        try:
            yield calls
        finally:
            release.set()
            for call in calls:
                call.cancel()


def test_stalled_grpc_calls_hold_no_worker_and_are_cut_off(double, tmp_path):
    """32 calls that never send their request, on a server with 4 worker threads: a normal Predict is answered
    at once, and the stalled calls end DEADLINE_EXCEEDED after the read timeout.

    Mutations tried: grpcio's threaded server again (`grpc.server(ThreadPoolExecutor(4))`: the normal Predict
    times out); no read deadline (read_timeout 1000 s: the stalled calls stay open).
    """
    copy_version(double, tmp_path / "m" / "1")
    with serving({"m": tmp_path / "m"}, tmp_path, max_workers=4, grpc_read_timeout=2.0) as server, \
            stalled_calls(server, 32) as calls:
        time.sleep(0.5)
        started = time.monotonic()
        np.testing.assert_allclose(grpc_predict(server, "m", [[1, 2]], timeout=5), [[2, 4]])
        assert time.monotonic() - started < 2
        answer = requests.post(f"http://127.0.0.1:{server.rest_api_port}/v1/models/m:predict",
                               json={"instances": [[1, 2]]}, timeout=5)
        assert answer.status_code == 200
        for call in calls:
            error = call.exception(timeout=10)
            assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
            assert "--grpc_read_timeout" in error.details()


def test_grpc_calls_beyond_the_cap_are_refused_at_once(double, tmp_path):
    """With `grpc_max_concurrent_rpcs` calls open, one more is RESOURCE_EXHAUSTED; once they close, it passes.

    Mutations tried: no cap (maximum_concurrent_rpcs None: the extra call waits for a worker and is answered).
    """
    copy_version(double, tmp_path / "m" / "1")
    with serving({"m": tmp_path / "m"}, tmp_path, grpc_read_timeout=1.5, grpc_max_concurrent_rpcs=8) as server:
        with stalled_calls(server, 8):
            time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as err:
                grpc_predict(server, "m", [[1, 2]], timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_for(lambda: _answers(server), 10, "a Predict answered once the stalled calls are gone")


def _answers(server) -> bool:
    try:
        return grpc_predict(server, "m", [[1, 2]], timeout=2).shape == (1, 2)
    except grpc.RpcError:
        return False


# ---- 12. idle TLS connections cannot lock authenticated REST clients out --------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1, a client certificate, and the server's ssl.config."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    openssl("req", "-x509", *ec, "-subj", "/CN=test-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("client", [])):
        openssl("req", "-x509", "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), *ec, "-subj", f"/CN={name}",
                *extra, "-addext", "basicConstraints=CA:FALSE", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.crt"))
    pem = {name: (d / name).read_text() for name in ("server.key", "server.crt", "ca.crt")}
    (d / "ssl.config").write_text(f'server_key: "{pem["server.key"]}"\nserver_cert: "{pem["server.crt"]}"\n'
                                  f'custom_ca: "{pem["ca.crt"]}"\nclient_verify: true\n')
    return d


def _mtls_status(port: int, tls: pathlib.Path, source: str) -> int:
    """An authenticated REST status request from `source` (another loopback address is another client)."""
    import ssl

    context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    context.load_cert_chain(str(tls / "client.crt"), str(tls / "client.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return int(s.recv(64).split()[1])


def test_idle_tls_connections_are_capped_per_client_and_cut_off(double, tls_files, tmp_path):
    """16 connections from one address that never send a TLS hello, against a cap of 16 in all: another
    client's mTLS request is still answered, and the idle ones are closed after the handshake timeout.

    Mutations tried: no per-client cap (the 16 idle connections take every slot: the other client gets 503);
    no handshake timeout (the idle connections stay open until the 10 s read timeout).
    """
    from tfdisguise.serving.tls import read_ssl_config

    copy_version(double, tmp_path / "m" / "1")
    options = {"ssl": read_ssl_config(str(tls_files / "ssl.config")), "rest_max_connections": 16,
               "rest_max_connections_per_client": 8, "rest_tls_handshake_timeout": 1.0, "rest_read_timeout": 10}
    with serving({"m": tmp_path / "m"}, tmp_path, **options) as server:
        port = server.rest_api_port
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(16)]
        try:
            time.sleep(0.3)
            started = time.monotonic()
            assert _mtls_status(port, tls_files, "127.0.0.2") == 200
            open_ = list(idle)
            while open_ and time.monotonic() - started < 4:
                readable, _, _ = select.select(open_, [], [], 0.2)
                for s in readable:
                    try:
                        data = s.recv(1024)  # the 503 (for those over the cap), then the close
                    except OSError:
                        data = b""
                    if data == b"":
                        open_.remove(s)
            assert not open_, f"{len(open_)} idle TLS connections still open after 4 s"
            assert _mtls_status(port, tls_files, "127.0.0.1") == 200
        finally:
            for s in idle:
                s.close()
