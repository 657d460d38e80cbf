"""Hostile and careless inputs (issue 9): each finding is a test here, on loopback only, bounded in time.

Server-side bounds: memory (a shape bomb costs milliseconds and kilobytes),
REST time, size and connection limits, exclusive ports, TLS on both APIs.
Client-side: its deadline on every transport, its own errors only, images the
key cannot mean. Owner-side: --overwrite, and the smaller findings.
"""

import contextlib
import json
import os
import pathlib
import re
import select
import socket
import subprocess
import threading
import time

import grpc
import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
from helpers import make_key
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfdisguise import cli, disguise, load_disguised
from tfdisguise.export import ExportError, export
from tfdisguise.serving import transports
from tfdisguise.serving.client import DisguisedClient, ImagesError, ServingClientError
from tfdisguise.serving.registry import ModelRegistry
from tfdisguise.serving.server import ModelServer
from tfdisguise.serving.tls import ClientTLS, read_ssl_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
READ_TIMEOUT = 1.5  # the fixture server's REST read timeout, seconds
MAX_BYTES = 2 << 20  # the fixture server's decoded-request cap (and gRPC message limit)
MAX_BODY = 8 << 20  # the fixture server's REST body cap


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An untrained tiny classifier for a key ("tiny"), a model that doubles its input ("double"), served."""
    base = tmp_path_factory.mktemp("saved_models")
    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector", noise=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")])
    export(model, str(base), "tiny", key=key)

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 2 * x}

    module = Double()
    tf.saved_model.save(module, str(base / "double" / "1"), signatures={"serving_default": module.serve})
    config = base / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
        for n in ("tiny", "double")) + "}\n")
    registry = ModelRegistry.from_flags(model_config_file=str(config))
    server = ModelServer(registry, port=0, rest_api_port=0, host="127.0.0.1", max_message_bytes=MAX_BYTES,
                         rest_max_body_bytes=MAX_BODY, rest_read_timeout=READ_TIMEOUT).start()
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    yield {"server": server, "registry": registry, "key": key, "model": model, "base": base, "x": x}
    server.stop(grace=1)


def grpc_target(served):
    return f"127.0.0.1:{served['server'].port}"


def rest_url(served, path=""):
    return f"http://127.0.0.1:{served['server'].rest_api_port}{path}"


def assert_still_serving(served):
    expected = served["model"].predict(disguise(served["x"], served["key"]), verbose=0)
    with DisguisedClient(grpc_target(served), "tiny", served["key"], timeout=5) as client:
        np.testing.assert_allclose(client.predict(served["x"])["probabilities"], expected, atol=1e-5)
    body = {"instances": disguise(served["x"], served["key"]).tolist()}
    answer = requests.post(rest_url(served, "/v1/models/tiny:predict"), json=body, timeout=5)
    assert answer.status_code == 200, answer.text


# ---- 2. a 41-byte request must not take gigabytes ------------------------------------------------


def test_grpc_shape_bomb_is_refused_before_anything_is_allocated(served):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(grpc_target(served)))

    def request(proto):
        r = predict_pb2.PredictRequest()
        r.model_spec.name = "tiny"
        r.inputs["image"].CopyFrom(proto)
        return r

    bomb = request(tf.make_tensor_proto(0.0, shape=[1_000_000, 8, 8, 1]))  # 256 MB declared, one value held
    assert bomb.ByteSize() < 64
    rss, started = _rss_bytes(), time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(bomb, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in err.value.details()
    assert time.monotonic() - started < 1.0
    assert _rss_bytes() - rss < 100 << 20
    # Under the cap, the values must still be all there: TF would fill the rest with the last one.
    for proto, needle in ((tf.make_tensor_proto(0.0, shape=[2, 8, 8, 1]), "holds 1 values"),
                          (tf.make_tensor_proto(np.zeros((2, 8, 8, 1), np.float64)), "to be float32 but float64"),
                          (tf.make_tensor_proto(np.zeros((2, 9, 8, 1), np.float32)), "signature expects")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request(proto), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
    assert_still_serving(served)


def test_rest_body_over_the_cap_is_refused_unread(served):
    """A declared length over the cap gets 413 unread; a chunked body is cut off at the cap as it arrives.

    Mutations tried: tornado's body cap lifted (max_body_size 1 TiB, werkzeug's cap kept): the chunked 40 MiB
    body is read whole (all bytes sent; before, a 400 "JSON Parse error" for a 9 MiB body passed this test).
    """
    rss, started = _rss_bytes(), time.monotonic()
    with socket.create_connection(("127.0.0.1", served["server"].rest_api_port), timeout=2) as s:
        s.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200000000\r\n\r\n{\"instances\": [")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413") and b"send fewer images" in answer, answer
    assert time.monotonic() - started < 1.0
    assert _rss_bytes() - rss < 100 << 20
    # A chunked body declares no length: it must be cut off at the cap as it arrives (a 413, or a closed socket),
    # long before the 40 MiB are all sent. A server that read it whole would answer 400 (not JSON) at the end.
    total, chunk = 40 << 20, b"[0," * (1 << 14)  # 48 KiB chunks
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, answer, rss, started = 0, b"", _rss_bytes(), time.monotonic()
    with socket.create_connection(("127.0.0.1", served["server"].rest_api_port), timeout=2) as s:
        s.sendall(b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < total and time.monotonic() - started < 10:
                s.sendall(frame)
                sent += len(chunk)
                if select.select([s], [], [], 0)[0]:
                    answer = s.recv(4096)
                    break
            else:
                s.sendall(b"0\r\n\r\n")
                answer = s.recv(4096)
        except OSError:  # reset or broken pipe: the server closed it while we sent
            pass
    assert sent < MAX_BODY + (4 << 20), f"the server took {sent >> 20} MiB of a body capped at {MAX_BODY >> 20} MiB"
    # Closed, or answered 413, or tornado's bare "400 Bad Request" for a chunked body over its cap (no JSON
    # error: that would be the app having parsed a body read whole).
    assert answer in (b"", b"HTTP/1.1 400 Bad Request\r\n\r\n") or answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5 and _rss_bytes() - rss < 100 << 20
    assert_still_serving(served)


def test_rest_inputs_are_checked_against_the_signature_and_cap_before_conversion(served):
    url = rest_url(served, "/v1/models/tiny:predict")
    big = json.dumps({"instances": np.zeros((10000, 8, 8, 1), np.uint8).tolist()}, separators=(",", ":"))
    answer = requests.post(url, data=big, timeout=10)  # 2.6 MB of JSON, under the body cap; 2.6 MB decoded
    assert answer.status_code == 400 and "more than the limit" in answer.json()["error"]
    answer = requests.post(url, json={"instances": [[[[0.0] * 3] * 8] * 8]}, timeout=5)
    assert answer.status_code == 400 and "signature expects [None, 8, 8, 1]" in answer.json()["error"]
    answer = requests.post(url, json={"inputs": {"image": [[0]], "extra": [1]}}, timeout=5)
    assert answer.status_code == 400 and "Unknown inputs ['extra']" in answer.json()["error"]


# ---- 4. REST limits ------------------------------------------------------------------------------


def test_slow_rest_clients_are_cut_off_and_do_not_block_others(served):
    port = served["server"].rest_api_port
    slow = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(30)]
    header = b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    normal = {}

    def ask():
        started = time.monotonic()
        body = {"instances": disguise(served["x"], served["key"]).tolist()}
        normal["status"] = requests.post(rest_url(served, "/v1/models/tiny:predict"), json=body, timeout=5).status_code
        normal["seconds"] = time.monotonic() - started

    asker = threading.Thread(target=ask)
    open_ = set(range(30))
    started, sent = time.monotonic(), 0
    try:
        while open_ and time.monotonic() - started < 5:
            if sent == 3:
                asker.start()
            for i in list(open_):
                try:
                    slow[i].send(header[sent:sent + 1])  # one byte each 0.2 s: never a whole request
                except OSError:
                    open_.discard(i)
            readable, _, _ = select.select([slow[i] for i in open_], [], [], 0.2)
            for s in readable:
                with contextlib.suppress(OSError):
                    if s.recv(1024) == b"":
                        open_.discard(slow.index(s))
            sent += 1
        closed_after = time.monotonic() - started
    finally:
        for s in slow:
            s.close()
        if asker.is_alive() or sent > 3:
            asker.join(timeout=10)
    assert normal == {"status": 200, "seconds": normal["seconds"]} and normal["seconds"] < 2, normal
    assert not open_, f"{len(open_)} slow connections still open after 5 s"
    assert closed_after < READ_TIMEOUT + 2


def test_rest_connection_cap(served):
    with ModelServer(served["registry"], port=0, rest_api_port=0, host="127.0.0.1", rest_max_connections=4,
                     rest_read_timeout=5) as server:
        idle = [socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=2) for _ in range(4)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=2) as extra:
            answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503") and b"More than 4 open connections" in answer
            assert extra.recv(1024) == b""  # and closed
        for s in idle:
            s.close()
        time.sleep(0.2)
        assert requests.get(f"http://127.0.0.1:{server.rest_api_port}/v1/models/tiny", timeout=5).status_code == 200


def test_rest_deep_json_methods_and_strict_json_answers(served):
    url = rest_url(served, "/v1/models/tiny:predict")
    deep = '{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}"
    answer = requests.post(url, data=deep, timeout=5)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]
    for method, path, allowed in (("GET", "/v1/models/tiny:predict", "POST"),
                                  ("PUT", "/v1/models/tiny:predict", "POST"), ("DELETE", "/v1/models/tiny", "GET"),
                                  ("POST", "/v1/models/tiny", "GET"), ("PATCH", "/v1/models/tiny/metadata", "GET")):
        answer = requests.request(method, rest_url(served, path), timeout=5)
        assert (answer.status_code, answer.headers.get("Allow")) == (405, allowed), (method, path)
    answer = requests.post(rest_url(served, "/v1/models/double:predict"),
                           data='{"instances": [[NaN, Infinity], [1, -Infinity]]}', timeout=5)

    def no_bare_constants(name):
        raise AssertionError(f"bare {name} in the answer: not JSON")

    assert json.loads(answer.text, parse_constant=no_bare_constants) == {
        "predictions": [["NaN", "Infinity"], [2.0, "-Infinity"]]}
    transport = transports.transport_for(rest_url(served), "double")
    try:  # 2 * 3e38 overflows float32: the answer says "Infinity", the client reads inf
        y = transport.predict({"x": np.array([[3e38, 1.0]], np.float32)}, "serving_default", timeout=5)["y"]
    finally:
        transport.close()
    assert y.dtype.kind == "f" and np.isposinf(y[0, 0]) and y[0, 1] == 2.0


# ---- 3. exclusive ports ----------------------------------------------------------------------------


def test_a_second_server_on_a_port_in_use_fails_at_start(served, capsys):
    server = served["server"]
    with pytest.raises(OSError, match=rf"gRPC port to 127.0.0.1:{server.port}: Address already in use"):
        ModelServer(served["registry"], port=server.port, host="127.0.0.1").start()
    free = _free_port()
    with pytest.raises(OSError, match=rf"REST port to 127.0.0.1:{server.rest_api_port}: Address already in use"):
        ModelServer(served["registry"], port=free, rest_api_port=server.rest_api_port, host="127.0.0.1").start()
    with ModelServer(served["registry"], port=free, host="127.0.0.1"):  # the failed start let go of its gRPC port
        pass
    assert cli.main(["serve", "--embedded", "--host", "127.0.0.1", "--port", str(server.port),
                     "--model_name", "tiny", "--model_base_path", str(served["base"] / "tiny")]) == 1
    assert "Address already in use. Is another server running on it?" in capsys.readouterr().err
    assert_still_serving(served)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- 1. REST security follows gRPC's ---------------------------------------------------------------


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    _openssl("req", "-x509", *ec, "-subj", "/CN=test-ca", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, subject, extra in (("server", "/CN=localhost", ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]),
                                 ("client", "/CN=owner", [])):
        _openssl("req", "-x509", "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), *ec, "-subj", subject,
                 *extra, "-addext", "basicConstraints=CA:FALSE", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.crt"))
    config = d / "ssl.config"
    pem = {name: (d / name).read_text() for name in ("server.key", "server.crt", "ca.crt")}
    config.write_text(f'server_key: "{pem["server.key"]}"\nserver_cert: "{pem["server.crt"]}"\n'
                      f'custom_ca: "{pem["ca.crt"]}"\nclient_verify: true\n')
    return d


def test_rest_serves_https_with_the_same_certificates_and_client_verification(served, certificates, tmp_path):
    d = certificates
    with ModelServer(served["registry"], port=0, rest_api_port=0, host="127.0.0.1",
                     ssl=read_ssl_config(str(d / "ssl.config"))) as server:
        rest = f"127.0.0.1:{server.rest_api_port}"
        predict = "/v1/models/tiny:predict"
        body = {"instances": disguise(served["x"], served["key"]).tolist()}
        with pytest.raises(requests.ConnectionError):  # plain HTTP to the REST port: no answer
            requests.post(f"http://{rest}{predict}", json=body, timeout=5)
        with pytest.raises(requests.exceptions.SSLError):  # HTTPS without a client certificate
            requests.post(f"https://{rest}{predict}", json=body, timeout=5, verify=str(d / "ca.crt"))
        answer = requests.post(f"https://{rest}{predict}", json=body, timeout=5, verify=str(d / "ca.crt"),
                               cert=(str(d / "client.crt"), str(d / "client.key")))
        assert answer.status_code == 200
        tls = ClientTLS(str(d / "ca.crt"), str(d / "client.crt"), str(d / "client.key"))
        for target in (f"127.0.0.1:{server.port}", f"https://{rest}"):
            with DisguisedClient(target, "tiny", served["key"], tls=tls, timeout=5) as client:
                assert client.predict(served["x"])["class_id"].shape == (4,)
            no_client_cert = ClientTLS(str(d / "ca.crt"))
            with DisguisedClient(target, "tiny", served["key"], tls=no_client_cert, timeout=1) as client, \
                    pytest.raises(ServingClientError):
                client.predict(served["x"])
        key_path, images = str(tmp_path / "key.json"), str(tmp_path / "x.npy")
        served["key"].save(key_path)
        np.save(images, served["x"])
        for rest_flag, server_flag in (([], f"127.0.0.1:{server.port}"), (["--rest"], rest)):
            assert cli.main(["predict", "--key", key_path, "--server", server_flag, "--model", "tiny", *rest_flag,
                             "--ca-cert", str(d / "ca.crt"), "--client-cert", str(d / "client.crt"),
                             "--client-key", str(d / "client.key"), images]) == 0


def test_rest_refuses_to_start_rather_than_serve_plain_http(served, certificates, tmp_path):
    d = certificates
    ssl = read_ssl_config(str(d / "ssl.config"))
    mismatched = type(ssl)(server_key=(d / "client.key").read_bytes(), server_cert=ssl.server_cert)
    port = _free_port()
    with pytest.raises(ValueError, match="cannot serve REST over HTTPS .* refusing to serve it over plain HTTP"):
        ModelServer(served["registry"], port=port, rest_api_port=0, host="127.0.0.1", ssl=mismatched).start()
    no_ca = type(ssl)(server_key=ssl.server_key, server_cert=ssl.server_cert, client_verify=True)
    with pytest.raises(ValueError, match="client_verify needs custom_ca"):
        ModelServer(served["registry"], port=port, rest_api_port=0, host="127.0.0.1", ssl=no_ca).start()
    with ModelServer(served["registry"], port=port, host="127.0.0.1"):  # nothing was left bound
        pass


# ---- 5. the client: deadline, its own errors, images it refuses -------------------------------------


@contextlib.contextmanager
def fake_http_server(answer):
    """A loopback server that sends `answer(conn)` to every connection, for at most 10 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, threads = threading.Event(), []

    def serve():
        deadline = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=lambda c=conn: _answer(c, answer, stop, deadline), daemon=True)
            t.start()
            threads.append(t)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _answer(conn, answer, stop, deadline):
    with conn:
        conn.settimeout(1)
        with contextlib.suppress(OSError):
            conn.recv(65536)
            for chunk in answer():
                if stop.is_set() or time.monotonic() > deadline:
                    return
                conn.sendall(chunk)


