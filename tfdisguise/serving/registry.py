"""Loads SavedModel versions from `<base_path>/<version>/`, as TF Serving does, and runs them.

Errors carry TF Serving's status codes: NOT_FOUND for an unknown model or
version, INVALID_ARGUMENT for inputs that do not fit the signature.

Versions come and go while serving (`poll()`, run every
--file_system_poll_wait_seconds by `start_polling`): a new version is loaded
and warmed up (assets.extra/tf_serving_warmup_requests) before it serves; a
version that fails to load is skipped, logged, and reported by `status()`,
and the versions already serving go on; an old version leaves the map at
once, and is released only after the requests that hold it (`hold()`) are
done. `reload(config)` adds and removes models live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfdisguise.serving.savedmodel import fed_shape, load_model

__all__ = ["ServingError", "Servable", "ModelRegistry", "VersionStatus", "parse_model_config"]

log = logging.getLogger("tfdisguise.serve")


class ServingError(Exception):
    """An error with a gRPC status code, reported to the client as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _check_unique_names(config: model_server_config_pb2.ModelServerConfig, source: str) -> None:
    """Refuses a model_config_list that names one model twice: which one serves would be an accident."""
    seen = set()
    for mc in config.model_config_list.config:
        if not mc.name:
            raise ValueError(f"{source}: a model config has no name (base_path: {mc.base_path!r}).")
        if mc.name in seen:
            raise ValueError(f"{source}: model name {mc.name!r} appears more than once; each model needs its "
                             f"own name.")
        seen.add(mc.name)


def parse_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Reads a `models.config` text proto (TF Serving's --model_config_file)."""
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        # TF Serving's words, which scripts and its own tests look for.
        raise ValueError(f"--model_config_file: Error parsing text-format tensorflow.serving.ModelServerConfig "
                         f"from {path}: {e}") from None


_NP_TO_TF = {np.dtype(np.float32): tf.float32, np.dtype(np.float64): tf.float64, np.dtype(np.int32): tf.int32,
             np.dtype(np.int64): tf.int64, np.dtype(np.uint8): tf.uint8, np.dtype(object): tf.string}


def spec_version(model_spec) -> tuple[int | None, str | None]:
    """(version, label) that a request's `ModelSpec` asks for: `hold`'s and `get`'s arguments after the name."""
    which = model_spec.WhichOneof("version_choice")
    if which == "version":
        return model_spec.version.value, None
    if which == "version_label":
        return None, model_spec.version_label
    return None, None


@dataclasses.dataclass
class Servable:
    """One loaded version of one model."""

    name: str
    version: int
    path: str
    loaded: object
    signature_defs: dict  # name -> tensorflow.SignatureDef proto, as saved
    in_flight: int = 0  # requests holding it (`ModelRegistry.hold`); it is released only at 0

    def signature(self, signature_name: str):
        name = signature_name or "serving_default"
        if name not in self.loaded.signatures:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Serving signature name: \"{name}\" not found in signature def")
        return name, self.loaded.signatures[name]

    def input_specs(self, signature_name: str) -> tuple[str, dict[str, tf.TensorSpec]]:
        """The signature's name and its inputs' `TensorSpec`s by name: what a request is checked against."""
        name, fn = self.signature(signature_name)
        return name, fn.structured_input_signature[1]

    def run(self, signature_name: str, inputs: dict, output_filter=()) -> dict[str, np.ndarray]:
        """Checks `inputs` against the signature and runs it."""
        name, spec = self.input_specs(signature_name)
        fn = self.loaded.signatures[name]
        if set(inputs) != set(spec):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Signature \"{name}\" expects inputs {sorted(spec)}; got {sorted(inputs)}")
        feed, added = {}, 0
        for key, value in inputs.items():
            expected = spec[key]
            value = np.asarray(value)
            got = _NP_TO_TF.get(value.dtype)
            if got != expected.dtype:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Expects input '{key}' to be {expected.dtype.name} but {value.dtype} is provided")
            shape = fed_shape(value.shape, expected.shape)
            if shape is None:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Input '{key}' has shape {list(value.shape)}, but the signature expects "
                                   f"{expected.shape.as_list()}")
            added = added or len(shape) - value.ndim  # trailing 1s fed beyond (or short of) the request's rank
            feed[key] = value.reshape(shape)
        unknown = set(output_filter) - set(getattr(fn, "output_specs", ()))
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {sorted(unknown)}")
        try:
            outputs = fn(output_filter=tuple(output_filter), **feed)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e).split("\n")[0]) from None
        outputs = {k: np.asarray(v, dtype=object if np.asarray(v).dtype.kind in "OSU" else None)
                   for k, v in outputs.items()}
        if added > 0:  # the answer has the request's rank, as TF Serving's has for an elementwise model
            outputs = {k: v.reshape(v.shape[:-added]) if v.ndim > added and v.shape[-added:] == (1,) * added else v
                       for k, v in outputs.items()}
        elif added < 0:
            outputs = {k: v.reshape(v.shape + (1,) * -added) for k, v in outputs.items()}
        return outputs


