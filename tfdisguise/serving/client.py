"""The owner's client: disguises images locally, then queries TF Serving (gRPC or REST).

It works unchanged against `tensorflow_model_server` and the embedded server:
input and output names come from the model's metadata, and the model's
disguise fingerprint comes from its `tfdisguise_info` signature.

The server is not trusted (see `transports`). Its answer must hold exactly the
outputs its metadata declares, with that dtype and shape, and one row per image
sent; this is checked before any value is decoded, and an answer larger than
`batch_size` rows of those outputs (with a margin) is refused before it is
read. `timeout` bounds the whole call, decoding included.

Example (against a running server):

    with DisguisedClient("localhost:8500", "mnist", Key.load("owner/key.json")) as client:
        out = client.predict(images)          # uint8 [N, 28, 28, 1]
        out["class_id"], out["probabilities"]
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time

import grpc
import numpy as np
import tensorflow as tf

from tfdisguise.data import batch_disguiser
from tfdisguise.export import INFO_SIGNATURE
from tfdisguise.identity import Identity
from tfdisguise.key import Key, KeyMismatchError
from tfdisguise.mechanisms import small_batch
from tfdisguise.pixels import PixelRangeError, check_pixels
from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES
from tfdisguise.serving.transports import TransportError, transport_for

__all__ = ["DisguisedClient", "ImagesError", "ServingClientError", "check_images", "read_images"]

# Batches up to this size are disguised in numpy (`mechanisms.small_batch`), larger ones by TensorFlow: measured
# crossover on 2 CPU cores, 28x28x1 and 32x32x3, somewhere between 64 and 256 images.
SMALL_BATCH = 64

# What a plaintext channel reports when the server speaks TLS (gRPC: "Socket closed" or a handshake error; REST: the
# server hangs up, or answers with bytes that are not HTTP).
_TLS_SIGNS = ("socket closed", "handshake", "ssl", "tls", "remotedisconnected", "badstatusline",
              "connection reset")


class ServingClientError(RuntimeError):
    """A request failed for good (after retries, or with a non-retryable error); `code` is its gRPC status.

    Besides `KeyMismatchError`, the only error the client raises once it is built.
    """

    def __init__(self, message: str, code=None):
        super().__init__(message)
        self.code = code


class ImagesError(ServingClientError, ValueError):
    """Images the key's spec cannot mean; refused before anything is sent. The message says how to fix them."""

    def __init__(self, message: str):
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)