def test_rest_client_keeps_its_deadline_against_a_trickling_server(served):
    def trickle():
        yield b"HTTP/1.1 200 OK\r\n"
        while True:
            time.sleep(0.2)
            yield b"X"

    with fake_http_server(trickle) as url, DisguisedClient(url, "tiny", served["key"], timeout=1.5) as client:
        started = time.monotonic()
        with pytest.raises(ServingClientError, match="DEADLINE_EXCEEDED"):
            client.predict(served["x"])
        assert time.monotonic() - started < 3


def test_client_raises_only_its_own_errors(served):
    def not_json():
        yield b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!"

    with fake_http_server(not_json) as url, DisguisedClient(url, "tiny", served["key"], timeout=2) as client, \
            pytest.raises(ServingClientError, match="not a JSON object"):
        client.predict(served["x"])
    # A name is one path segment, escaped: "tiny?x" is not "tiny" with a query.
    with DisguisedClient(rest_url(served), "tiny?x", served["key"], timeout=2) as client, \
            pytest.raises(ServingClientError, match="NOT_FOUND"):
        client.predict(served["x"])
    transport = transports.transport_for(rest_url(served), "a/../b c")
    assert transport._path("/metadata") == "/v1/models/a%2F..%2Fb%20c/metadata"
    transport.close()