_INT64_MAX = (1 << 63) - 1


def _versions(base_path: str) -> dict[int, str]:
    """The version directories under `base_path`: version number -> directory name, as named on disk.

    A zero-padded name (`00000123`) is version 123, served from that directory, as TF Serving does. A number
    above int64 cannot be a version (TF Serving's version field is an int64): it is skipped with a log line,
    rather than served as the latest. Of two names for one number (`7` and `007`), the shorter serves.
    """
    if not tf.io.gfile.isdir(base_path):
        raise ValueError(f"Model base path {base_path} does not exist or is not a directory.")
    found: dict[int, str] = {}
    for entry in tf.io.gfile.listdir(base_path):
        name = entry.rstrip("/")
        if not re.fullmatch(r"\d+", name):
            continue
        version = int(name)
        if version > _INT64_MAX:
            _log_once(base_path, name, "version directory %s under %s is not a version: %s is above int64's "
                                       "maximum; ignored", name, base_path, name)
            continue
        if version in found and found[version] != name:
            kept = min(found[version], name, key=lambda n: (len(n), n))
            _log_once(base_path, f"{version}:{kept}", "version %d under %s has two directories (%s, %s); "
                                                      "serving %s", version, base_path, found[version], name, kept)
            name = kept
        found[version] = name
    return dict(sorted(found.items()))


_LOGGED: set = set()  # what `_log_once` has said: a poll every second must not repeat it every second


def _log_once(base_path: str, what: str, message: str, *args) -> None:
    if (base_path, what) not in _LOGGED:
        _LOGGED.add((base_path, what))
        log.warning(message, *args)


def _fingerprint(path: str) -> tuple:
    """What a version directory holds (names, sizes, times): a failed version is retried once this changes."""
    seen = []
    try:
        for folder, _, files in tf.io.gfile.walk(path):
            for name in files:
                full = os.path.join(folder, name)
                with contextlib.suppress(tf.errors.OpError):
                    stat = tf.io.gfile.stat(full)
                    seen.append((os.path.relpath(full, path), stat.length, stat.mtime_nsec))
    except tf.errors.OpError:
        return ()
    return tuple(sorted(seen))


def _chosen(mc, versions: list[int]) -> list[int]:
    """The versions that `mc`'s model_version_policy asks for, among `versions` (those that can load)."""
    policy = mc.model_version_policy.WhichOneof("policy_choice")
    if policy == "all":
        return list(versions)
    if policy == "specific":
        wanted = set(mc.model_version_policy.specific.versions)
        return [v for v in versions if v in wanted]
    n = mc.model_version_policy.latest.num_versions if policy == "latest" else 1  # TF Serving's default: latest 1
    return versions[-max(1, n):] if versions else []


