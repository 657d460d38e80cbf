"""SavedModel export for TF Serving: `saved_models/<name>/<version>/`.

The exported model takes *disguised* images and holds no key material. It
records the public spec and the key fingerprint twice: in
`assets.extra/tfdisguise.json`, and in a `tfdisguise_info` signature that any
TF Serving client can query, so that the owner's client can refuse a model made
for another key.

Signatures:
    serving_default: image float32 [None, H, W, C] (disguised)
                     -> probabilities float32 [None, K], class_id int64 [None]
    tfdisguise_info: dummy int32 [None] -> fingerprint string [], spec string []
"""

from __future__ import annotations

import json
import os
import re
import secrets

import keras
import numpy as np
import tensorflow as tf

from tfdisguise.identity import FILE_NAME as IDENTITY_FILE
from tfdisguise.identity import Identity
from tfdisguise.key import Key
from tfdisguise.layer import Disguise

__all__ = ["export", "export_trained", "read_export_info", "INFO_FILE", "INFO_SIGNATURE", "ExportError"]

INFO_FILE = "tfdisguise.json"
INFO_SIGNATURE = "tfdisguise_info"
WARMUP_FILE = "tf_serving_warmup_requests"


class ExportError(ValueError):
    """A model cannot be exported for serving as asked."""


def _layers(model):
    """Every layer inside `model`, nested models and layers held as attributes included."""
    seen, stack = set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if layer is not model:
            yield layer
        children = list(getattr(layer, "layers", None) or [])
        children += [v for v in vars(layer).values() if isinstance(v, keras.layers.Layer)]
        for v in vars(layer).values():
            if isinstance(v, (list, tuple)):
                children += [item for item in v if isinstance(item, keras.layers.Layer)]
        stack.extend(children)