@pytest.mark.parametrize("images, needle", [
    (np.full((2, 8, 8, 1), 0.5, np.float32), r"Rescale to 0\.\.255 \(images \* 255\)"),
    (np.full((2, 8, 8, 1), 300.0), "outside 0..255"),
    (np.full((1, 8, 8, 1), np.nan, np.float32), "NaN or infinite"),
    (np.full((2, 8, 8, 1), -3, np.int16), r"have values from -3 to -3, outside 0\.\.255"),  # integers: by range
    (np.zeros((2, 8, 8, 1), np.complex64), "dtype=complex64. Convert them"),
    (np.zeros((0, 8, 8, 1), np.uint8), "is empty"),
    (np.zeros((2, 28, 28, 1), np.uint8), r"must be \[N, 8, 8, 1\]"),
])
def test_client_refuses_images_the_key_cannot_mean(served, images, needle):
    # Nothing listens at the target: the images are refused before any request.
    with DisguisedClient(f"127.0.0.1:{_free_port()}", "tiny", served["key"], timeout=1) as client, \
            pytest.raises(ImagesError, match=needle) as err:
        client.predict(images)
    assert isinstance(err.value, ValueError) and isinstance(err.value, ServingClientError)


# ---- 6. --overwrite deletes only our own data sets ------------------------------------------------------


