"""The embedded server's lifecycle: TF Serving's gRPC and REST APIs over one registry.

It serves the same `saved_models/<name>/<version>/` layout as
`tensorflow_model_server`, so clients and scripts move between the two
unchanged (`tfdisguise serve` runs the real binary when it is on PATH). The
APIs are in `grpc_api` and `rest_api`; this module starts them, stops them
gracefully, and runs until SIGTERM.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from tfdisguise.serving import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT,
    grpc_api,
)
from tfdisguise.serving.grpc_options import parse_channel_arguments
from tfdisguise.serving.grpc_server import DEFAULT_GRPC_MAX_CONCURRENT_RPCS, DEFAULT_GRPC_READ_TIMEOUT, GrpcServer
from tfdisguise.serving.limits import (
    DEFAULT_REST_MAX_BODY_BYTES,
    DEFAULT_REST_MAX_CONNECTIONS,
    DEFAULT_REST_READ_TIMEOUT,
    InflightBudget,
)
from tfdisguise.serving.registry import ModelRegistry
from tfdisguise.serving.rest_server import address_in_use
from tfdisguise.serving.tls import SSLConfig, read_ssl_config

__all__ = ["ModelServer", "serve", "set_tensorflow_threads"]

log = logging.getLogger("tfdisguise.serve")


class ModelServer:
    """gRPC (and optionally REST) front ends over one `ModelRegistry`.

    `port=0` picks a free port; `rest_api_port=None` disables REST and 0 picks
    a free port. After `start()`, `port` and `rest_api_port` hold the bound ports.
    Both bind to `host` (default 0.0.0.0, every interface, as TF Serving does),
    and only if no other process listens there: a port in use fails `start()`.

    `ssl` (from `tls.read_ssl_config`) serves gRPC over TLS and REST over HTTPS,
    with the same certificates and client verification; if REST cannot serve
    it, `start()` fails rather than serve plain HTTP.

    Bounds: a request's inputs may decode to at most `max_message_bytes` (also
    the gRPC message limit), whatever shape they declare. A REST body may hold
    at most `rest_max_body_bytes`, must arrive within `rest_read_timeout`
    seconds (its headers, then its body; its TLS handshake within
    `rest_tls_handshake_timeout`), and at most `rest_max_connections` (at most
    `rest_max_connections_per_client` from one source address)
    connections are open at once; `rest_api_num_threads` threads run REST
    requests (default `max_workers`), each predict within `rest_api_timeout_in_ms`.
    The requests being served hold at most `max_inflight_bytes` of decoded
    inputs together, gRPC and REST alike; past it a request is answered
    RESOURCE_EXHAUSTED (REST 429) before its values are decoded. A gRPC call
    must send its request within `grpc_read_timeout` seconds (else
    DEADLINE_EXCEEDED), waiting on an event loop rather than in one of the
    `max_workers` threads, and at most `grpc_max_concurrent_rpcs` calls are
    open at once (more get RESOURCE_EXHAUSTED): see `grpc_server`.

    TF Serving's features: `file_system_poll_wait_seconds` > 0 polls for new
    and removed versions, `model_config_file_poll_wait_seconds` > 0 re-reads
    the registry's --model_config_file; `batching` (`BatchingParameters`)
    merges concurrent requests; `metrics_path` serves Prometheus metrics on
    the REST port. ModelService's HandleReloadConfigRequest is refused
    (PERMISSION_DENIED) unless `allow_config_reload_rpc`: it is not
    authenticated, and it can unload every model or serve any directory.
    """

    def __init__(self, registry: ModelRegistry, *, port: int = 8500, rest_api_port: int | None = None,
                 host: str = "0.0.0.0", max_workers: int = 16, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ssl: SSLConfig | None = None, rest_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES,
                 rest_read_timeout: float = DEFAULT_REST_READ_TIMEOUT,
                 rest_max_connections: int = DEFAULT_REST_MAX_CONNECTIONS, rest_api_num_threads: int | None = None,
                 rest_api_timeout_in_ms: int | None = None, file_system_poll_wait_seconds: float = 0.0,
                 model_config_file_poll_wait_seconds: float = 0.0, batching=None, metrics_path: str | None = None,
                 allow_config_reload_rpc: bool = False, grpc_socket_path: str | None = None,
                 grpc_channel_arguments: str | None = None, max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
                 grpc_read_timeout: float = DEFAULT_GRPC_READ_TIMEOUT,
                 grpc_max_concurrent_rpcs: int = DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
                 rest_max_connections_per_client: int = DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT,
                 rest_tls_handshake_timeout: float = DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT):
        if ssl is not None and not isinstance(ssl, SSLConfig):
            raise TypeError(f"`ssl` must be a tfdisguise.serving.tls.SSLConfig or None. "
                            f"Received: ssl={type(ssl).__name__}")
        for name, value in (("port", port), ("rest_api_port", rest_api_port)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535):
                raise ValueError(f"`{name}` must be a port number from 0 to 65535 (0 picks a free one). "
                                 f"Received: {name}={value!r}")
        for name, value in (("max_message_bytes", max_message_bytes), ("max_workers", max_workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        if rest_api_port and rest_api_port == port:
            raise ValueError(f"`rest_api_port` must differ from `port`. Received: port={port}, "
                             f"rest_api_port={rest_api_port}")
        self.registry = registry
        self.host, self.port, self.rest_api_port = host, port, rest_api_port
        self.enable_rest = rest_api_port is not None
        self.max_workers, self.max_message_bytes, self.ssl = max_workers, max_message_bytes, ssl
        self.rest_limits = {"max_body_bytes": rest_max_body_bytes, "read_timeout": rest_read_timeout,
                            "max_connections": rest_max_connections,
                            "max_connections_per_client": rest_max_connections_per_client,
                            "handshake_timeout": rest_tls_handshake_timeout}
        self.rest_api_num_threads = rest_api_num_threads or max_workers
        self.rest_api_timeout_in_ms, self.metrics_path = rest_api_timeout_in_ms, metrics_path
        self.polling = (file_system_poll_wait_seconds, model_config_file_poll_wait_seconds)
        self.allow_config_reload_rpc = bool(allow_config_reload_rpc)
        registry.inflight = InflightBudget(max_inflight_bytes)  # shared by gRPC and REST
        self.grpc_read_timeout, self.grpc_max_concurrent_rpcs = grpc_read_timeout, grpc_max_concurrent_rpcs
        # TF Serving's --grpc_socket_path (gRPC also on a Unix domain socket) and --grpc_channel_arguments.
        self.grpc_socket_path = grpc_socket_path or None
        self.channel_arguments = parse_channel_arguments(grpc_channel_arguments)
        if batching is not None:
            from tfdisguise.serving.batching import Batcher

            registry.batcher = Batcher(batching, registry.metrics.batch)
        self._grpc = None
        self._http = None

    def _bind_grpc(self) -> GrpcServer:
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes),
                   # Exclusive: with SO_REUSEPORT a second server on this port would take a share of the connections.
                   ("grpc.so_reuseport", 0)] + self.channel_arguments
        server = GrpcServer(max_workers=self.max_workers, options=options, read_timeout=self.grpc_read_timeout,
                            max_concurrent_rpcs=self.grpc_max_concurrent_rpcs)
        grpc_api.add_servicers(server, self.registry, self.max_message_bytes, self.allow_config_reload_rpc)
        address = _address(self.host, self.port)
        try:
            port = (server.add_secure_port(address, self.ssl.credentials()) if self.ssl
                    else server.add_insecure_port(address))
        except RuntimeError:  # grpcio reports a failed bind without the reason
            port = 0
        if not port:
            raise address_in_use(self.host, self.port, "gRPC")
        self.port = port
        if self.grpc_socket_path:
            socket_address = f"unix:{self.grpc_socket_path}"
            try:
                bound = (server.add_secure_port(socket_address, self.ssl.credentials()) if self.ssl
                         else server.add_insecure_port(socket_address))
            except RuntimeError:
                bound = 0
            if not bound:
                raise OSError(f"--grpc_socket_path: cannot serve gRPC on the Unix socket {self.grpc_socket_path} "
                              f"(its directory must exist and be writable).")
        return server

    def _rest_server(self):
        from tfdisguise.serving.rest_api import make_rest_app
        from tfdisguise.serving.rest_server import RestServer

        context = self.ssl.ssl_context() if self.ssl else None
        app = make_rest_app(self.registry, max_request_bytes=self.max_message_bytes,
                            max_body_bytes=self.rest_limits["max_body_bytes"], metrics_path=self.metrics_path,
                            timeout_in_ms=self.rest_api_timeout_in_ms)
        return RestServer(app, self.host, self.rest_api_port, ssl_context=context,
                          max_workers=self.rest_api_num_threads, **self.rest_limits)

    def start(self) -> ModelServer:
        """Binds both ports, then serves; raises OSError, and serves nothing, if either port is taken."""
        rest = self._rest_server().bind() if self.enable_rest else None  # a bad SSL config fails before any bind
        try:
            # After REST: a gRPC server that never started keeps its port, so it must be the last to bind.
            server = self._bind_grpc()
        except BaseException:
            if rest is not None:
                rest.unbind()
            raise
        server.start()
        self._grpc = server
        if rest is not None:
            try:
                self._http = rest.start()
            except BaseException:
                self.stop(grace=0)
                raise
            self.rest_api_port = rest.port
        self.registry.start_polling(*self.polling)
        log.info("serving %s on %s: gRPC port %d%s%s", self.registry.names, self.host, self.port,
                 f", REST port {self.rest_api_port}" if self._http else "", " (TLS)" if self.ssl else "")
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stops taking new requests and lets in-flight ones finish for up to `grace` seconds."""
        self.registry.stop_polling()
        if self._http is not None:
            self._http.stop(grace)
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        if self.registry.batcher is not None:
            self.registry.batcher.close()

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)


