"""Server-side batching (--enable_batching): concurrent requests to one model version and signature run as one.

Reads TF Serving's --batching_parameters_file (a BatchingParameters text proto):
`max_batch_size`, `batch_timeout_micros`, `max_enqueued_batches`,
`num_batch_threads`, `allowed_batch_sizes` (a merged batch is padded up to the
next one). A request waits at most `batch_timeout_micros` for others to join
it. When `max_enqueued_batches` full batches are already waiting, a request is
answered UNAVAILABLE at once, as TF Serving does, rather than queued without
bound. A request whose deadline has passed while it waited is not run.

>>> p = parse_batching_parameters("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 8")
>>> p.max_batch_size, p.allowed_batch_sizes, p.batch_timeout_micros
(8, (4, 8), 0)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import re
import threading
import time

import grpc
import numpy as np

from tfdisguise.serving.registry import Servable, ServingError

__all__ = ["BatchingParameters", "Batcher", "parse_batching_parameters"]

_WRAPPED = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
_FIELD = re.compile(r"(\w+)\s*(?::\s*([^\s{}#]+)|\{\s*value\s*:\s*([^\s{}#]+)\s*\})")


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters, with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        for name in _WRAPPED:
            if getattr(self, name) < (0 if name == "batch_timeout_micros" else 1):
                raise ValueError(f"Batching parameter `{name}` must be positive. Received: {getattr(self, name)}")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(f"`allowed_batch_sizes` must increase and end with max_batch_size "
                             f"({self.max_batch_size}). Received: {list(sizes)}")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Reads a BatchingParameters text proto (the contents of --batching_parameters_file)."""
    text = re.sub(r"#[^\n]*", "", text)
    values, sizes = {}, []
    for match in _FIELD.finditer(text):
        name, plain, wrapped = match.groups()
        value = plain if plain is not None else wrapped
        if name == "allowed_batch_sizes":
            sizes.append(int(value))
        elif name in _WRAPPED:
            values[name] = int(value)
        elif name not in ("pad_variable_length_inputs", "thread_pool_name", "enable_large_batch_splitting",
                          "max_execution_batch_size"):
            raise ValueError(f"Unknown batching parameter {name!r}; expected one of "
                             f"{', '.join(_WRAPPED + ('allowed_batch_sizes',))}.")
    return BatchingParameters(**values, allowed_batch_sizes=tuple(sizes))


@dataclasses.dataclass
class _Task:
    inputs: dict
    size: int
    deadline: float | None
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


class _Queue:
    """The waiting tasks of one servable version and signature, and the threads that run them in batches."""

    def __init__(self, servable: Servable, signature: str, params: BatchingParameters, on_batch):
        self.servable, self.signature, self.params, self.on_batch = servable, signature, params, on_batch
        self.tasks: collections.deque[_Task] = collections.deque()
        self.size = 0
        self.cond = threading.Condition()
        self.closed = False
        self.threads = [threading.Thread(target=self._loop, name=f"batch-{servable.name}-{i}", daemon=True)
                        for i in range(params.num_batch_threads)]
        for thread in self.threads:
            thread.start()

    def submit(self, task: _Task) -> None:
        limit = self.params.max_enqueued_batches * self.params.max_batch_size
        with self.cond:
            if self.closed or self.size + task.size > limit:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was submitted is full")
            self.tasks.append(task)
            self.size += task.size
            self.cond.notify()

    def _take(self) -> list[_Task]:
        timeout = self.params.batch_timeout_micros / 1e6
        with self.cond:
            while not self.tasks and not self.closed:
                self.cond.wait()
            if not self.tasks:
                return []
            until = self.tasks[0].enqueued + timeout
            while self.size < self.params.max_batch_size and not self.closed and time.monotonic() < until:
                self.cond.wait(until - time.monotonic())
                if not self.tasks:
                    return []
            batch, total = [], 0
            while self.tasks and total + self.tasks[0].size <= self.params.max_batch_size:
                task = self.tasks.popleft()
                self.size -= task.size
                batch.append(task)
                total += task.size
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self.closed:
                    return
                continue
            now = time.monotonic()
            live = []
            for task in batch:
                if task.deadline is not None and now >= task.deadline:
                    task.future.set_exception(ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                                           "Deadline exceeded while the request waited to run"))
                else:
                    live.append(task)
            if live:
                self._run(live)

    def _padded_size(self, total: int) -> int:
        return next((s for s in self.params.allowed_batch_sizes if s >= total), total)

    def _run(self, batch: list[_Task]) -> None:
        total = sum(t.size for t in batch)
        padded = self._padded_size(total)
        merged = {}
        for key in batch[0].inputs:
            parts = [t.inputs[key] for t in batch]
            if padded > total:  # the last row repeated: its answers are dropped
                parts.append(np.repeat(parts[-1][-1:], padded - total, axis=0))
            merged[key] = np.concatenate(parts)
        try:
            outputs = self.servable.run(self.signature, merged)
        except Exception as e:  # each task hears the batch's error
            for task in batch:
                task.future.set_exception(e)
            return
        if any(np.ndim(v) == 0 or len(v) != padded for v in outputs.values()):
            # Outputs that are not per row (a summary, say): each task runs alone instead.
            for task in batch:
                try:
                    task.future.set_result(self.servable.run(self.signature, task.inputs))
                except Exception as e:
                    task.future.set_exception(e)
            return
        self.on_batch(self.servable.name, total, padded)
        start = 0
        for task in batch:
            task.future.set_result({k: v[start:start + task.size] for k, v in outputs.items()})
            start += task.size

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Batcher:
    """Runs requests through per-(model, version, signature) queues; `on_batch(model, size, padded)` hears each
    merged batch (for metrics)."""

    def __init__(self, params: BatchingParameters, on_batch=lambda model, size, padded: None):
        self.params, self.on_batch = params, on_batch
        self._queues: dict[tuple, _Queue] = {}
        self._lock = threading.Lock()

    def run(self, servable: Servable, signature: str, inputs: dict, deadline: float | None = None) -> dict:
        """`servable.run(signature, inputs)`, merged with concurrent requests when they fit a batch."""
        sizes = {np.shape(v)[0] if np.ndim(v) else None for v in inputs.values()}
        size = sizes.pop() if len(sizes) == 1 else None
        if not size or size > self.params.max_batch_size:
            return servable.run(signature, inputs)  # no common batch axis, or alone larger than a batch
        key = (servable.name, servable.version, id(servable), signature)
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(servable, signature, self.params, self.on_batch)
        task = _Task(inputs, size, deadline)
        queue.submit(task)
        wait = None if deadline is None else max(deadline - time.monotonic(), 0) + 1.0
        try:
            return task.future.result(timeout=wait)
        except concurrent.futures.TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded while the batch ran") from None

    def forget(self, servable: Servable) -> None:
        """Stops the queues of an unloaded version (their waiting tasks still run)."""
        with self._lock:
            keys = [k for k in self._queues if k[2] == id(servable)]
            queues = [self._queues.pop(k) for k in keys]
        for queue in queues:
            queue.close()

    def close(self) -> None:
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
        for queue in queues:
            queue.close()
