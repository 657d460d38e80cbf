"""Key material must never leave the owner: not in configs, manifests, shards or exports, and no disguised
image may reach a model made for another key.

The scans use the library's own scanner (`tfdisguise.leaks`, which `export` runs on what it writes). Each
scan has a positive control, so a broken scan cannot pass silently.
"""

import concurrent.futures
import json
import os
import threading
import zipfile

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_key
from tensorflow_serving.apis import predict_pb2

from tfdisguise import Disguise, disguise, export_disguised
from tfdisguise.leaks import KeyScanner, scan_directory


def leaks(blob: bytes, key) -> list[str]:
    """What of `key` `blob` holds (descriptions); [] when none. The library's scanner, shared by other tests."""
    return KeyScanner(key).find(blob)


@pytest.fixture
def key():
    return make_key(image_shape=(14, 14, 1), block_size=7, rmt="orthogonal", rmt_mode="vector", noise=10)


@pytest.fixture
def mechanism_key():
    """Every step beyond the papers' in one key: AES (its AES key), block_scramble and negpos_hash (their tables)."""
    return make_key(image_shape=(16, 16, 1), block_size=4, rmt=None, scramble="per_position", negpos_hash=True,
                    aes=True)


def scan_dir(path, key) -> dict:
    """{file: what it holds} for every file under `path` that holds key material."""
    return scan_directory(str(path), key)


def test_scan_finds_planted_material(key, tmp_path):
    # Positive controls: the key file holds the secret; raw matrices hold their bytes.
    key.save(str(tmp_path / "key.json"))
    with open(tmp_path / "key.json", "rb") as f:
        assert leaks(f.read(), key)
    assert leaks(b"xx" + key.materials[0][3].astype("<f4").tobytes() + b"yy", key)


def test_layer_config_holds_no_key_material(key):
    config = json.dumps(Disguise(key).get_config()).encode()
    assert leaks(config, key) == []
    assert b"secret" not in config


