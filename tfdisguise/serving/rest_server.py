"""The HTTP server that hosts the REST API's WSGI app: tornado, with TLS, time limits and a connection cap.

Why tornado: it reads headers and bodies on its event loop, so a slow or
stalled client holds a socket, not a thread, and a request must arrive whole
within `read_timeout` (its headers, then its body) or its connection is closed.
It caps the body size before reading it, serves TLS (with client certificates)
from an `ssl.SSLContext`, and binds exclusively. The WSGI app runs on a thread
pool of `max_workers`. werkzeug's development server has a thread per
connection and no overall read deadline.

Beyond `max_connections` open connections, or `max_connections_per_client`
from one source address, a new one is answered 503 and closed. A TLS
connection must finish its handshake within `handshake_timeout` seconds: 128
connections that never sent a TLS hello had held every slot (issue 22).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import logging
import socket
import ssl
import threading
import time

from tornado import gen, httpserver, httputil, ioloop, iostream, netutil, wsgi

from tfdisguise.serving import DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT
from tfdisguise.serving.limits import (
    DEFAULT_REST_MAX_BODY_BYTES,
    DEFAULT_REST_MAX_CONNECTIONS,
    DEFAULT_REST_READ_TIMEOUT,
)
from tfdisguise.serving.rest_api import body_too_large

__all__ = ["RestServer", "address_in_use"]

log = logging.getLogger("tfdisguise.serve")


def _answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


_PENDING: set = set()  # answers being written: asyncio keeps only weak references to tasks


def _send_and_close(stream: iostream.IOStream, answer: bytes) -> None:
    task = asyncio.ensure_future(_answer_and_close(stream, answer))
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


async def _answer_and_close(stream: iostream.IOStream, answer: bytes) -> None:
    try:
        await gen.with_timeout(datetime.timedelta(seconds=1), stream.write(answer))
    except (iostream.StreamClosedError, gen.TimeoutError, OSError):
        pass
    finally:
        stream.close()


class _RefuseLargeBody(httputil.HTTPMessageDelegate):
    """Answers 413 (with a message) to a declared body over the limit, before reading it; passes others on."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, connection, max_body_bytes: int):
        self.inner, self.connection, self.max_body_bytes = inner, connection, max_body_bytes

    def headers_received(self, start_line, headers):
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            # Detached, the connection reads nothing more: the body is never received.
            stream = self.connection.detach()
            answer = _answer(413, "Payload Too Large", body_too_large(self.max_body_bytes))
            _send_and_close(stream, answer)
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk):
        return self.inner.data_received(chunk)

    def finish(self):
        return self.inner.finish()

    def on_connection_close(self):
        return self.inner.on_connection_close()


class _CappedHTTPServer(httpserver.HTTPServer):
    def initialize(self, *args, max_connections: int, max_body_bytes: int, max_connections_per_client: int,
                   handshake_timeout: float, **kwargs):
        super().initialize(*args, max_body_size=max_body_bytes, **kwargs)
        self.max_connections, self.max_body_bytes, self.open_connections = max_connections, max_body_bytes, 0
        self.max_connections_per_client, self.handshake_timeout = max_connections_per_client, handshake_timeout
        self.per_client: dict[str, int] = {}  # open connections by source address
        self.client_of: dict = {}  # stream -> source address, to count its close

    def handle_stream(self, stream, address):
        client = address[0] if isinstance(address, tuple) and address else str(address)
        if self.open_connections >= self.max_connections:
            answer = _answer(503, "Service Unavailable", f"More than {self.max_connections} open connections; "
                                                         f"try again later.")
            _send_and_close(stream, answer)
            return
        if self.per_client.get(client, 0) >= self.max_connections_per_client:
            # One address cannot take every slot: idle connections from it would lock everyone else out.
            answer = _answer(503, "Service Unavailable", f"More than {self.max_connections_per_client} open "
                                                         f"connections from {client}; try again later.")
            _send_and_close(stream, answer)
            return
        self.open_connections += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        self.client_of[stream] = client
        if isinstance(stream, iostream.SSLIOStream):
            self._expire_handshake(stream)
        super().handle_stream(stream, address)

    def _expire_handshake(self, stream: iostream.SSLIOStream) -> None:
        """Closes a TLS connection whose handshake has not finished within `handshake_timeout` seconds."""
        done = stream.wait_for_handshake()
        loop = ioloop.IOLoop.current()
        timer = loop.call_later(self.handshake_timeout, lambda: None if done.done() else stream.close())

        def finished(future):
            loop.remove_timeout(timer)
            if not future.cancelled():
                future.exception()  # a failed handshake is the client's problem: retrieved, not logged

        done.add_done_callback(finished)

    def on_close(self, server_conn):
        self.open_connections -= 1
        client = self.client_of.pop(getattr(server_conn, "stream", None), None)
        if client is not None:
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]
        super().on_close(server_conn)

    def start_request(self, server_conn, request_conn):
        return _RefuseLargeBody(super().start_request(server_conn, request_conn), request_conn, self.max_body_bytes)