def _check_name(name) -> None:
    """A model name is one directory under the base: never ".", "..", hidden, or a path."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ExportError(f"`name` must be letters, digits, '_', '-' or '.', and not start with '.' (it names one "
                          f"directory under `base_dir`). Received: name={name!r}")


def _check_inside(model_dir: str, base_dir: str) -> None:
    """Refuses a model directory that resolves outside `base_dir` (a symbolic link there, for one)."""
    if "://" in base_dir:
        return  # remote filesystems have no links; the name check suffices
    base, target = os.path.realpath(base_dir), os.path.realpath(model_dir)
    if os.path.commonpath([base, target]) != base or target == base:
        raise ExportError(f"{model_dir} resolves to {target}, outside `base_dir` {base_dir}; refusing to write there.")


def _next_version(model_dir: str) -> int:
    if not tf.io.gfile.exists(model_dir):
        return 1
    versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(model_dir) if re.fullmatch(r"\d+/?", n)]
    return max(versions, default=0) + 1


def _warmup_record(name: str, shape) -> bytes:
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name="serving_default"))
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(np.zeros((1,) + tuple(shape), np.float32)))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return log.SerializeToString()


def export(
    model: keras.Model,
    base_dir: str,
    name: str,
    *,
    key: Key | None = None,
    identity: Identity | None = None,
    version: int | None = None,
    class_names: list[str] | None = None,
) -> str:
    """Exports `model` to `base_dir/name/version` for TF Serving and returns that path.

    Give the disguise's public identity as `identity` (for example from a shards
    manifest or a run's `disguise.json`, which is what the cloud holds) or as
    `key` (only its identity is read). With no `version`, the next integer is used.
    The export is written to a temporary directory and renamed into place, so
    TF Serving never sees a half-written version.

    Raises ExportError for a model that contains a `Disguise` layer: it would
    carry the key to the cloud.
    """
    _check_name(name)
    if any(isinstance(layer, Disguise) for layer in _layers(model)):
        raise ExportError(
            "This model contains a Disguise layer, which holds the secret key; exporting it would send the key "
            "to the server. Export the classifier that takes disguised images instead."
        )
    if key is not None:
        if identity is not None and identity != key.identity:
            raise ExportError(f"`key` ({key.fingerprint}) and `identity` ({identity.fingerprint}) disagree.")
        identity = key.identity
    if identity is None:
        raise ExportError("Pass `identity` (or `key`) to record which disguise the model expects.")
    spec, fingerprint = identity.spec, identity.fingerprint
    shape = tuple(int(v) for v in model.input_shape[1:])
    if shape != spec.image_shape:
        raise ExportError(f"The model takes images of shape {shape}, but the disguise spec is for {spec.image_shape}.")
    model_dir = os.path.join(base_dir, name)
    _check_inside(model_dir, base_dir)
    version = _next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ExportError(f"`version` must be a positive integer. Received: version={version}")
    final = os.path.join(model_dir, str(version))
    if tf.io.gfile.exists(final):
        raise ExportError(f"{final} already exists; versions are immutable, pick another.")

    info = {
        "format": "tfdisguise.export",
        "version": 1,
        "fingerprint": fingerprint,
        "spec": spec.to_dict(),
        "input": {"name": "image", "dtype": "float32", "shape": [None, *spec.image_shape]},
        "outputs": {"probabilities": "float32", "class_id": "int64"},
        "num_classes": int(model.output_shape[-1]),
        "class_names": list(class_names) if class_names else None,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    info_json = tf.constant(json.dumps(info["spec"], sort_keys=True))
    fp = tf.constant(fingerprint)

    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        probabilities = model(image, training=False)
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=-1)}

    def describe(dummy):
        del dummy  # TF Serving requests need an input; the answer is constant
        return {"fingerprint": fp, "spec": info_json}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec((None,) + shape, tf.float32, name="image")])
    archive.add_endpoint(INFO_SIGNATURE, describe, input_signature=[tf.TensorSpec((None,), tf.int32, name="dummy")])

    tf.io.gfile.makedirs(model_dir)
    tmp = os.path.join(model_dir, f".tmp-{version}-{secrets.token_hex(4)}")
    try:
        archive.write_out(tmp, verbose=False)
        extra = os.path.join(tmp, "assets.extra")
        tf.io.gfile.makedirs(extra)
        with tf.io.gfile.GFile(os.path.join(extra, INFO_FILE), "w") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            writer.write(_warmup_record(name, shape))
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    return final


def read_export_info(version_dir: str) -> dict:
    """The export's info (its `identity` fields plus input/outputs), as recorded."""
    path = os.path.join(version_dir, "assets.extra", INFO_FILE)
    if not tf.io.gfile.exists(path):
        raise ExportError(f"{version_dir} has no assets.extra/{INFO_FILE}: it was not exported by tfdisguise.")
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def export_trained(model_path: str, base_dir: str, name: str, *, version: int | None = None,
                   key_path: str | None = None, manifest: str | None = None) -> str:
    """The `tfdisguise export` job: loads a `.keras` model and exports it.

    The disguise identity is the one the run recorded: the `disguise.json` that
    `tfdisguise train` writes beside the model. A `--key` (`key_path`) or
    `--manifest` given as well must name the same identity, or the export is
    refused: a model served under the wrong fingerprint would answer the owner's
    client with silently wrong predictions. Without a `disguise.json` (a model
    trained elsewhere), the identity comes from `key_path` or `manifest`.
    """
    run_file = os.path.join(os.path.dirname(os.path.abspath(model_path)), IDENTITY_FILE)
    recorded = Identity.load(run_file) if os.path.exists(run_file) else None
    given = []
    if key_path:
        given.append(("--key " + key_path, Key.load(key_path).identity))
    if manifest:
        from tfdisguise.shards import manifest_identity, read_manifest

        directory = os.path.dirname(os.path.abspath(manifest)) if os.path.isfile(manifest) else manifest
        given.append(("--manifest " + manifest, manifest_identity(read_manifest(directory))))
    for what, identity in given:
        if recorded is not None and identity != recorded:
            raise ExportError(
                f"{what} has key {identity.fingerprint} ({identity.spec.describe()}), but the model was trained "
                f"under key {recorded.fingerprint} ({recorded.spec.describe()}) according to {run_file}. Export "
                "with the key or manifest the model was trained with (or leave them out to use the recorded one)."
            )
    if len(given) == 2 and given[0][1] != given[1][1]:
        raise ExportError(f"{given[0][0]} ({given[0][1].fingerprint}) and {given[1][0]} ({given[1][1].fingerprint}) "
                          "name different keys.")
    identity = recorded or (given[0][1] if given else None)
    if identity is None:
        raise ExportError(f"No disguise identity for {model_path}: pass --key or --manifest "
                          f"(looked for {run_file}).")
    model = keras.models.load_model(model_path)
    return export(model, base_dir, name, identity=identity, version=version)