def test_keras_config_json_holds_no_key_material(key, tmp_path):
    model = keras.Sequential([keras.Input((14, 14, 1)), Disguise(key), keras.layers.Flatten(), keras.layers.Dense(2)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert leaks(z.read("config.json"), key) == []
        assert leaks(z.read("metadata.json"), key) == []


def test_manifest_and_shards_hold_no_key_material(key, mnist_like, tmp_path):
    out = str(tmp_path / "upload")
    ds = tf.data.Dataset.from_tensor_slices((mnist_like, np.arange(6)))
    export_disguised(ds, key, out, shard_size=4, progress=False)
    names = os.listdir(out)
    assert "manifest.json" in names and len(names) == 3
    for name in names:
        with open(os.path.join(out, name), "rb") as f:
            assert leaks(f.read(), key) == [], name


def test_scan_finds_planted_aes_and_table_material(mechanism_key, tmp_path):
    aes_key = mechanism_key.materials[2]
    assert aes_key.shape == (32,) and leaks(b"xx" + aes_key.tobytes() + b"yy", mechanism_key)
    assert leaks(aes_key.tobytes().hex().encode(), mechanism_key)
    assert leaks(mechanism_key.materials[1].tobytes(), mechanism_key)  # the negpos_hash table
    assert leaks(mechanism_key.materials[0].tobytes(), mechanism_key)  # the scramble choices
    mechanism_key.save(str(tmp_path / "key.json"))
    assert scan_dir(str(tmp_path), mechanism_key)


def test_shards_of_new_mechanisms_hold_no_key_material(mechanism_key, rng, tmp_path):
    x = rng.integers(0, 256, (6, 16, 16, 1), dtype=np.uint8)
    x[:3, :8] = 0  # identical blocks: the ECB leak is in the data, not the key
    out = str(tmp_path / "upload")
    export_disguised(tf.data.Dataset.from_tensor_slices((x, np.arange(6))), mechanism_key, out, shard_size=4,
                     progress=False)
    assert len(os.listdir(out)) == 3 and scan_dir(out, mechanism_key) == {}


def test_export_and_keras_files_of_new_mechanisms_hold_no_key_material(mechanism_key, tmp_path):
    from tfdisguise.export import export

    config = json.dumps(Disguise(mechanism_key).get_config()).encode()
    assert leaks(config, mechanism_key) == []
    owner = keras.Sequential([keras.Input((16, 16, 1)), Disguise(mechanism_key), keras.layers.Flatten()])
    owner.save(str(tmp_path / "owner.keras"))
    with zipfile.ZipFile(str(tmp_path / "owner.keras")) as z:
        assert leaks(z.read("config.json"), mechanism_key) == []
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    path = export(model, str(tmp_path / "serving"), "m", key=mechanism_key)
    assert os.listdir(path) and scan_dir(path, mechanism_key) == {}


def test_scan_finds_the_secret_as_a_json_list_of_ints_in_an_export(key, tmp_path):
    """A mutation review planted exactly this and the byte-pattern scan let it pass.

    Mutations tried: no decimal scan (`KeyScanner._find_numbers` returning nothing); number runs separated by
    ", " only (the indented JSON list, one number a line, is missed); exact float comparison (the float16
    matrix printed with 4 digits is missed)."""
    from tfdisguise.export import export

    model = keras.Sequential([keras.Input((14, 14, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    path = export(model, str(tmp_path / "serving"), "m", key=key)
    assert scan_dir(path, key) == {}  # a clean export: the control
    info_file = os.path.join(path, "assets.extra", "tfdisguise.json")
    with open(info_file) as f:
        info = json.load(f)
    info["calibration"] = list(key.secret_bytes())
    with open(info_file, "w") as f:
        json.dump(info, f, indent=2)
    assert scan_dir(path, key) == {os.path.join("assets.extra", "tfdisguise.json"): ["the secret as decimal numbers"]}

    # Other decimal encodings of the key, each alone in a text file.
    matrix = key.materials[0][3]
    planted = {
        "floats.json": json.dumps([float(b) for b in key.secret_bytes()]),
        "matrix.json": json.dumps({"w": matrix.astype(np.float32).tolist()}),
        "matrix_f16.txt": np.array2string(matrix.T.astype(np.float16), precision=4, threshold=10**6),
    }
    text_dir = tmp_path / "text"
    text_dir.mkdir()
    for name, text in planted.items():
        (text_dir / name).write_text(text)
    found = scan_dir(text_dir, key)
    assert sorted(found) == sorted(planted)
    assert "the secret as decimal numbers" in found["floats.json"]
    assert "step 0 (rmt) material 0[3] as decimal numbers" in found["matrix.json"]
    assert "step 0 (rmt) material 0[3] transposed as decimal numbers" in found["matrix_f16.txt"]


# ---- the owner's client: no disguised image for a model of another key ---------------------------


class _RecordingProxy(grpc.GenericRpcHandler):
    """A loopback gRPC proxy that forwards every unary call to `upstream` and records it, as bytes.

    It sees what the server would see, whatever the client's code does: the test reads the requests that
    left the client, not the client's own account of them.
    """

    def __init__(self, upstream: str):
        self.calls: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(4), handlers=[self])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def service(self, details):
        method = details.method

        def forward(request: bytes, context):
            with self._lock:
                self.calls.append((method, request))
            try:
                return self._channel.unary_unary(method)(request, timeout=10)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())

        return grpc.unary_unary_rpc_method_handler(forward)

    def image_requests(self) -> list:
        """The Predict requests that carried images (any input but the info signature's `dummy`)."""
        with self._lock:
            calls = list(self.calls)
        requests = [predict_pb2.PredictRequest.FromString(raw) for method, raw in calls if method.endswith("/Predict")]
        return [r for r in requests if set(r.inputs) != {"dummy"}]

    def methods(self) -> list[str]:
        with self._lock:
            return [method.rsplit("/", 1)[-1] for method, _ in self.calls]

    def stop(self):
        self._server.stop(0)
        self._channel.close()


def test_a_wrong_key_sends_no_image_to_the_server(tmp_path):
    """A client holding another key learns the model's fingerprint and stops before any image is sent.

    Counted from the outside: every call passes through a recording proxy, and the proxy must see the
    metadata and info calls but no Predict with an image, for `predict`, `predict_disguised` and concurrent
    sends. The right key through the same proxy is the positive control.

    Mutations tried: the client's fingerprint check moved after the send (in `_send`, once the answers are
    back): the KeyMismatchError is still raised, so the error-only test_serving wrong-key test passes, but
    here the proxy sees the images."""
    from tfdisguise import KeyMismatchError
    from tfdisguise.export import export
    from tfdisguise.serving.client import DisguisedClient
    from tfdisguise.serving.registry import ModelRegistry
    from tfdisguise.serving.server import ModelServer

    key = make_key(image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector")
    other = make_key(seed=99, image_shape=(8, 8, 1), block_size=4, rmt="orthogonal", rmt_mode="vector")
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    export(model, str(tmp_path), "m", key=key)
    server = ModelServer(ModelRegistry.from_flags(model_name="m", model_base_path=str(tmp_path / "m")), port=0,
                         host="127.0.0.1").start()
    proxy = _RecordingProxy(f"127.0.0.1:{server.port}")
    target = f"127.0.0.1:{proxy.port}"
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    try:
        sends = {
            "predict": lambda client: client.predict(images),
            "predict_disguised": lambda client: client.predict_disguised(disguise(images, other)),
            "concurrent": lambda client: client.predict(images, concurrency=2),
        }
        for name, send in sends.items():
            with DisguisedClient(target, "m", other, timeout=10, batch_size=2) as client, \
                    pytest.raises(KeyMismatchError, match=f"belongs to key {key.fingerprint}"):
                send(client)
            assert "GetModelMetadata" in proxy.methods(), name  # the proxy saw the client's calls
            assert proxy.image_requests() == [], name
        with DisguisedClient(target, "m", key, timeout=10) as client:
            assert client.predict(images)["probabilities"].shape == (3, 2)
        (request,) = proxy.image_requests()
        assert request.model_spec.signature_name == "serving_default"
        assert tuple(tf.make_ndarray(request.inputs["image"]).shape) == (3, 8, 8, 1)
    finally:
        proxy.stop()
        server.stop(grace=1)
