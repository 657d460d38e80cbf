"""The embedded server's lifecycle: TF Serving's gRPC and REST APIs over one registry.

It serves the same `saved_models/<name>/<version>/` layout as
`tensorflow_model_server`, so clients and scripts move between the two
unchanged (`tfdisguise serve` runs the real binary when it is on PATH). The
APIs are in `grpc_api` and `rest_api`; this module starts them, stops them
gracefully, and runs until SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import signal
import threading

import grpc

from tfdisguise.serving import DEFAULT_MAX_MESSAGE_BYTES, grpc_api
from tfdisguise.serving.registry import ModelRegistry
from tfdisguise.serving.tls import SSLConfig, read_ssl_config

__all__ = ["ModelServer", "serve"]

log = logging.getLogger("tfdisguise.serve")


class ModelServer:
    """gRPC (and optionally REST) front ends over one `ModelRegistry`.

    `port=0` picks a free port; `rest_api_port=None` disables REST and 0 picks
    a free port. After `start()`, `port` and `rest_api_port` hold the bound ports.
    `ssl` (from `tls.read_ssl_config`) serves gRPC over TLS.
    """

    def __init__(self, registry: ModelRegistry, *, port: int = 8500, rest_api_port: int | None = None,
                 host: str = "0.0.0.0", max_workers: int = 16, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ssl: SSLConfig | None = None):
        if ssl is not None and not isinstance(ssl, SSLConfig):
            raise TypeError(f"`ssl` must be a tfdisguise.serving.tls.SSLConfig or None. "
                            f"Received: ssl={type(ssl).__name__}")
        self.registry = registry
        self.host, self.port, self.rest_api_port = host, port, rest_api_port
        self.enable_rest = rest_api_port is not None
        self.max_workers, self.max_message_bytes, self.ssl = max_workers, max_message_bytes, ssl
        self._grpc = None
        self._http = None
        self._http_thread = None

    def start(self) -> ModelServer:
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes),
                   ("grpc.so_reuseport", 1)]
        self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=self.max_workers), options=options)
        grpc_api.add_servicers(self._grpc, self.registry)
        address = f"{self.host}:{self.port}"
        if self.ssl:
            self.port = self._grpc.add_secure_port(address, self.ssl.credentials())
        else:
            self.port = self._grpc.add_insecure_port(address)
        if not self.port:
            raise OSError(f"Cannot bind gRPC to {address}.")
        self._grpc.start()
        if self.enable_rest:
            from werkzeug.serving import make_server

            from tfdisguise.serving.rest_api import make_rest_app

            self._http = make_server(self.host, self.rest_api_port, make_rest_app(self.registry), threaded=True)
            self.rest_api_port = self._http.server_port
            self._http_thread = threading.Thread(target=self._http.serve_forever, name="rest", daemon=True)
            self._http_thread.start()
        log.info("serving %s on gRPC port %d%s", self.registry.names, self.port,
                 f" and REST port {self.rest_api_port}" if self._http else "")
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stops taking new requests and lets in-flight ones finish for up to `grace` seconds."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None

    def wait(self) -> None:
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)


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


def serve(*, port: int = 8500, rest_api_port: int = 0, model_name: str = "default", model_base_path: str | None = None,
          model_config_file: str | None = None, ssl_config_file: str | None = None, grpc_max_threads: int = 16,
          host: str = "0.0.0.0", max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, grace: float = 5.0) -> int:
    """Serves until SIGTERM or SIGINT, then lets in-flight requests finish for up to `grace` seconds.

    The arguments are `tensorflow_model_server`'s flags of the same names
    (`rest_api_port=0` means no REST), plus the address to bind and the gRPC
    message size limit. Must run in the main thread, which receives signals.
    """
    registry = ModelRegistry.from_flags(model_name, model_base_path, model_config_file)
    ssl = read_ssl_config(ssl_config_file) if ssl_config_file else None
    # Handlers before start: a SIGTERM right after the server announces itself must stop it gracefully.
    with _shutdown_requested() as stop:
        server = ModelServer(registry, port=port, rest_api_port=rest_api_port or None, host=host,
                             max_workers=grpc_max_threads, max_message_bytes=max_message_bytes, ssl=ssl).start()
        print(f"serving {registry.names} on gRPC port {server.port}"
              + (f", REST port {server.rest_api_port}" if rest_api_port else ""), flush=True)
        stop.wait()
        server.stop(grace=grace)
    print("server stopped", flush=True)
    return 0