# What one warm-up record may decode to, and how many records are replayed (TF Serving's own cap is 1000).
WARMUP_MAX_BYTES = 64 << 20
WARMUP_MAX_RECORDS = 1000


def _warm_up(servable: Servable) -> int:
    """Replays the version's assets.extra/tf_serving_warmup_requests (Predict logs), as TF Serving does.

    Each record passes the checks of a request (inputs named by the signature, dtype, value count, decoded size
    at most `WARMUP_MAX_BYTES`) before anything is decoded: the file comes with the model, from whoever wrote
    the directory, and a 73-byte record could otherwise declare gigabytes. A record that fails them fails the load.
    """
    from tfdisguise.serving.limits import check_tensor_proto

    path = os.path.join(servable.path, "assets.extra", "tf_serving_warmup_requests")
    if not tf.io.gfile.exists(path):
        return 0
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for number, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        if number >= WARMUP_MAX_RECORDS:
            log.warning("%s: only the first %d warm-up records are replayed", path, WARMUP_MAX_RECORDS)
            break
        entry = prediction_log_pb2.PredictionLog.FromString(record)
        if entry.WhichOneof("log_type") != "predict_log":
            continue
        request = entry.predict_log.request
        signature, specs = servable.input_specs(request.model_spec.signature_name)
        if set(request.inputs) != set(specs):
            raise ValueError(f"{path}, record {number}: signature \"{signature}\" expects inputs {sorted(specs)}; "
                             f"got {sorted(request.inputs)}")
        left = WARMUP_MAX_BYTES
        for key, proto in request.inputs.items():
            try:
                left -= check_tensor_proto(key, proto, left, specs[key])
            except ValueError as e:
                raise ValueError(f"{path}, record {number}: {e}") from None
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        servable.run(request.model_spec.signature_name, inputs)
        count += 1
    return count


