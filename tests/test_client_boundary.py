"""The owner's client against hostile or misconfigured servers: what it refuses, how fast, and with which message.

The servers here are fakes on loopback: a real gRPC server with its own
PredictionService servicer, and a real HTTP(S) server, both answering the
model's metadata and its `tfdisguise_info` signature as a real export would
(so that the client's key check passes), then answering Predict as each test
needs: honestly, with a flood of rows, with a few rows too many, or with
another dtype.

Mutations tried, each applied in memory by a script that then ran this file (no file was edited):
- no `check_answer` (any outputs, dtypes and row counts accepted): the declared-million-rows test, both
  extra-row tests and the gRPC dtype test fail (the REST dtype test still passes: `_as_declared` is a second check);
- no `limit_answers` (the 64 MiB gRPC / 256 MiB REST caps kept): both flood tests fail (the answers are then
  refused later, by the row check or the deadline, with another message); with neither check, the unchecked
  client accepted the gRPC flood of 1,000,000 rows (peak +130 MiB) and spent 4.5 s and +629 MiB peak on the
  REST one before its deadline;
- REST verifies nothing (`verify_mode = CERT_NONE`, `check_hostname = False` in `ClientTLS.ssl_context`):
  the other-CA and wrong-name tests fail;
- REST checks the CA but not the host name (`check_hostname = False`): the wrong-name test fails;
- gRPC checks the CA but not the host name (`grpc.ssl_target_name_override`): the wrong-name test fails (and
  the right-name one). grpcio has no switch that skips the CA check, so that mutation exists for REST only;
- no TLS hint (`client._TLS_SIGNS` empty): the hint test fails.
"""

import concurrent.futures
import contextlib
import functools
import http.server
import json
import pathlib
import socket
import ssl
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from helpers import make_key
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from tfdisguise import KeyMismatchError, cli
from tfdisguise.export import INFO_SIGNATURE
from tfdisguise.serving.client import DisguisedClient, ServingClientError
from tfdisguise.serving.tls import ClientTLS

KEY = make_key(image_shape=(8, 8, 1), block_size=4)
CLASSES = 10
FLOOD_ROWS = 1_000_000
TIMEOUT = 3.0
SLACK = 1.5  # seconds past the timeout that a refusal may take on a loaded 2-core machine
RSS_BOUND = 150 << 20  # the unchecked client grew by gigabytes on such answers


# ---- the fake model: what its metadata declares ---------------------------------------------------------------------


def _info(dtype, *dims):
    return meta_graph_pb2.TensorInfo(name="x", dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))


def _signature_defs() -> get_model_metadata_pb2.SignatureDefMap:
    defs = get_model_metadata_pb2.SignatureDefMap()
    default = defs.signature_def["serving_default"]
    default.inputs["images"].CopyFrom(_info(types_pb2.DT_FLOAT, -1, 8, 8, 1))
    default.outputs["class_id"].CopyFrom(_info(types_pb2.DT_INT64, -1))
    default.outputs["probabilities"].CopyFrom(_info(types_pb2.DT_FLOAT, -1, CLASSES))
    info = defs.signature_def[INFO_SIGNATURE]
    info.inputs["dummy"].CopyFrom(_info(types_pb2.DT_INT32, -1))
    info.outputs["fingerprint"].CopyFrom(_info(types_pb2.DT_STRING))
    info.outputs["spec"].CopyFrom(_info(types_pb2.DT_STRING))
    return defs


def _tensor(dtype, dims, content=b"", packed_field=None, packed=b"") -> tensor_pb2.TensorProto:
    """A TensorProto; `packed` raw bytes go into the packed repeated field number `packed_field` (float_val: 5)."""
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    if packed_field is None:
        return proto
    n, length = len(packed), bytearray()
    while True:  # the field's length as a protobuf varint
        length.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return tensor_pb2.TensorProto.FromString(proto.SerializeToString() + bytes([packed_field << 3 | 2]) +
                                             bytes(length) + packed)


