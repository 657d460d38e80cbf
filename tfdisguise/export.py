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

import functools
import inspect
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
from tfdisguise.leaks import scan_directory
from tfdisguise.mechanisms import Plan

__all__ = ["export", "export_trained", "read_export_info", "INFO_FILE", "INFO_SIGNATURE", "ExportError"]

INFO_FILE = "tfdisguise.json"
INFO_SIGNATURE = "tfdisguise_info"
WARMUP_FILE = "tf_serving_warmup_requests"


class ExportError(ValueError):
    """A model cannot be exported for serving as asked."""


# Functions and objects from these packages are library code: what they capture is not the model's, and
# their object graphs are large.
_LIBRARY_MODULES = ("keras", "tensorflow", "tf_keras", "numpy", "jax", "torch", "builtins")


def _children(obj, where: str):
    """(child, where) for everything `obj` holds that could lead to a layer or a key.

    Layers (nested models, attributes, lists of layers) and, beyond the layer
    tree, what functions capture: a `Lambda`'s function, a bound method, a
    `functools.partial`, a `tf.function`, through their closures, defaults and
    the globals they name, and the attributes of objects from the user's own
    code. A `Disguise` layer called inside a `Lambda` is reached this way.
    """
    if isinstance(obj, keras.layers.Layer):
        where = f"layer {obj.name!r} ({type(obj).__name__})"
        items = [(child, where) for child in list(getattr(obj, "layers", None) or [])]
        items += [(v, f"{where}.{k}") for k, v in vars(obj).items()]
        return items
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(item, where) for item in obj]
    if isinstance(obj, dict):
        return [(item, where) for item in obj.values()]
    if isinstance(obj, functools.partial):
        return [(item, where) for item in (obj.func, *obj.args, *obj.keywords.values())]
    if inspect.ismethod(obj):
        return [(obj.__func__, where), (obj.__self__, where)]
    if inspect.isfunction(obj):
        if str(obj.__globals__.get("__name__", "")).split(".")[0] in _LIBRARY_MODULES:
            return []
        name = f"{where} (function {obj.__qualname__})"
        items = [(cell.cell_contents, name) for cell in obj.__closure__ or () if _filled(cell)]
        defaults = [*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()]
        items += [(v, name) for v in defaults]
        items += [(obj.__globals__[n], name) for n in _global_names(obj.__code__) if n in obj.__globals__]
        return items
    if isinstance(obj, tf.types.experimental.PolymorphicFunction):
        return [(obj.python_function, where)]
    if str(type(obj).__module__).split(".")[0] not in _LIBRARY_MODULES and hasattr(obj, "__dict__"):
        return [(v, f"{where}.{k}") for k, v in vars(obj).items()]
    return []


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _global_names(code) -> set[str]:
    """The global names `code` and the functions defined in it (a lambda inside a def) refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _global_names(const)
    return names


def _key_holders(model):
    """(object, where) for every `Disguise` layer, `Key` and `Plan` that `model` reaches (see `_children`)."""
    seen, stack = set(), [(model, "the model")]
    while stack:
        obj, where = stack.pop()
        if id(obj) in seen or inspect.ismodule(obj) or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if isinstance(obj, (Disguise, Key, Plan)):
            yield obj, where
        stack.extend(_children(obj, where))


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

    Raises ExportError for a model that reaches a `Disguise` layer or a `Key`
    (nested, or captured by a `Lambda`'s function): it would carry the key to the
    cloud. With `key`, the written files are also scanned for the key's material
    (`tfdisguise.leaks`), which catches what no layer check can (the secret or
    the matrices as a constant or a weight); a leaking export is deleted before
    it is renamed into place, and ExportError says which file held what.
    """
    _check_name(name)
    for holder, where in _key_holders(model):
        what, holds = ("a disguise Plan", "the key's derived material") if isinstance(holder, Plan) else (
            "a Disguise layer" if isinstance(holder, Disguise) else "a tfdisguise Key", "the secret key")
        raise ExportError(
            f"This model contains {what} ({where}), which holds {holds}; exporting it would send the key "
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

    created = not tf.io.gfile.exists(model_dir)
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
        if key is not None:
            _refuse_key_material(tmp, key)
        tf.io.gfile.rename(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        if created and tf.io.gfile.exists(model_dir) and not tf.io.gfile.listdir(model_dir):
            tf.io.gfile.rmtree(model_dir)
        raise
    return final


def _refuse_key_material(export_dir: str, key: Key) -> None:
    """Raises ExportError if any file under `export_dir` holds `key`'s material."""
    found = scan_directory(export_dir, key)
    if found:
        files = "; ".join(f"{path}: {', '.join(what[:3])}{' ...' if len(what) > 3 else ''}"
                          for path, what in sorted(found.items()))
        raise ExportError(
            f"The exported model holds key material ({files}); nothing was written. A layer, Lambda, constant or "
            "weight of this model carries the secret or its derived matrices/permutations. Export the classifier "
            "that takes disguised images, built without the key."
        )


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
    With `key_path`, the written files are scanned for the key's material as
    well (see `export`).
    """
    run_file = os.path.join(os.path.dirname(os.path.abspath(model_path)), IDENTITY_FILE)
    recorded = Identity.load(run_file) if os.path.exists(run_file) else None
    given, key = [], None
    if key_path:
        key = Key.load(key_path)
        given.append(("--key " + key_path, key.identity))
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
    # With the owner's key at hand, the written files are scanned for its material too.
    return export(model, base_dir, name, key=key, identity=identity, version=version)