@pytest.fixture
def owner(tmp_path, served):
    key_path = str(tmp_path / "key.json")
    served["key"].save(key_path)
    npz = str(tmp_path / "data.npz")
    np.savez(npz, x=served["x"], y=np.arange(4) % 2)
    return ["disguise", "--key", key_path, "--input", npz, "--quiet"]


def test_overwrite_refuses_what_is_not_a_disguised_data_set(owner, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    assert cli.main([*owner, "--out", str(thesis), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "is not a disguised data set" in err and "--overwrite" in err and "overwrite=True" not in err
    assert (thesis / "chapter1.tex").read_text() == "years of work" and os.listdir(thesis) == ["chapter1.tex"]
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    assert cli.main([*owner, "--out", str(notes), "--overwrite"]) == 1
    assert "not a directory" in capsys.readouterr().err and notes.read_text() == "keep"

    upload = tmp_path / "upload"
    assert cli.main([*owner, "--out", str(upload)]) == 0
    assert cli.main([*owner, "--out", str(upload)]) == 1
    err = capsys.readouterr().err
    assert "pass --overwrite" in err and "overwrite=True" not in err
    (upload / "mine.txt").write_text("also keep")
    assert cli.main([*owner, "--out", str(upload), "--overwrite"]) == 1
    assert "also other files (mine.txt)" in capsys.readouterr().err and (upload / "mine.txt").exists()
    (upload / "mine.txt").unlink()
    assert cli.main([*owner, "--out", str(upload), "--overwrite"]) == 0  # our own data set: replaced
    assert sum(1 for _ in load_disguised(str(upload))) == 4
    assert sorted(os.listdir(tmp_path)) == ["data.npz", "key.json", "notes.txt", "thesis", "upload"]


# ---- 9. the smaller findings ------------------------------------------------------------------------


def test_export_names_stay_inside_the_base(served, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for name in ("..", ".", "../escape", "/abs", ".hidden", ""):
        with pytest.raises(ExportError, match="`name` must be"):
            export(served["model"], str(base), name, key=served["key"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "linked").symlink_to(outside)
    with pytest.raises(ExportError, match="outside `base_dir`"):
        export(served["model"], str(base), "linked", key=served["key"])
    assert os.listdir(outside) == [] and sorted(os.listdir(tmp_path)) == ["base", "outside"]


def test_serve_hands_over_nothing_that_exposes_more_than_asked(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    started = []

    def execv(*argv):  # as the real one, it does not return
        started.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    assert cli.main(["serve", "--host", "127.0.0.1", "--port=8500", "--model_base_path=/m"]) == 1
    err = capsys.readouterr().err
    assert "has no flag to bind 127.0.0.1" in err and "docker run -p 127.0.0.1:8500:8500" in err
    assert started == []  # never started, so it never bound 0.0.0.0
    # Its REST has no TLS: REST with --ssl_config_file would be plain HTTP beside a TLS gRPC.
    assert cli.main(["serve", "--ssl_config_file=ssl.config", "--rest_api_port=8501", "--model_base_path=/m"]) == 1
    assert "serves REST in plain HTTP even with --ssl_config_file" in capsys.readouterr().err and started == []
    with pytest.raises(SystemExit):  # every interface is what the real server binds: handed over
        cli.main(["serve", "--host", "0.0.0.0", "--port=8500", "--model_base_path=/m"])
    assert started == [(str(fake), [str(fake), "--port=8500", "--model_base_path=/m"])]


def test_dockerfile_flags_are_serve_flags():
    from tfdisguise.cli import serve

    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", "")  # continued lines joined
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    args, unknown = cli.build_parser().parse_known_args(["serve", *cmd])
    assert unknown == []
    for flag in ("--batching_parameters_file", "--monitoring_config_file", "--model_config_file"):
        given = getattr(args, flag[2:])
        setattr(args, flag[2:], str(ROOT / "serving" / os.path.basename(given)))  # /config/x is serving/x here
    options, notes = serve.embedded_options(args)
    assert options["port"] == 8500 and options["rest_api_port"] == 8501 and options["host"] == "0.0.0.0"
    # The embedded server now batches and serves metrics itself: nothing is left for the real server alone.
    assert notes == [] and options["monitoring_config_file"].endswith("monitoring.config")
    args.batching_parameters_file = "/nowhere/batching.txt"
    with pytest.raises(ValueError, match="--batching_parameters_file: /nowhere/batching.txt does not exist"):
        serve.embedded_options(args)
    assert serve.model_server_argv(cli.build_parser().parse_args(["serve", *cmd])) == [
        f if "=" in f else f"{f}=true" for f in cmd]