def _answer(mode: str, rows: int) -> predict_pb2.PredictResponse:
    """A Predict answer for `rows` images: honest, or as a hostile server makes it."""
    response = predict_pb2.PredictResponse()
    out = response.outputs
    if mode == "flood":  # a million rows as TF's repeated fields, which the unchecked client decoded one by one
        out["probabilities"].CopyFrom(_tensor(types_pb2.DT_FLOAT, [FLOOD_ROWS, CLASSES], packed_field=5,
                                              packed=bytes(4 * FLOOD_ROWS * CLASSES)))
        out["class_id"].CopyFrom(_tensor(types_pb2.DT_INT64, [FLOOD_ROWS], packed_field=10, packed=bytes(FLOOD_ROWS)))
        return response
    n = rows + 1 if mode == "extra_row" else rows
    shape = [FLOOD_ROWS, CLASSES] if mode == "declared_flood" else [n, CLASSES]
    content = b"" if mode == "declared_flood" else np.full((n, CLASSES), 0.1, np.float32).tobytes()
    if mode == "double":
        out["probabilities"].CopyFrom(_tensor(types_pb2.DT_DOUBLE, [n, CLASSES],
                                              np.full((n, CLASSES), 0.1).tobytes()))
    else:
        out["probabilities"].CopyFrom(_tensor(types_pb2.DT_FLOAT, shape, content))
    out["class_id"].CopyFrom(_tensor(types_pb2.DT_INT64, [n], np.zeros(n, np.int64).tobytes()))
    return response


@functools.cache
def _flood_answer() -> predict_pb2.PredictResponse:
    return _answer("flood", 0)


@functools.cache
def _flood_body() -> bytes:
    return _rest_body("flood", 0)


def _info_answer() -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    for name, text in (("fingerprint", KEY.fingerprint), ("spec", json.dumps(KEY.spec.to_dict()))):
        response.outputs[name].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                                               tensor_shape=tensor_shape_pb2.TensorShapeProto()))
    return response


# ---- a fake gRPC server ---------------------------------------------------------------------------------------------


class FakePredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Plausible metadata and disguise identity; Predict answers as `self.mode` says."""

    def __init__(self):
        self.mode, self.predicts = "honest", 0

    def GetModelMetadata(self, request, context):
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.metadata["signature_def"].Pack(_signature_defs())
        return response

    def Predict(self, request, context):
        if request.model_spec.signature_name == INFO_SIGNATURE:
            return _info_answer()
        self.predicts += 1
        rows = request.inputs["images"].tensor_shape.dim[0].size
        return _flood_answer() if self.mode == "flood" else _answer(self.mode, rows)


@contextlib.contextmanager
def grpc_server(credentials=None):
    service = FakePredictionService()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4),
                         options=[("grpc.max_send_message_length", 256 << 20)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = (server.add_secure_port("127.0.0.1:0", credentials) if credentials else
            server.add_insecure_port("127.0.0.1:0"))
    server.start()
    try:
        yield service, port
    finally:
        server.stop(grace=0)


# ---- a fake REST server ---------------------------------------------------------------------------------------------


def _rest_body(mode: str, rows: int) -> bytes:
    if mode == "flood":
        row = "[" + ",".join(["0.1"] * CLASSES) + "]"
        return ('{"outputs": {"class_id": [' + ",".join(["0"] * FLOOD_ROWS) + '], "probabilities": [' +
                ",".join([row] * FLOOD_ROWS) + "]}}").encode()
    n = rows + 1 if mode == "extra_row" else rows
    probabilities = [["x"] * CLASSES] * n if mode == "strings" else [[0.1] * CLASSES] * n
    return json.dumps({"outputs": {"class_id": [0] * n, "probabilities": probabilities}}).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # a client that refuses a flood hangs up
            self.wfile.write(body)

    def do_GET(self):
        # Proto field names, as TF Serving writes them; or lowerCamelCase, as protobuf's JSON does by default.
        defs = json_format.MessageToDict(_signature_defs(),
                                         preserving_proto_field_name=self.server.state["proto_names"])
        self._send(json.dumps({"model_spec": {"name": "m"}, "metadata": {"signature_def": defs}}).encode())

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state = self.server.state
        if request.get("signature_name") == INFO_SIGNATURE:
            return self._send(json.dumps({"outputs": {"fingerprint": KEY.fingerprint,
                                                      "spec": json.dumps(KEY.spec.to_dict())}}).encode())
        state["predicts"] += 1
        rows = len(request["inputs"]["images"])
        self._send(_flood_body() if state["mode"] == "flood" else _rest_body(state["mode"], rows))


@contextlib.contextmanager
def rest_server(context: ssl.SSLContext | None = None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.state = {"mode": "honest", "predicts": 0, "proto_names": True}
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# ---- measuring a refusal --------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no {field} in /proc/self/status")


def _refused(client, images, match: str) -> tuple[float, int]:
    """Runs `client.predict(images)`, which must fail with `match`; returns its seconds and peak RSS growth.

    The peak (VmHWM, reset through clear_refs), since what a refused answer allocated is freed by the time it
    is refused; where the peak cannot be reset, the growth of VmRSS.
    """
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        field = "VmHWM"
    except OSError:
        field = "VmRSS"
    rss, start = _status("VmRSS"), time.monotonic()
    with pytest.raises(ServingClientError, match=match):
        client.predict(images)
    return time.monotonic() - start, _status(field) - rss


IMAGES = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), np.uint8)


# ---- 1. the client does not trust the server's answer ---------------------------------------------------------------


@pytest.mark.parametrize("api", ["grpc", "rest", "rest-camel-case"])
def test_an_honest_fake_server_is_answered(api):
    """The fakes are good enough for the client: what the other tests refuse is the hostile part alone."""
    with (grpc_server() if api == "grpc" else rest_server()) as (state, port):
        if api == "rest-camel-case":
            state["proto_names"] = False
        target = f"127.0.0.1:{port}" if api == "grpc" else f"http://127.0.0.1:{port}"
        with DisguisedClient(target, "m", KEY, timeout=TIMEOUT) as client:
            out = client.predict(IMAGES)
            out3 = client.predict(np.concatenate([IMAGES] * 3), concurrency=2)
    assert out["class_id"].shape == (2,) and out["class_id"].dtype == np.int64
    assert out["probabilities"].shape == (2, CLASSES) and out["probabilities"].dtype == np.float32
    assert out3["probabilities"].shape == (6, CLASSES)


def test_grpc_flood_of_a_million_rows_is_refused_in_time_and_memory():
    _flood_answer()  # built before the memory baseline
    with grpc_server() as (service, port), DisguisedClient(f"127.0.0.1:{port}", "m", KEY, timeout=TIMEOUT) as client:
        client.metadata  # noqa: B018 -- the key check and the answer cap, before the memory baseline
        service.mode = "flood"
        elapsed, grown = _refused(client, IMAGES, r"answer is larger than the \d+ bytes")
    assert elapsed < TIMEOUT + SLACK, elapsed
    assert grown < RSS_BOUND, f"RSS grew by {grown >> 20} MiB"


def test_grpc_answer_declaring_a_million_rows_is_refused_before_decoding():
    with grpc_server() as (service, port), DisguisedClient(f"127.0.0.1:{port}", "m", KEY, timeout=TIMEOUT) as client:
        service.mode = "declared_flood"
        with pytest.raises(ServingClientError, match=r"server answered 1000000 rows of 'probabilities' for 2 images"):
            client.predict(IMAGES)


@pytest.mark.parametrize("mode, match", [
    ("extra_row", r"server answered 3 rows of '(class_id|probabilities)' for 2 images"),
    ("double", r"answered 'probabilities' as DT_DOUBLE, but the model's metadata declares DT_FLOAT"),
])
def test_grpc_answer_of_another_row_count_or_dtype_is_refused(mode, match):
    with grpc_server() as (service, port), \
            DisguisedClient(f"127.0.0.1:{port}", "m", KEY, timeout=TIMEOUT, batch_size=2) as client:
        service.mode = mode
        with pytest.raises(ServingClientError, match=match) as err:
            client.predict(IMAGES)
        assert err.value.code == grpc.StatusCode.INTERNAL
        with pytest.raises(ServingClientError, match=match):  # the concurrent path checks alike
            client.predict(np.concatenate([IMAGES] * 2), concurrency=2)


def test_rest_flood_of_a_million_rows_is_refused_in_time_and_memory():
    _flood_body()  # built before the memory baseline
    with rest_server() as (state, port), \
            DisguisedClient(f"http://127.0.0.1:{port}", "m", KEY, timeout=TIMEOUT) as client:
        client.metadata  # noqa: B018
        state["mode"] = "flood"
        elapsed, grown = _refused(client, IMAGES, r"RESOURCE_EXHAUSTED: The answer is larger than \d+ bytes")
    assert elapsed < TIMEOUT + SLACK, elapsed
    assert grown < RSS_BOUND, f"RSS grew by {grown >> 20} MiB"


@pytest.mark.parametrize("mode, match", [
    ("extra_row", r"server answered 3 rows of '(class_id|probabilities)' for 2 images"),
    ("strings", r"answered 'probabilities' as <U1 values, but the model's metadata declares DT_FLOAT"),
])
def test_rest_answer_of_another_row_count_or_dtype_is_refused(mode, match):
    with rest_server() as (state, port), \
            DisguisedClient(f"http://127.0.0.1:{port}", "m", KEY, timeout=TIMEOUT) as client:
        state["mode"] = mode
        with pytest.raises(ServingClientError, match=match):
            client.predict(IMAGES)


def test_wrong_key_is_refused_before_any_predict_is_sent():
    other = make_key(seed=1, image_shape=(8, 8, 1), block_size=4)
    with grpc_server() as (service, port), rest_server() as (state, rest_port):
        for target in (f"127.0.0.1:{port}", f"http://127.0.0.1:{rest_port}"):
            with DisguisedClient(target, "m", other, timeout=TIMEOUT) as client, pytest.raises(KeyMismatchError):
                client.predict(IMAGES)
        assert service.predicts == 0 and state["predicts"] == 0


# ---- 2. the client checks the server's certificate and host name ----------------------------------------------------


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """Two CAs; a server certificate for localhost/127.0.0.1 and one for another name, both signed by `ca`."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", *ec, "-subj", f"/CN={ca}", "-keyout", str(d / f"{ca}.key"),
                 "-out", str(d / f"{ca}.crt"))
    for name, san in (("server", "DNS:localhost,IP:127.0.0.1"), ("elsewhere", "DNS:elsewhere.example")):
        _openssl("req", "-x509", "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), *ec, "-subj",
                 f"/CN={san.split(',')[0][4:]}", "-addext", f"subjectAltName={san}", "-addext",
                 "basicConstraints=CA:FALSE", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt"))
    return d


def _grpc_credentials(d, name):
    return grpc.ssl_server_credentials([((d / f"{name}.key").read_bytes(), (d / f"{name}.crt").read_bytes())])


def _ssl_context(d, name):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / f"{name}.crt", d / f"{name}.key")
    return context