def check_images(images, image_shape: tuple[int, ...]) -> np.ndarray:
    """`images` as [N, H, W, C] uint8 or float in 0..255, or ImagesError naming the problem and the fix.

    >>> check_images(np.zeros((8, 8, 1), np.uint8), (8, 8, 1)).shape
    (1, 8, 8, 1)
    >>> check_images(np.full((2, 8, 8, 1), 0.5), (8, 8, 1))
    Traceback (most recent call last):
    ...
    tfdisguise.serving.client.ImagesError: `images` at index 0, 1 look scaled to 0..1 ... (images * 255).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[np.newaxis]
    if images.ndim != 4 or images.shape[1:] != tuple(image_shape):
        raise ImagesError(f"`images` must be [N, {', '.join(map(str, image_shape))}] (or one image). "
                          f"Received: shape={images.shape}")
    if len(images) == 0:
        raise ImagesError(f"`images` is empty (shape {images.shape}); pass at least one image.")
    try:
        return check_pixels(images)
    except PixelRangeError as e:  # the client's one error type for bad input, with the same message
        raise ImagesError(str(e)) from None


class DisguisedClient:
    """Disguises with `key`, then calls `model_name` at `target`.

    Args:
        target: "host:port" for gRPC, or "http://host:port" for REST.
        model_name: the served model's name.
        key: the owner's `tfdisguise.Key`; it never leaves this process.
        version: a model version; None means the latest.
        timeout: the deadline of each request to the server, in seconds, retries and decoding the answer
            included, on every transport.
        max_retries: retries of an UNAVAILABLE server, with exponential backoff.
        backoff: the first retry's delay, in seconds; it doubles up to 1 s, with jitter.
        tls: a `tfdisguise.serving.tls.ClientTLS` (CA, client certificate): TLS for gRPC, HTTPS for REST.
        credentials: `grpc.ssl_channel_credentials(...)`, for gRPC only (or use `tls`).
        batch_size: images per request; larger inputs are split.
        max_message_bytes: gRPC message size limit (REST answers: 4x). Once the metadata is read, answers are
            capped lower: `batch_size` rows of the declared outputs, with a margin.

    Once built, it raises only `ServingClientError` (`ImagesError` for images
    it refuses) and `KeyMismatchError`.
    """

    def __init__(self, target: str, model_name: str, key: Key, *, version: int | None = None, timeout: float = 10.0,
                 max_retries: int = 8, backoff: float = 0.05, credentials=None, batch_size: int = 64,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, tls=None):
        if not isinstance(key, Key):
            raise TypeError(f"`key` must be a tfdisguise.Key. Received: key={type(key).__name__}")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
        if not timeout > 0:
            raise ValueError(f"`timeout` must be > 0 seconds. Received: timeout={timeout}")
        self.target, self.model_name, self.key, self.version = target, model_name, key, version
        self.timeout, self.max_retries, self.backoff, self.batch_size = timeout, max_retries, backoff, batch_size
        # The same ops as wrap() in training, as concrete graphs: calling those directly
        # skips tf.function's argument dispatch, about 0.1 ms of a batch-1 query.
        fn = tf.function(batch_disguiser(key))
        self._disguisers = {dtype: fn.get_concrete_function(tf.TensorSpec((None,) + key.spec.image_shape, dtype))
                            for dtype in (tf.uint8, tf.float32)}
        # Small batches skip TensorFlow altogether: the same plan in numpy (mechanisms/small_batch.py) is up to
        # 10x cheaper for one image, which is most of a batch-1 query's overhead.
        self._numpy = small_batch.supports(key.plan)
        self._rng, self._rng_lock = small_batch.new_rng(), threading.Lock()
        self._metadata = None
        self._transport = transport_for(target, model_name, version, credentials=credentials, tls=tls,
                                        max_message_bytes=max_message_bytes)

    def _failure(self, e: TransportError) -> ServingClientError:
        """`e` as the client's error; a refused connection to a plaintext channel hints that TLS may be missing."""
        message = f"{self.model_name} at {self.target}: {e.code.name}: {e.message}"
        if (not self._transport.tls and e.code == grpc.StatusCode.UNAVAILABLE
                and any(sign in e.message.lower() for sign in _TLS_SIGNS)):
            message += (" (the server may require TLS: pass --ca-cert / --tls on the command line, "
                        "or tls=ClientTLS(...) in Python)")
        return ServingClientError(message, e.code)

    def _late(self, started: float) -> ServingClientError | None:
        """The error for an answer that came, or was decoded, after the deadline; None when in time."""
        elapsed = time.monotonic() - started
        if elapsed <= self.timeout:
            return None
        return ServingClientError(f"{self.model_name} at {self.target}: DEADLINE_EXCEEDED: the answer took "
                                  f"{elapsed:.3g} s, decoding included, more than timeout={self.timeout:g} s.",
                                  grpc.StatusCode.DEADLINE_EXCEEDED)

    def _retrying(self, call):
        """`call(timeout)` until it succeeds, fails for good, or the deadline (`self.timeout`) passes.

        The deadline covers the whole call: an answer decoded after it is refused.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        attempt = 0
        while True:
            try:
                result = call(max(deadline - time.monotonic(), 0.001))
            except TransportError as e:
                delay = min(self.backoff * 2**attempt, 1.0) * (0.5 + random.random())
                if not e.retryable or attempt >= self.max_retries or time.monotonic() + delay >= deadline:
                    raise self._failure(e) from None
            except Exception as e:  # a transport's bug must still reach the caller as the client's error
                raise ServingClientError(f"{self.model_name} at {self.target}: {type(e).__name__}: {e}",
                                         grpc.StatusCode.INTERNAL) from e
            else:
                late = self._late(started)
                if late is not None:
                    raise late
                return result
            attempt += 1
            time.sleep(delay)

    def _predict_raw(self, inputs: dict[str, np.ndarray], signature_name="serving_default", expect=None,
                     rows=None) -> dict[str, np.ndarray]:
        return self._retrying(lambda timeout: self._transport.predict(inputs, signature_name, timeout, expect, rows))

    def _expected(self, inputs: dict[str, np.ndarray]) -> tuple[dict, int]:
        """What a prediction on `inputs` must answer: the declared outputs, one row per image."""
        return self._metadata["output_specs"], len(next(iter(inputs.values())))

    def _send(self, batches, concurrency: int) -> dict[str, np.ndarray]:
        """Sends each of `batches` (an iterable of input dicts, made lazily), at most `concurrency` at once,
        and joins their answers in order. A call that fails retryably is retried alone, as `_predict_raw`."""
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"`concurrency` must be an int >= 1. Received: concurrency={concurrency!r}")
        if concurrency == 1:
            parts = [self._predict_raw(inputs, "serving_default", *self._expected(inputs)) for inputs in batches]
        else:
            parts, in_flight = [], collections.deque()
            try:
                for inputs in batches:
                    future = self._transport.predict_future(inputs, "serving_default", self.timeout,
                                                            *self._expected(inputs))
                    in_flight.append((inputs, time.monotonic(), future))
                    if len(in_flight) >= concurrency:
                        parts.append(self._collect(*in_flight.popleft()))
                while in_flight:
                    parts.append(self._collect(*in_flight.popleft()))
            finally:
                for _, _, future in in_flight:  # after an error: the answers still coming are not waited for
                    future.cancel()
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _collect(self, inputs, started: float, future) -> dict[str, np.ndarray]:
        try:
            result = future.result()
        except TransportError as e:
            if e.retryable:
                return self._predict_raw(inputs, "serving_default", *self._expected(inputs))
            raise self._failure(e) from None
        except Exception as e:  # as in `_retrying`
            raise ServingClientError(f"{self.model_name} at {self.target}: {type(e).__name__}: {e}",
                                     grpc.StatusCode.INTERNAL) from e
        late = self._late(started)
        if late is not None:
            raise late
        return result

    # ---- metadata and key check ------------------------------------------------------

    @property
    def metadata(self) -> dict:
        """Input name, output names and the model's disguise fingerprint (checked against the key)."""
        if self._metadata is None:
            signatures = self._retrying(self._transport.signatures)
            if "serving_default" not in signatures:
                raise ServingClientError(f"{self.model_name} at {self.target} has no 'serving_default' signature "
                                         f"(it has {sorted(signatures)}).", grpc.StatusCode.FAILED_PRECONDITION)
            default = signatures["serving_default"]
            inputs = list(default.inputs)
            if len(inputs) != 1:
                raise ServingClientError(f"{self.model_name}: expected one image input, found {inputs}.",
                                         grpc.StatusCode.FAILED_PRECONDITION)
            if INFO_SIGNATURE not in signatures:
                raise KeyMismatchError(f"Model {self.model_name} at {self.target} records no disguise fingerprint "
                                       f"(no '{INFO_SIGNATURE}' signature); refusing to send it disguised data.")
            info = self._predict_raw({"dummy": np.zeros([1], np.int32)}, INFO_SIGNATURE,
                                     signatures[INFO_SIGNATURE].output_specs)
            try:
                fingerprint = _as_text(info["fingerprint"])
                identity = Identity(spec=json.loads(_as_text(info["spec"])), fingerprint=fingerprint)
            except Exception as e:  # whatever the server sent, the caller hears it as the client's error
                raise ServingClientError(f"{self.model_name} at {self.target}: its '{INFO_SIGNATURE}' answer is "
                                         f"malformed ({type(e).__name__}: {e}).", grpc.StatusCode.INTERNAL) from None
            self.key.check_matches(identity, f"Model {self.model_name} at {self.target}")
            # Answers may take no more room than `batch_size` rows of the declared outputs (with a margin).
            self._transport.limit_answers(default.output_specs, self.batch_size)
            self._metadata = {"input": inputs[0], "outputs": list(default.outputs),
                              "input_shape": list(default.inputs[inputs[0]]), "fingerprint": fingerprint,
                              "output_specs": default.output_specs}
        return self._metadata

    # ---- predictions ---------------------------------------------------------------------

    def predict_disguised(self, disguised, *, concurrency: int = 1) -> dict[str, np.ndarray]:
        """Sends already disguised float32 images, in batches (`concurrency` in flight); returns outputs by name."""
        disguised = np.asarray(disguised)
        shape = self.key.spec.image_shape
        if disguised.ndim != 4 or disguised.shape[1:] != shape or not len(disguised):
            raise ImagesError(f"`disguised` must be [N, {', '.join(map(str, shape))}] with N >= 1. "
                              f"Received: shape={disguised.shape}")
        if not np.issubdtype(disguised.dtype, np.floating) or not np.isfinite(disguised).all():
            raise ImagesError(f"`disguised` must be finite floats, as the disguise makes them. "
                              f"Received: dtype={disguised.dtype}")
        disguised = disguised.astype(np.float32, copy=False)
        name = self.metadata["input"]
        return self._send(({name: disguised[i:i + self.batch_size]} for i in range(0, len(disguised), self.batch_size)),
                          concurrency)

    def predict(self, images, *, concurrency: int = 1) -> dict[str, np.ndarray]:
        """Disguises `images` (uint8 or 0..255 float, [N,H,W,C] or one image) and returns the model's outputs.

        Batches of `batch_size` are sent with up to `concurrency` in flight
        (gRPC futures; pooled connections for REST), each disguised just before
        it is sent. Images the key's spec cannot mean (another shape or dtype,
        NaN, values outside 0..255, 0..1-scaled floats, none at all) raise
        `ImagesError` before anything is sent.
        """
        images = check_images(images, self.key.spec.image_shape)
        name = self.metadata["input"]  # checks the key before any data leaves
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        return self._send(({name: self._disguise(images[i:i + self.batch_size])}
                           for i in range(0, len(images), self.batch_size)), concurrency)

    def _disguise(self, images: np.ndarray) -> np.ndarray:
        if self._numpy and len(images) <= SMALL_BATCH:
            with self._rng_lock:  # a numpy Generator is not thread-safe
                return small_batch.apply_numpy(images, self.key.plan, self._rng)
        return self._disguisers[tf.uint8 if images.dtype == np.uint8 else tf.float32](images).numpy()

    def close(self) -> None:
        self._transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_text(value) -> str:
    value = np.asarray(value).reshape(-1)[0] if np.asarray(value).ndim else np.asarray(value).item()
    return value.decode() if isinstance(value, bytes) else str(value)


def read_images(paths, image_shape) -> tuple[list[str], np.ndarray]:
    """Images for `tfdisguise predict`: image files, .npy arrays, or .npz files with `x`.

    The files are untrusted input, read by `tfdisguise.datasets.read_images`: regular files only (a FIFO
    would hang this), headers and image sizes checked before anything is allocated or decoded.
    """
    from tfdisguise.datasets import read_images as read_checked

    return read_checked(paths, image_shape)