def load_servable(name: str, version: int, path: str) -> Servable:
    """Loads one version and warms it up; any failure raises."""
    model = load_model(path)  # a session over the SavedModel, or model.tflite with --prefer_tflite_model
    servable = Servable(name, version, path, model, model.signature_defs)
    _warm_up(servable)
    return servable


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """A version's state, in TF Serving's words (ModelVersionStatus.State), and the error that ended it, if any."""

    state: str  # "LOADING", "AVAILABLE", "UNLOADING" or "END"
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class ModelRegistry:
    """The models a server serves, with their loaded versions.

    Raises ValueError at construction for a model with no version that loads.
    """

    # How long an unloaded version waits for the requests that still hold it before it is released anyway.
    UNLOAD_GRACE = 60.0

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, *, config_path: str | None = None):
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()  # one poll or reload at a time
        self._models: dict[str, dict[int, Servable]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._configs: dict[str, object] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        # Versions that failed to load: (message, fingerprint); retried when the directory changes.
        self._failed: dict[str, dict[int, tuple[str, tuple]]] = {}
        self._config_path, self._config_text = config_path, None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        from tfdisguise.serving.metrics import Metrics

        self.metrics = Metrics()  # what the APIs answered and what loaded; served with --monitoring_config_file
        self.batcher = None  # a `batching.Batcher` merges concurrent requests (--enable_batching)
        self.listeners = [self.metrics.version_state]  # callables (model, version, VersionStatus)
        _check_unique_names(config, config_path or "the model config")
        for mc in config.model_config_list.config:
            self._configs[mc.name] = mc
            self._poll_model(mc, initial=True)

    @classmethod
    def from_flags(cls, model_name=None, model_base_path=None, model_config_file=None) -> ModelRegistry:
        if model_config_file:
            registry = cls(parse_model_config(model_config_file), config_path=model_config_file)
            with tf.io.gfile.GFile(model_config_file) as f:
                registry._config_text = f.read()
            return registry
        if not model_base_path:
            raise ValueError("Give --model_config_file, or --model_base_path (with --model_name).")
        config = model_server_config_pb2.ModelServerConfig()
        mc = config.model_config_list.config.add()
        mc.name = model_name or "default"
        mc.base_path = model_base_path
        return cls(config)

    # ---- loading and unloading -----------------------------------------------------------

    def _set_status(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._status.setdefault(name, {})[version] = status
        for listener in self.listeners:
            listener(name, version, status)

    def _poll_model(self, mc, initial: bool = False) -> None:
        """Brings `mc`'s served versions in line with its policy and what is on disk."""
        try:
            on_disk = _versions(mc.base_path)
        except ValueError:
            if initial:
                raise
            log.warning("model %s: base path %s is gone; its versions keep serving", mc.name, mc.base_path)
            return
        failed = self._failed.setdefault(mc.name, {})
        for v in list(failed):
            # Retried once its directory changes (a version half-written when polled, completed since).
            if v not in on_disk or _fingerprint(os.path.join(mc.base_path, on_disk[v])) != failed[v][1]:
                del failed[v]
        loaded = dict(self._models.get(mc.name, {}))
        while True:
            chosen = _chosen(mc, [v for v in on_disk if v not in failed])
            missing = [v for v in chosen if v not in loaded]
            if not missing:
                break
            for v in missing:
                path = os.path.join(mc.base_path, on_disk[v])
                before = _fingerprint(path)
                self._set_status(mc.name, v, VersionStatus("LOADING"))
                try:
                    servable = load_servable(mc.name, v, path)
                except Exception as e:  # a corrupt or half-written version must not stop the others
                    message = f"Failed to load {mc.name} version {v} from {path}: {type(e).__name__}: " \
                              f"{str(e).splitlines()[0] if str(e) else ''}"
                    log.error("%s; serving versions %s meanwhile", message, sorted(loaded))
                    failed[v] = (message, before)
                    self._set_status(mc.name, v, VersionStatus("END", grpc.StatusCode.UNKNOWN, message))
                    continue
                loaded[v] = servable
                with self._lock:  # serves from here on, before any old version leaves
                    self._models.setdefault(mc.name, {})[v] = servable
                    self._labels[mc.name] = dict(mc.version_labels)
                self._set_status(mc.name, v, VersionStatus("AVAILABLE"))
                log.info("model %s: version %d is AVAILABLE", mc.name, v)
        if not chosen:
            if initial:
                raise ValueError(f"Model {mc.name!r}: no servable versions under {mc.base_path}"
                                 + (f" ({'; '.join(m for m, _ in failed.values())})" if failed else "") + ".")
            return  # keep what serves rather than serve nothing
        with self._lock:
            self._labels[mc.name] = dict(mc.version_labels)
        for v in sorted(set(loaded) - set(chosen)):
            self._unload(mc.name, v)

    def _unload(self, name: str, version: int) -> None:
        with self._lock:
            servable = self._models.get(name, {}).pop(version, None)
            if name in self._models and not self._models[name]:
                del self._models[name]
        if servable is None:
            return
        self._set_status(name, version, VersionStatus("UNLOADING"))
        deadline = time.monotonic() + self.UNLOAD_GRACE
        while servable.in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        if servable.in_flight:
            log.warning("model %s version %d: %d requests still running after %.0f s; released anyway",
                        name, version, servable.in_flight, self.UNLOAD_GRACE)
        if self.batcher is not None:
            self.batcher.forget(servable)
        self._set_status(name, version, VersionStatus("END"))
        log.info("model %s: version %d unloaded", name, version)

    def poll(self) -> None:
        """Loads new versions and unloads old ones, for every model (what each poll of the file system does)."""
        with self._poll_lock:
            for mc in list(self._configs.values()):
                try:
                    self._poll_model(mc)
                except Exception:  # one model's trouble must not stop the others' polling
                    log.exception("model %s: polling failed", mc.name)

    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serves the models of `config`: new ones are loaded, removed ones unloaded, changed ones re-polled.

        Raises ValueError for a config that is not a model_config_list (nothing changes), or for a new model
        with no version that loads (the models before it in `config` are applied; those already serving stay).
        """
        if config.WhichOneof("config") != "model_config_list":
            raise ValueError("Only a model_config_list can be served; got "
                             f"{config.WhichOneof('config') or 'an empty config'}.")
        _check_unique_names(config, "the reloaded model config")
        wanted = {mc.name: mc for mc in config.model_config_list.config}
        with self._poll_lock:
            for name, mc in wanted.items():
                if self._configs.get(name) != mc:
                    if self._configs.get(name) is None or self._configs[name].base_path != mc.base_path:
                        self._failed.pop(name, None)
                    self._poll_model(mc, initial=name not in self._models)
                self._configs[name] = mc
            for name in sorted(set(self._configs) - set(wanted)):
                del self._configs[name]
                for v in sorted(self._models.get(name, {})):
                    self._unload(name, v)
                with self._lock:
                    self._labels.pop(name, None)
                self._failed.pop(name, None)
                log.info("model %s removed", name)

    def reload_config_file(self) -> bool:
        """Re-reads the --model_config_file, and reloads if it changed since it was last read; True if it did.

        (A `reload()` in between, from HandleReloadConfigRequest, stands until the file changes.)
        """
        if not self._config_path:
            return False
        with tf.io.gfile.GFile(self._config_path) as f:
            text = f.read()
        if text == self._config_text:
            return False
        self.reload(parse_model_config(self._config_path))
        self._config_text = text
        return True

    def _every(self, seconds: float, what, name: str) -> None:
        def loop():
            while not self._stop.wait(seconds):
                try:
                    what()
                except Exception:  # logged; the next round tries again
                    log.exception("%s failed", name)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def start_polling(self, file_system_poll_wait_seconds: float = 1.0,
                      model_config_file_poll_wait_seconds: float = 0.0) -> ModelRegistry:
        """Polls the versions every `file_system_poll_wait_seconds` and the config file every
        `model_config_file_poll_wait_seconds`, in background threads; 0 leaves either as loaded."""
        if file_system_poll_wait_seconds > 0:
            self._every(file_system_poll_wait_seconds, self.poll, "version-poll")
        if model_config_file_poll_wait_seconds > 0 and self._config_path:
            self._every(model_config_file_poll_wait_seconds, self.reload_config_file, "config-poll")
        return self

    def stop_polling(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        self._stop = threading.Event()

    # ---- look-ups --------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return sorted(self._models)

    def is_configured(self, name) -> bool:
        """Whether `name` is one of the configured models (only those may become metric labels or cached keys)."""
        with self._lock:
            return isinstance(name, str) and name in self._configs

    def versions(self, name: str) -> list[int]:
        return sorted(self._lookup(name))

    def status(self, name: str) -> dict[int, VersionStatus]:
        """Every version's state that this server has seen for `name` (failed loads included)."""
        with self._lock:
            if name not in self._status or (name not in self._configs and name not in self._models):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
            return dict(self._status[name])

    def _lookup(self, name: str) -> dict[int, Servable]:
        servables = self._models.get(name)
        if not servables:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        return servables

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        with self._lock:
            servables = self._lookup(name)
            if label:
                if label not in self._labels.get(name, {}):
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {label}")
                version = self._labels[name][label]
            if version is None:
                return servables[max(servables)]
            if version not in servables:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Specific({name}, {version})")
            return servables[version]

    @contextlib.contextmanager
    def hold(self, name: str, version: int | None = None, label: str | None = None):
        """Yields the servable that `get` picks, kept loaded until the block ends (a request in flight)."""
        with self._lock:
            servable = self.get(name, version, label)
            servable.in_flight += 1
        try:
            yield servable
        finally:
            with self._lock:
                servable.in_flight -= 1