@contextlib.contextmanager
def tls_servers(d, name):
    """A gRPC and an HTTPS fake server with certificate `name`; yields their client targets.

    Dialled as 127.0.0.1, which the good certificate names: "localhost" may resolve to ::1 first, where nothing
    listens, and gRPC would then report that refusal rather than the handshake's.
    """
    with grpc_server(_grpc_credentials(d, name)) as (_, port), rest_server(_ssl_context(d, name)) as (_, rest_port):
        yield f"127.0.0.1:{port}", f"https://127.0.0.1:{rest_port}"


def test_tls_with_the_right_ca_and_name_is_answered(certificates):
    with tls_servers(certificates, "server") as targets:
        for target in targets:
            with DisguisedClient(target, "m", KEY, tls=ClientTLS(str(certificates / "ca.crt")), timeout=5) as client:
                assert client.predict(IMAGES)["class_id"].shape == (2,)


@pytest.mark.parametrize("server_cert, ca", [("server", "other_ca"), ("elsewhere", "ca")],
                         ids=["other-ca", "wrong-host-name"])
def test_tls_refuses_a_certificate_of_another_ca_or_another_name(certificates, server_cert, ca):
    with tls_servers(certificates, server_cert) as targets:
        for target in targets:
            start = time.monotonic()
            with DisguisedClient(target, "m", KEY, tls=ClientTLS(str(certificates / f"{ca}.crt")), timeout=3,
                                 max_retries=2) as client, pytest.raises(ServingClientError) as err:
                client.predict(IMAGES)
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED, (target, str(err.value))
            assert "certificate is refused" in str(err.value)
            assert time.monotonic() - start < 3 + SLACK


# ---- 3. a plaintext client against a TLS server is told so ----------------------------------------------------------


def test_plaintext_client_against_a_tls_server_hints_at_tls(certificates, tmp_path, capsys):
    key_path, images = str(tmp_path / "key.json"), str(tmp_path / "x.npy")
    KEY.save(key_path)
    np.save(images, IMAGES)
    with tls_servers(certificates, "server") as (grpc_target, rest_target):
        for target in (grpc_target, rest_target.replace("https://", "http://")):
            with DisguisedClient(target, "m", KEY, timeout=2) as client, pytest.raises(ServingClientError) as err:
                client.predict(IMAGES)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE, str(err.value)
            assert "the server may require TLS: pass --ca-cert" in str(err.value), str(err.value)
            assert "tls=ClientTLS(...)" in str(err.value)
        assert cli.main(["predict", "--key", key_path, "--server", grpc_target, "--model", "m", "--timeout", "2",
                         images]) == 1
        assert "the server may require TLS: pass --ca-cert" in capsys.readouterr().err
        assert cli.main(["predict", "--key", key_path, "--server", grpc_target, "--model", "m", "--timeout", "2",
                         "--ca-cert", str(certificates / "ca.crt"), images]) == 0
        assert "class 0" in capsys.readouterr().out


def test_absent_server_gives_no_tls_hint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for target in (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        with DisguisedClient(target, "m", KEY, timeout=1) as client, pytest.raises(ServingClientError) as err:
            client.predict(IMAGES)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "TLS" not in str(err.value), str(err.value)