def _address(host: str, port: int) -> str:
    """gRPC's "host:port", with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@contextlib.contextmanager
def _shutdown_requested():
    """Yields an event that SIGTERM (how Docker and Kubernetes stop a container) or SIGINT sets."""
    requested = threading.Event()

    def on_signal(signum, frame):
        log.info("signal %d: shutting down gracefully", signum)
        requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def set_tensorflow_threads(intra_op: int = 0, inter_op: int = 0) -> None:
    """TF Serving's --tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism (0: TensorFlow picks).

    Must run before TensorFlow runs its first op in this process (before any
    model loads): TensorFlow fixes its thread pools then, and later calls fail.
    Why it matters on CPU: with one thread per core for each op, a batch-1
    ResNet-20 call spins its idle helper threads; the embedded server spent
    6.3 core-ms per batch-1 image that way against 4.5 with one thread
    (docs/RESULTS.md, section 3).
    """
    import tensorflow as tf

    for flag, value in (("tensorflow_intra_op_parallelism", intra_op), ("tensorflow_inter_op_parallelism", inter_op)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"--{flag} must be an integer >= 0 (0: TensorFlow picks). Received: {value!r}")
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as e:  # TensorFlow already started its pools in this process
        raise RuntimeError(f"--tensorflow_intra_op_parallelism/--tensorflow_inter_op_parallelism must be set "
                           f"before TensorFlow runs anything in the process: {e}") from None


def serve(*, port: int = 8500, rest_api_port: int = 0, model_name: str = "default", model_base_path: str | None = None,
          model_config_file: str | None = None, ssl_config_file: str | None = None, grpc_max_threads: int = 16,
          host: str = "0.0.0.0", max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, grace: float = 5.0,
          rest_max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES, rest_read_timeout: float = DEFAULT_REST_READ_TIMEOUT,
          rest_max_connections: int = DEFAULT_REST_MAX_CONNECTIONS, file_system_poll_wait_seconds: float = 1.0,
          model_config_file_poll_wait_seconds: float = 0.0, enable_batching: str | None = None,
          batching_parameters_file: str | None = None, monitoring_config_file: str | None = None,
          rest_api_num_threads: int | None = None, rest_api_timeout_in_ms: int | None = None,
          tensorflow_intra_op_parallelism: int = 0, tensorflow_inter_op_parallelism: int = 0,
          allow_config_reload_rpc: bool = False, grpc_socket_path: str | None = None,
          grpc_channel_arguments: str | None = None, prefer_tflite_model: str | None = None,
          max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES, grpc_read_timeout: float = DEFAULT_GRPC_READ_TIMEOUT,
          grpc_max_concurrent_rpcs: int = DEFAULT_GRPC_MAX_CONCURRENT_RPCS,
          rest_max_connections_per_client: int = DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT,
          rest_tls_handshake_timeout: float = DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT) -> int:
    """Serves until SIGTERM or SIGINT, then lets in-flight requests finish for up to `grace` seconds.

    The arguments are `tensorflow_model_server`'s flags of the same names
    (`rest_api_port=0` means no REST), plus the address to bind and the
    limits that `ModelServer` describes. Must run in the main thread, which
    receives signals.
    """
    set_tensorflow_threads(tensorflow_intra_op_parallelism, tensorflow_inter_op_parallelism)
    from tfdisguise.serving.savedmodel import prefer_tflite

    prefer_tflite(prefer_tflite_model == "true")
    ssl = read_ssl_config(ssl_config_file) if ssl_config_file else None
    batching = metrics_path = None
    if enable_batching == "true":
        from tfdisguise.serving.batching import BatchingParameters, parse_batching_parameters

        batching = BatchingParameters()
        if batching_parameters_file:
            with open(batching_parameters_file) as f:
                batching = parse_batching_parameters(f.read())
    if monitoring_config_file:
        from tfdisguise.serving.metrics import parse_monitoring_config

        with open(monitoring_config_file) as f:
            metrics_path = parse_monitoring_config(f.read())
    registry = ModelRegistry.from_flags(model_name, model_base_path, model_config_file)
    # Handlers before start: a SIGTERM right after the server announces itself must stop it gracefully.
    with _shutdown_requested() as stop:
        server = ModelServer(registry, port=port, rest_api_port=rest_api_port or None, host=host,
                             max_workers=grpc_max_threads, max_message_bytes=max_message_bytes, ssl=ssl,
                             rest_max_body_bytes=rest_max_body_bytes, rest_read_timeout=rest_read_timeout,
                             rest_max_connections=rest_max_connections, rest_api_num_threads=rest_api_num_threads,
                             rest_api_timeout_in_ms=rest_api_timeout_in_ms,
                             file_system_poll_wait_seconds=file_system_poll_wait_seconds,
                             model_config_file_poll_wait_seconds=model_config_file_poll_wait_seconds,
                             batching=batching, metrics_path=metrics_path,
                             allow_config_reload_rpc=allow_config_reload_rpc, grpc_socket_path=grpc_socket_path,
                             grpc_channel_arguments=grpc_channel_arguments,
                             max_inflight_bytes=max_inflight_bytes, grpc_read_timeout=grpc_read_timeout,
                             grpc_max_concurrent_rpcs=grpc_max_concurrent_rpcs,
                             rest_max_connections_per_client=rest_max_connections_per_client,
                             rest_tls_handshake_timeout=rest_tls_handshake_timeout).start()
        print(f"serving {registry.names} on {host}: gRPC port {server.port}"
              + (f", REST port {server.rest_api_port}" if rest_api_port else "")
              + (" (TLS)" if ssl else " (no TLS, no authentication)"), flush=True)
        stop.wait()
        server.stop(grace=grace)
    print("server stopped", flush=True)
    return 0