def address_in_use(host: str, port: int, what: str, error: Exception | None = None) -> OSError:
    """The error for a port that cannot be bound, with the reason the OS gives if `error` does not say."""
    reason = getattr(error, "strerror", None)
    if not reason:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            reason = "the address cannot be bound"
        except OSError as e:
            reason = e.strerror or str(e)
    return OSError(f"Cannot bind the {what} port to {host}:{port}: {reason}. Is another server running on it? "
                   f"Pick another port, or stop that server.")


def _bind_address(host: str) -> str | None:
    """tornado's address for `host`: every interface of both IP versions for either wildcard, as gRPC binds.

    gRPC serves IPv4 and IPv6 for `0.0.0.0` and for `::` alike; tornado would bind `::` IPv6-only and `0.0.0.0`
    IPv4-only, so the two APIs would be reachable from different networks.
    """
    host = host.strip("[]")
    return None if host in ("", "0.0.0.0", "::") else host


class _InFlight:
    """WSGI middleware that counts requests in progress, so that stopping can wait for them."""

    def __init__(self, app):
        self.app, self.count, self._lock = app, 0, threading.Lock()

    def __call__(self, environ, start_response):
        with self._lock:
            self.count += 1
        try:
            # The apps served here answer with one buffered body, so the request is over when this returns.
            result = self.app(environ, start_response)
            try:
                return list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            with self._lock:
                self.count -= 1


class RestServer:
    """Serves the WSGI `app` on `host:port` (0 picks a free port) until `stop()`.

    Args:
        ssl_context: serves HTTPS with it (client certificates as it says).
        max_body_bytes: a larger body is refused (413) before it is read.
        read_timeout: seconds for a request's headers to arrive, and again for its body.
        max_connections: open connections at most; more are answered 503.
        max_connections_per_client: open connections from one source address at most; more are answered 503.
        handshake_timeout: seconds for a TLS client to finish its handshake, else it is closed.
        max_workers: threads that run the app.
    """

    def __init__(self, app, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 max_body_bytes: int = DEFAULT_REST_MAX_BODY_BYTES, read_timeout: float = DEFAULT_REST_READ_TIMEOUT,
                 max_connections: int = DEFAULT_REST_MAX_CONNECTIONS, max_workers: int = 16,
                 max_connections_per_client: int = DEFAULT_REST_MAX_CONNECTIONS_PER_CLIENT,
                 handshake_timeout: float = DEFAULT_REST_TLS_HANDSHAKE_TIMEOUT):
        for name, value in (("max_body_bytes", max_body_bytes), ("read_timeout", read_timeout),
                            ("max_connections", max_connections), ("max_workers", max_workers),
                            ("max_connections_per_client", max_connections_per_client),
                            ("handshake_timeout", handshake_timeout)):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={value}")
        self.app, self.host, self.port, self.ssl_context = _InFlight(app), host, port, ssl_context
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout
        self.max_connections, self.max_workers = max_connections, max_workers
        self.max_connections_per_client, self.handshake_timeout = max_connections_per_client, handshake_timeout
        self._loop = self._thread = self._server = self._executor = self._sockets = None

    def bind(self) -> RestServer:
        """Binds the port, raising OSError at once if it is taken; `start()` then serves on it."""
        if self._sockets is None:
            try:
                self._sockets = netutil.bind_sockets(self.port, address=_bind_address(self.host), reuse_port=False)
            except OSError as e:
                raise address_in_use(self.host, self.port, "REST", e) from None
            self.port = self._sockets[0].getsockname()[1]
        return self

    def unbind(self) -> None:
        """Lets go of a port that `bind()` took, for a server that will not start after all."""
        for sock in self._sockets or ():
            sock.close()
        self._sockets = None

    def start(self) -> RestServer:
        """Binds (if `bind()` has not), then serves on a background thread."""
        sockets = self.bind()._sockets
        self._executor = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="rest")
        self._loop = asyncio.new_event_loop()
        started = concurrent.futures.Future()

        async def serve():
            self._server = _CappedHTTPServer(
                wsgi.WSGIContainer(self.app, executor=self._executor), ssl_options=self.ssl_context,
                idle_connection_timeout=self.read_timeout, body_timeout=self.read_timeout,
                max_connections=self.max_connections, max_body_bytes=self.max_body_bytes,
                max_connections_per_client=self.max_connections_per_client, handshake_timeout=self.handshake_timeout)
            self._server.add_sockets(sockets)

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            except BaseException as e:  # reported to start(), which re-raises it
                started.set_exception(e)
                return
            started.set_result(None)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="rest", daemon=True)
        self._thread.start()
        started.result()
        self._sockets = None  # the server owns them now
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stops accepting, lets requests in progress finish for up to `grace` seconds, then closes everything."""
        if self._loop is None:
            self.unbind()
            return

        async def shutdown():
            self._server.stop()
            deadline = time.monotonic() + grace
            while self.app.count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            try:
                await asyncio.wait_for(self._server.close_all_connections(), timeout=max(grace, 1.0))
            except asyncio.TimeoutError:
                log.warning("REST connections still open after %.1f s; closing anyway", grace)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=grace + 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._loop.is_running():
                self._loop.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._loop = None
