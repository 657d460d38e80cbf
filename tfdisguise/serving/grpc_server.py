"""The gRPC server under the APIs: `grpc.aio`, so that a call waiting for its request holds no thread.

Why: grpcio's threaded server gives each call one of its worker threads
before the call's request message has arrived, and waits there without a
deadline. 32 calls that sent their headers and never a body held all 16
workers, and every other client timed out (issue 22, finding 5). Here a call
waits for its request on an event loop, for at most `read_timeout` seconds
(then it is answered DEADLINE_EXCEEDED and closed), and only a call with its
request in hand takes one of `max_workers` threads to run the synchronous
servicers of `grpc_api`. At most `max_concurrent_rpcs` calls are open at
once; more are answered RESOURCE_EXHAUSTED at once.

`GrpcServer` has the methods of `grpc.Server` that `ModelServer` uses, so the
servicers register on it unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading

import grpc
import grpc.aio

from tfdisguise.serving import DEFAULT_GRPC_MAX_CONCURRENT_RPCS, DEFAULT_GRPC_READ_TIMEOUT

__all__ = ["DEFAULT_GRPC_MAX_CONCURRENT_RPCS", "DEFAULT_GRPC_READ_TIMEOUT", "GrpcServer"]

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop thread for every server in the process: grpc.aio is meant to run on one loop."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True).start()
            _LOOP = loop
    return _LOOP


def _on_loop(function, *args, timeout: float | None = 60):
    """Runs `function(*args)` (a coroutine function or a plain one) on the loop, and returns its result here."""

    async def run():
        result = function(*args)
        return await result if inspect.isawaitable(result) else result

    return asyncio.run_coroutine_threadsafe(run(), _loop()).result(timeout)


class _Aborted(Exception):
    """A synchronous servicer's `context.abort`: carried back to the loop, which ends the call with it."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class _SyncContext:
    """What a synchronous servicer expects of its context, over an aio call (abort raises, as in grpcio)."""

    def __init__(self, context):
        self._context = context

    def abort(self, code, details=""):
        raise _Aborted(code, details)

    def abort_with_status(self, status):
        raise _Aborted(status.code, status.details)

    def is_active(self) -> bool:
        return not self._context.done()

    def __getattr__(self, name):  # time_remaining, peer, invocation_metadata, set_code, auth_context, ...
        return getattr(self._context, name)


def _with_read_deadline(handler, method: str, pool, read_timeout: float):
    """A unary-unary handler as a stream-unary one (the same on the wire) that reads its request within
    `read_timeout`, then runs the synchronous behaviour on `pool`."""
    behavior = handler.unary_unary

    async def call(request_iterator, context):
        try:
            request = await asyncio.wait_for(context.read(), read_timeout)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"The request message did not arrive within {read_timeout:g} s "
                                f"(--grpc_read_timeout); the call is closed.")
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f'"{method}" requires exactly one request message.')
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, contextvars.copy_context().run, behavior, request, _SyncContext(context))
        except _Aborted as e:
            await context.abort(e.code, e.details)

    return grpc.stream_unary_rpc_method_handler(call, request_deserializer=handler.request_deserializer,
                                                response_serializer=handler.response_serializer)


class _ReadDeadline(grpc.aio.ServerInterceptor):
    def __init__(self, pool, read_timeout: float):
        self.pool, self.read_timeout = pool, read_timeout

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if (handler is None or handler.request_streaming or handler.response_streaming
                or handler.unary_unary is None or inspect.iscoroutinefunction(handler.unary_unary)):
            return handler  # streaming or async handlers run as grpc.aio runs them
        return _with_read_deadline(handler, handler_call_details.method, self.pool, self.read_timeout)


class GrpcServer:
    """A `grpc.aio` server driven from synchronous code, with a read deadline and a cap on open calls.

    Args:
        max_workers: threads that run the servicers (requests in hand).
        options: gRPC channel arguments.
        read_timeout: seconds for a call's request message to arrive.
        max_concurrent_rpcs: calls open at once; more get RESOURCE_EXHAUSTED.
    """

    def __init__(self, *, max_workers: int, options=(), read_timeout: float = DEFAULT_GRPC_READ_TIMEOUT,
                 max_concurrent_rpcs: int = DEFAULT_GRPC_MAX_CONCURRENT_RPCS):
        for name, value in (("max_workers", max_workers), ("read_timeout", read_timeout),
                            ("max_concurrent_rpcs", max_concurrent_rpcs)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={value!r}")
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc")
        self._server = _on_loop(lambda: grpc.aio.server(
            migration_thread_pool=self._pool, options=list(options), maximum_concurrent_rpcs=max_concurrent_rpcs,
            interceptors=[_ReadDeadline(self._pool, read_timeout)]))
        self._stopped = threading.Event()

    def add_generic_rpc_handlers(self, handlers) -> None:
        _on_loop(self._server.add_generic_rpc_handlers, handlers)

    def add_registered_method_handlers(self, service_name, method_handlers) -> None:
        _on_loop(self._server.add_registered_method_handlers, service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return _on_loop(self._server.add_insecure_port, address)

    def add_secure_port(self, address: str, credentials) -> int:
        return _on_loop(self._server.add_secure_port, address, credentials)

    def start(self) -> None:
        _on_loop(self._server.start)

    def stop(self, grace: float | None) -> threading.Event:
        """Stops taking calls, lets open ones finish for up to `grace` seconds; returns a set event (as grpcio)."""
        if not self._stopped.is_set():
            try:
                _on_loop(self._server.stop, grace, timeout=(grace or 0) + 30)
            finally:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._stopped.set()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)
