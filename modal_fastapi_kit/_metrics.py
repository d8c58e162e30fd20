"""Prometheus metrics, on ``prometheus-client``, in the kit's own registry.

Every series carries the service's name (``service``), so several services in one process
stay apart. What is measured:

=====================================  =================================================
``mfk_requests_total``                 requests answered, by ``route`` and ``status``
``mfk_request_duration_seconds``       time to the answer (to its first chunk for a stream)
``mfk_queue_wait_seconds``             time an item waited for its batch
``mfk_batch_size``                     items per batch run
``mfk_batch_duration_seconds``         time a batch took the model
``mfk_batch_cap``                      the most items a batch may hold now (``max_batch_size``,
                                       lowered after a batch ran out of GPU memory)
``mfk_queue_depth``                    items waiting now (calls in flight, for the web tier)
``mfk_items_withdrawn_total``          items whose client left or gave up before their batch
``mfk_items_failed_total``             items answered with an error, by ``error`` class
``mfk_model_state``                    1 for the state the service is in (``state`` label)
``mfk_load_seconds``                   seconds each load hook took, by ``phase`` (``load``,
                                       ``to_device``, ``warmup``)
``mfk_stream_chunks_total``            chunks handed to streams
``mfk_jobs_total``                     jobs submitted (``state="queued"``) and jobs that
                                       ended, by ``state``
``mfk_job_queue_seconds``              time a job waited before it started running
``mfk_job_run_seconds``                time a job ran, by the ``state`` it ended in
``mfk_jobs_pending``                   jobs queued or running now
=====================================  =================================================

Apps the kit builds serve them at ``/metrics``; in your own app, serve
``prometheus_client.generate_latest(metrics_registry)`` on a route (see docs/production.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ._core.spec import ServiceSpec
from ._core.state import LoadState

__all__ = [
    "JobMetrics",
    "ServiceMetrics",
    "metrics_for",
    "metrics_registry",
    "watch",
    "watch_jobs",
]

metrics_registry = CollectorRegistry(auto_describe=True)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 150)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)

_REQUESTS = Counter(
    "mfk_requests",
    "Requests answered by the service's routes",
    ["service", "route", "status"],
    registry=metrics_registry,
)
_REQUEST_SECONDS = Histogram(
    "mfk_request_duration_seconds",
    "Seconds from the request to its answer (to the first chunk, for a stream)",
    ["service", "route"],
    buckets=_LATENCY,
    registry=metrics_registry,
)
_QUEUE_WAIT = Histogram(
    "mfk_queue_wait_seconds",
    "Seconds an item waited in the queue for its batch",
    ["service"],
    buckets=(0.001, 0.0025, *_LATENCY),
    registry=metrics_registry,
)
_BATCH_SIZE = Histogram(
    "mfk_batch_size",
    "Items per batch (streams per step for a service whose streams join a running batch)",
    ["service"],
    buckets=_SIZES,
    registry=metrics_registry,
)
_BATCH_SECONDS = Histogram(
    "mfk_batch_duration_seconds",
    "Seconds a batch took the model",
    ["service"],
    buckets=(0.001, 0.0025, *_LATENCY),
    registry=metrics_registry,
)
_BATCH_CAP = Gauge(
    "mfk_batch_cap",
    "The most items a batch may hold now (lowered after a batch ran out of GPU memory)",
    ["service"],
    registry=metrics_registry,
)
_LOAD_SECONDS = Gauge(
    "mfk_load_seconds",
    "Seconds each load hook took (load, to_device, warmup), by phase",
    ["service", "phase"],
    registry=metrics_registry,
)
_WITHDRAWN = Counter(
    "mfk_items_withdrawn",
    "Items that left the queue uncomputed: their client left or gave up",
    ["service"],
    registry=metrics_registry,
)
_FAILED = Counter(
    "mfk_items_failed",
    "Items answered with an error, by error class",
    ["service", "error"],
    registry=metrics_registry,
)
_CHUNKS = Counter(
    "mfk_stream_chunks", "Chunks handed to streams", ["service"], registry=metrics_registry
)
_JOB_SECONDS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14_400, 43_200, 86_400)
_JOBS = Counter(
    "mfk_jobs",
    "Jobs submitted (state=queued) and jobs that ended, by the state they ended in",
    ["service", "state"],
    registry=metrics_registry,
)
_JOB_QUEUE = Histogram(
    "mfk_job_queue_seconds",
    "Seconds a job waited before it started running",
    ["service"],
    buckets=(0.01, 0.1, 0.5, *_JOB_SECONDS),
    registry=metrics_registry,
)
_JOB_RUN = Histogram(
    "mfk_job_run_seconds",
    "Seconds a job ran, by the state it ended in",
    ["service", "state"],
    buckets=(0.1, 0.5, *_JOB_SECONDS),
    registry=metrics_registry,
)


class ServiceMetrics:
    """One service's series; the core's ``Recorder`` and the routes' request counter."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._queue_wait = _QUEUE_WAIT.labels(service)
        self._batch_size = _BATCH_SIZE.labels(service)
        self._batch_seconds = _BATCH_SECONDS.labels(service)
        self._batch_cap = _BATCH_CAP.labels(service)
        self._withdrawn = _WITHDRAWN.labels(service)
        self._chunks = _CHUNKS.labels(service)
        self._requests: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        series = self._requests.get((route, status))
        if series is None:  # once per route and status: labels() costs a lock and a lookup
            series = self._requests[route, status] = (
                _REQUESTS.labels(self.service, route, str(status)),
                _REQUEST_SECONDS.labels(self.service, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    def batch(self, size: int, seconds: float) -> None:
        self._batch_size.observe(size)
        self._batch_seconds.observe(seconds)

    def waited(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def withdrawn(self) -> None:
        self._withdrawn.inc()

    def failed(self, error: str, count: int) -> None:
        _FAILED.labels(self.service, error).inc(count)

    def chunk(self) -> None:
        self._chunks.inc()

    def batch_cap(self, size: int) -> None:
        self._batch_cap.set(size)

    def loaded(self, phase: str, seconds: float) -> None:
        _LOAD_SECONDS.labels(self.service, phase).set(seconds)


class JobMetrics:
    """One service's job series."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._queue = _JOB_QUEUE.labels(service)

    def submitted(self) -> None:
        _JOBS.labels(self.service, "queued").inc()

    def started(self, waited: float) -> None:
        self._queue.observe(max(0.0, waited))

    def ended(self, state: str, ran: float | None) -> None:
        _JOBS.labels(self.service, state).inc()
        if ran is not None:
            _JOB_RUN.labels(self.service, state).observe(max(0.0, ran))


_BY_SERVICE: dict[str, ServiceMetrics] = {}


def metrics_for(spec: ServiceSpec) -> ServiceMetrics:
    """The series of ``spec``'s service (by its ``name``), made once per process."""
    name = spec.config.name
    if name not in _BY_SERVICE:
        _BY_SERVICE[name] = ServiceMetrics(name)
        _BY_SERVICE[name].batch_cap(spec.config.max_batch_size)
    return _BY_SERVICE[name]


class _Live(Collector):
    """``mfk_queue_depth`` and ``mfk_model_state``, read from the live backends at scrape."""

    def __init__(self) -> None:
        self._backends: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._jobs: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

    def watch(self, service: str, backend: Any) -> None:
        self._backends[service] = backend

    def watch_jobs(self, service: str, jobs: Any) -> None:
        self._jobs[service] = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "mfk_queue_depth", "Items waiting in the queue now", labels=["service"]
        )
        state = GaugeMetricFamily(
            "mfk_model_state", "1 for the state the service is in", labels=["service", "state"]
        )
        for service, backend in list(self._backends.items()):
            depth.add_metric([service], backend.queue_depth)
            current = backend.state
            for each in LoadState:
                state.add_metric([service, each.value], 1.0 if each is current else 0.0)
        yield depth
        yield state
        pending = GaugeMetricFamily(
            "mfk_jobs_pending", "Jobs queued or running now", labels=["service"]
        )
        for service, jobs in list(self._jobs.items()):
            pending.add_metric([service], jobs.pending)
        yield pending


_LIVE = _Live()
metrics_registry.register(_LIVE)


def watch(service: str, backend: Any) -> None:
    """Report ``backend``'s queue depth and state under ``service`` (the latest one wins)."""
    _LIVE.watch(service, backend)


def watch_jobs(service: str, jobs: Any) -> None:
    """Report ``jobs.pending`` (a ``JobService``'s) under ``service`` (the latest one wins)."""
    _LIVE.watch_jobs(service, jobs)
