"""Prometheus metrics: per-call counters and histograms, backend gauges read at scrape time.

Everything is registered on a ``CollectorRegistry`` that create_app builds (no module-level
registry), so two apps in one process (the tests) never share a series.

Per call, ``Trace.finish`` (the one place every model call ends) calls ``Metrics.observe``: the
label values are bounded first, then one dict lookup finds that label set's children (cached:
``Counter.labels()`` takes a lock and builds a tuple of strings on every call), then a few
increments. Backend state (up, in flight, loaded models, breaker) is never mirrored into gauges
as it changes: a collector reads the pool when Prometheus scrapes.

Labels, all bounded:

- ``tenant``: the tenant that made the call, without a sub-tenant suffix (``svc/alice`` counts
  as ``svc``: the part after ``/`` comes from a client header);
- ``model``: the name the client asked for when it is an alias or a model some backend serves
  (an Ollama ``llama3.1`` counts as ``llama3.1:latest``), otherwise ``other``: a client that
  sends random model names never creates a series;
- ``backend``: the backend of the last attempt, ``none`` when no backend was tried;
- ``dialect`` (ollama, openai), ``endpoint`` (chat, completion, embed), ``status`` (the HTTP
  status; 499 when the client hung up) and ``reason`` (see ``error_reason``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from hearth.backends.pool import Pool, canonical_name


class SchedulerView(Protocol):
    """What the metrics read of the scheduler (gateway/scheduler.py), which sits above them."""

    def waiting_by_model(self) -> dict[str, int]: ...

    def loads_by_backend(self) -> dict[str, int]: ...

    def preemptions_by_backend(self) -> dict[str, int]: ...


if TYPE_CHECKING:
    from hearth.gateway.records import RequestLog, Trace

OTHER = "other"
NO_BACKEND = "none"

# Time to first token: 5 ms (a warm small model on a GPU) to 2 minutes (a cold load of a big
# model from disk). Whole calls run longer: a long generation can take minutes.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
DURATION_BUCKETS = (*TTFT_BUCKETS, 300.0, 600.0)
# Waits in the scheduler's queue: none (a free slot), up to the bounds tenants configure (30 s
# for a voice assistant, minutes for batch work).
QUEUE_BUCKETS = (0.005, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

_CALL = ("tenant", "model", "backend")
_REQUEST = (*_CALL, "dialect", "endpoint")

# Told of every finished call: (model label, backend label, status, error reason, seconds).
CallListener = Callable[[str, str, int, str | None, float], None]


def error_reason(status: int, error: str | None) -> str | None:
    """Why a call failed, or None when it did not.

    ``client_disconnect`` (499: the client hung up), ``client_error`` (other 4xx: bad request,
    unknown model...), ``server_error`` (5xx: no backend, the backend failed before answering),
    ``mid_stream`` (the response had started with 200 and then the backend failed).
    """
    if status == 499:
        return "client_disconnect"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    if error is not None:
        return "mid_stream"
    return None


class _Series:
    """The children of every metric for one label set, looked up once."""

    __slots__ = ("duration", "errors", "queue_wait", "requests", "tokens_in", "tokens_out", "ttft")

    def __init__(
        self,
        m: Metrics,
        call: tuple[str, str, str],
        dialect: str,
        endpoint: str,
        status: int,
        reason: str | None,
    ) -> None:
        self.requests = m.requests.labels(*call, dialect, endpoint, str(status))
        self.errors = None if reason is None else m.errors.labels(*call, dialect, endpoint, reason)
        self.tokens_in = m.tokens.labels(*call, "in")
        self.tokens_out = m.tokens.labels(*call, "out")
        self.duration = m.duration.labels(*call)
        self.ttft = m.ttft.labels(*call)
        self.queue_wait = m.queue_wait.labels(*call)


class Metrics:
    """The per-call metrics and the scrape-time collectors, on one app's registry."""

    def __init__(
        self, registry: CollectorRegistry, pool: Pool, aliases: Iterable[str], scheduler: SchedulerView
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.aliases = frozenset(aliases)
        # Client model name -> label, for names found to be known (bounded by what the backends
        # ever served); unknown names are never stored.
        self._known: dict[str, str] = {}
        self._series: dict[tuple[str, str, str, str, str, int, str | None], _Series] = {}
        # Called at the end of observe, on the loop; must cost about a microsecond (alerts.py).
        self.listeners: list[CallListener] = []
        self.requests = Counter(
            "hearth_requests",
            "Model calls, by HTTP status (499: the client hung up).",
            [*_REQUEST, "status"],
            registry=registry,
        )
        self.errors = Counter(
            "hearth_request_errors",
            "Model calls that failed, by reason: client_error, client_disconnect, server_error, mid_stream.",
            [*_REQUEST, "reason"],
            registry=registry,
        )
        self.tokens = Counter(
            "hearth_tokens",
            "Tokens as the backend counted them: direction in (prompt) or out (completion).",
            [*_CALL, "direction"],
            registry=registry,
        )
        self.duration = Histogram(
            "hearth_request_duration_seconds",
            "Whole model calls, from request to last byte.",
            _CALL,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "hearth_ttft_seconds",
            "Time to the first byte of the answer (first token when streaming).",
            _CALL,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "hearth_queue_wait_seconds",
            "Time a model call waited in Hearth's scheduler for a backend slot, every wait of the "
            "call together; a call given up at its tenant's bound counts, with backend none.",
            _CALL,
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        registry.register(PoolCollector(pool, scheduler))
        ProcessCollector(registry=registry)

    def watch(self, records: RequestLog) -> None:
        """Export the request log's backlog and drops (it is built after us: it holds us)."""
        self.registry.register(RequestLogCollector(records))

    def model_label(self, name: str) -> str:
        label = self._known.get(name)
        if label is not None:
            return label
        if name in self.aliases:
            label = name
        else:
            for s in self.pool.states:
                if s.serves(name):
                    label = canonical_name(name, s.backend.kind)
                    break
            else:
                return OTHER
        self._known[name] = label
        return label

    def observe(
        self,
        trace: Trace,
        status: int,
        error: str | None,
        tokens: tuple[int | None, int | None],
        duration: float,
    ) -> None:
        """Count one finished call (``duration`` in seconds). Called once per call, on the loop."""
        tenant = trace.tenant
        if "/" in tenant:
            tenant = tenant.partition("/")[0]
        call = (tenant, self.model_label(trace.model), trace.backend or NO_BACKEND)
        reason = error_reason(status, error)
        key = (*call, trace.dialect, trace.endpoint, status, reason)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(self, call, trace.dialect, trace.endpoint, status, reason)
        s.requests.inc()
        if s.errors is not None:
            s.errors.inc()
        tokens_in, tokens_out = tokens
        if tokens_in is not None and tokens_in > 0:
            s.tokens_in.inc(tokens_in)
        if tokens_out is not None and tokens_out > 0:
            s.tokens_out.inc(tokens_out)
        s.duration.observe(duration)
        ttft = trace.ttft_ms
        if ttft is not None:
            s.ttft.observe(ttft / 1000)
        if trace.backend is not None or trace.queue_wait_ms:  # it went through the scheduler
            s.queue_wait.observe(trace.queue_wait_ms / 1000)
        for listener in self.listeners:
            listener(call[1], call[2], status, reason, duration)


class PoolCollector:
    """Backend gauges, read from the pool at scrape time (scrapes run on the event loop, like
    every change to the pool, so the reading is consistent)."""

    def __init__(self, pool: Pool, scheduler: SchedulerView) -> None:
        self.pool = pool
        self.scheduler = scheduler

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily | CounterMetricFamily, ...]:
        b = ["backend"]
        return (
            GaugeMetricFamily(
                "hearth_backend_up", "1 when the backend's last health poll succeeded.", labels=b
            ),
            GaugeMetricFamily(
                "hearth_backend_in_flight",
                "Model calls Hearth has sent to the backend and not finished.",
                labels=b,
            ),
            GaugeMetricFamily(
                "hearth_backend_models_loaded", "Models loaded in the backend's memory.", labels=b
            ),
            GaugeMetricFamily(
                "hearth_backend_loaded_model_bytes", "Size of each loaded model.", labels=["backend", "model"]
            ),
            GaugeMetricFamily(
                "hearth_backend_breaker_open",
                "1 while the circuit breaker keeps the backend out of rotation.",
                labels=b,
            ),
            GaugeMetricFamily(
                "hearth_queue_depth",
                "Model calls waiting in the scheduler for a backend slot, by model.",
                labels=["model"],
            ),
            CounterMetricFamily(
                "hearth_model_loads",
                "Model loads the scheduler started on the backend (switches to a model not loaded).",
                labels=b,
            ),
            CounterMetricFamily(
                "hearth_preemptions",
                "Batch calls stopped on the backend for an interactive request, to be sent again.",
                labels=b,
            ),
        )

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        up, in_flight, loaded, loaded_bytes, breaker, queue, loads, preemptions = families
        for s in self.pool.states:
            name = [s.name]
            up.add_metric(name, 1.0 if s.up else 0.0)
            in_flight.add_metric(name, s.in_flight)
            loaded.add_metric(name, len(s.loaded))
            for model, info in s.loaded.items():
                loaded_bytes.add_metric([s.name, model], info.size)
            breaker.add_metric(name, 1.0 if s.breaker.state == "open" else 0.0)
        for backend, n in self.scheduler.loads_by_backend().items():
            loads.add_metric([backend], n)
        for backend, n in self.scheduler.preemptions_by_backend().items():
            preemptions.add_metric([backend], n)
        for model, n in self.scheduler.waiting_by_model().items():
            queue.add_metric([model], n)
        return families


class RequestLogCollector:
    def __init__(self, records: RequestLog) -> None:
        self.records = records

    def describe(self) -> Iterable[Metric]:
        return self._families(0, 0)

    def _families(self, dropped: int, pending: int) -> tuple[Metric, ...]:
        return (
            CounterMetricFamily(
                "hearth_request_log_dropped",
                "Request-log rows dropped because the store fell behind or failed.",
                value=dropped,
            ),
            GaugeMetricFamily(
                "hearth_request_log_pending", "Request-log rows waiting to be written.", value=pending
            ),
        )

    def collect(self) -> Iterable[Metric]:
        return self._families(self.records.dropped, len(self.records.pending))
