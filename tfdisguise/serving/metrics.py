"""Prometheus metrics (--monitoring_config_file), under TF Serving's metric names where it has them.

:tensorflow:serving:request_count{model_name, status}        requests answered, by gRPC status name
:tensorflow:serving:request_latency{model_name, API, entrypoint}   histogram, in microseconds
:tensorflow:serving:batching_session:processed_batch_size{model_name}  histogram of merged batch sizes
:tensorflow:cc:saved_model:load_attempt_count{model_path, status}  version loads, "success" or "fail"
:tensorflow:serving:model_version_state{model_name, version, state}   1 for each version's current state

The text is written by `prometheus_client`. Counters keep TF Serving's names
(without the `_total` suffix that prometheus_client's own counters add), so
dashboards built for TF Serving read them unchanged.

>>> parse_monitoring_config('prometheus_config { enable: true, path: "/metrics" }')
'/metrics'
>>> parse_monitoring_config("prometheus_config { enable: false }") is None
True
"""

from __future__ import annotations

import collections
import re
import threading

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["DEFAULT_METRICS_PATH", "Metrics", "parse_monitoring_config"]

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's
_LATENCY_BUCKETS_US = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1e6, 2.5e6, 1e7)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def parse_monitoring_config(text: str) -> str | None:
    """The metrics path that a MonitoringConfig text proto enables, or None if Prometheus is not enabled."""
    # Text proto allows "prometheus_config {" and "prometheus_config: {" (TF Serving's own test data has the colon).
    block = re.search(r"prometheus_config\s*:?\s*\{([^}]*)\}", re.sub(r"#[^\n]*", "", text))
    if not block or not re.search(r"\benable\s*:\s*(true|True|t|1)\b", block.group(1)):
        return None
    path = re.search(r'\bpath\s*:\s*"([^"]*)"', block.group(1))
    path = path.group(1) if path and path.group(1) else DEFAULT_METRICS_PATH
    if not path.startswith("/"):
        raise ValueError(f"prometheus_config's `path` must start with '/'. Received: path={path!r}")
    return path


class _Untyped(Metric):
    """A counter written under its exact name (Prometheus 'untyped' is how TF Serving's names survive)."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], values: dict):
        super().__init__(name, documentation, "unknown")
        for key, value in sorted(values.items()):
            self.add_sample(name, dict(zip(labels, key)), value)


class Metrics:
    """What one server has answered and loaded; `text()` is the Prometheus exposition."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._requests: collections.Counter = collections.Counter()
        self._loads: collections.Counter = collections.Counter()
        self._states: dict[tuple[str, int], str] = {}
        self.latency = Histogram(":tensorflow:serving:request_latency", "Request latency in microseconds.",
                                 ["model_name", "API", "entrypoint"], buckets=_LATENCY_BUCKETS_US,
                                 registry=self.registry)
        self.batch_size = Histogram(":tensorflow:serving:batching_session:processed_batch_size",
                                    "Sizes of the batches that were run (merged requests).", ["model_name"],
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.registry.register(self)

    def request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Counts one answered request (`status`: the gRPC code's name, "OK" for success)."""
        with self._lock:
            self._requests[(model, status)] += 1
        self.latency.labels(model, api, entrypoint).observe(seconds * 1e6)

    def batch(self, model: str, size: int, padded: int) -> None:
        self.batch_size.labels(model).observe(padded)

    def version_state(self, model: str, version: int, status) -> None:
        """A `ModelRegistry` listener: records each version's state and every load attempt."""
        with self._lock:
            if self._states.get((model, version)) == "LOADING":
                ok = status.state == "AVAILABLE"
                self._loads[(f"{model}/{version}", "success" if ok else "fail")] += 1
            self._states[(model, version)] = status.state

    def collect(self):
        with self._lock:
            requests, loads, states = dict(self._requests), dict(self._loads), dict(self._states)
        yield _Untyped(":tensorflow:serving:request_count", "The total number of requests.",
                       ("model_name", "status"), requests)
        yield _Untyped(":tensorflow:cc:saved_model:load_attempt_count",
                       "The number of times a SavedModel was attempted to load.", ("model_path", "status"), loads)
        family = GaugeMetricFamily(":tensorflow:serving:model_version_state",
                                   "1 for each model version's current state.",
                                   labels=["model_name", "version", "state"])
        for (model, version), state in sorted(states.items()):
            family.add_metric([model, str(version), state], 1)
        yield family

    def text(self) -> bytes:
        return generate_latest(self.registry)
