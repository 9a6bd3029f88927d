"""Prometheus metrics (prometheus_client's default registry, one per process).

Each service serves them at ``/metrics``: the gateway on its API port, person
and score on a small HTTP server of their own at ``METRICS_ADDRESS[<service>]``
(:func:`metrics_http`), so Prometheus scrapes every instance.

What they count (each service exports the ones that concern it):

- ``http_requests_total{method,route,status}``, ``http_request_duration_seconds``: the gateway's HTTP API;
- ``rpc_requests_total{method,outcome}``, ``rpc_request_duration_seconds``: RPC handled by person and score;
- ``events_published_total{event_type,path}``, ``event_publish_failures_total``, ``outbox_pending_events``,
  ``outbox_oldest_pending_age_seconds``, ``event_history_deleted_total`` (the retention policy): person's outbox;
- ``events_applied_total``, ``events_duplicate_total``, ``events_retried_total``,
  ``events_dead_lettered_total``, ``event_propagation_lag_seconds`` (occurred_at to applied), ``dead_letters``:
  a consumer's handlers;
- ``read_your_writes_wait_seconds{outcome}``: how long reads with ``min_sequence`` waited.
"""

import logging
import time
from weakref import WeakKeyDictionary

from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import WebServer, parse_address
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from werkzeug.wrappers import Response

from reliable_events.instruments import EventMetrics

_log = logging.getLogger(__name__)

# Seconds; from sub-millisecond local calls to the RPC timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Propagation lag: milliseconds normally, minutes after an outage or a rebuild.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered, by route and status.", ["method", "route", "status"])
HTTP_IN_FLIGHT = Gauge("http_requests_in_flight", "HTTP requests in progress (refused past MAX_IN_FLIGHT).")
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "Time to answer an HTTP request.", ["method", "route"], buckets=LATENCY_BUCKETS
)
RPC_REQUESTS = Counter("rpc_requests", "RPC calls handled, by method and outcome.", ["method", "outcome"])
RPC_DURATION = Histogram(
    "rpc_request_duration_seconds", "Time to handle an RPC call.", ["method"], buckets=LATENCY_BUCKETS
)
EVENTS_PUBLISHED = Counter(
    "events_published", "Events the broker confirmed, by type and path (commit or sweep).", ["event_type", "path"]
)
EVENT_PUBLISH_FAILURES = Counter(
    "event_publish_failures", "Publish attempts not confirmed (left pending for the sweep).", ["event_type"]
)
OUTBOX_PENDING = Gauge("outbox_pending_events", "Outbox rows not yet published (read at scrape time).")
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_pending_age_seconds", "Age of the oldest unpublished outbox row (read at scrape time)."
)
HISTORY_DELETED = Counter(
    "event_history_deleted", "Published outbox rows deleted by the retention policy (EVENT_HISTORY_RETENTION)."
)
EVENTS_APPLIED = Counter("events_applied", "Events applied by a handler (first delivery).", ["event_type"])
EVENTS_DUPLICATE = Counter(
    "events_duplicate", "Events skipped because the inbox had them (redelivery, replay).", ["event_type"]
)
EVENTS_RETRIED = Counter("events_retried", "Failed events sent to a retry queue.", ["event_type"])
EVENTS_DEAD_LETTERED = Counter("events_dead_lettered", "Messages moved to a dead-letter queue.", ["queue"])
PROPAGATION_LAG = Histogram(
    "event_propagation_lag_seconds",
    "From an event's occurred_at (person's write) to its apply committing in the consumer.",
    ["event_type"],
    buckets=LAG_BUCKETS,
)


class PrometheusEventMetrics(EventMetrics):
    """The reliable-events machinery's counts (reliable_events.instruments), as the metrics above."""

    def published(self, event_type, path):
        EVENTS_PUBLISHED.labels(event_type, path).inc()

    def publish_failed(self, event_type):
        EVENT_PUBLISH_FAILURES.labels(event_type).inc()

    def applied(self, event_type, lag_seconds):
        EVENTS_APPLIED.labels(event_type).inc()
        PROPAGATION_LAG.labels(event_type).observe(lag_seconds)

    def duplicate(self, event_type):
        EVENTS_DUPLICATE.labels(event_type).inc()

    def retried(self, event_type):
        EVENTS_RETRIED.labels(event_type).inc()

    def dead_lettered(self, queue):
        EVENTS_DEAD_LETTERED.labels(queue).inc()

    def history_deleted(self, rows):
        HISTORY_DELETED.inc(rows)


# What a service hands its outbox and handlers.
EVENT_METRICS = PrometheusEventMetrics()

DEAD_LETTERS = Gauge("dead_letters", "Messages waiting in a dead-letter queue (read at scrape time).", ["queue"])
READ_WAIT = Histogram(
    "read_your_writes_wait_seconds",
    "How long a read with min_sequence waited; outcome fresh or stale.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
COLLECT_FAILURES = Counter(
    "metrics_collect_failures", "Scrape-time readings (outbox, dead letters) that failed.", ["reading"]
)


def metrics_response() -> Response:
    """The registry in Prometheus' text format."""
    return Response(generate_latest(), mimetype=None, content_type=CONTENT_TYPE_LATEST)


def read_at_scrape(reading: str, read, apply) -> None:
    """Call ``apply(read())``; a failure is counted and logged, and the scrape goes on."""
    try:
        apply(read())
    except Exception as exc:
        COLLECT_FAILURES.labels(reading).inc()
        _log.warning("metrics: could not read %s: %r", reading, exc)


class RpcMetrics(DependencyProvider):
    """Counts and times every RPC call the service handles, and logs one line per call."""

    def setup(self):
        # Not in worker_ctx.data: Nameko sends that on as message headers.
        self._started = WeakKeyDictionary()

    def worker_setup(self, worker_ctx):
        self._started[worker_ctx] = time.perf_counter()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        entrypoint = worker_ctx.entrypoint
        started = self._started.pop(worker_ctx, None)
        if not isinstance(entrypoint, Rpc) or started is None:
            return
        elapsed = time.perf_counter() - started
        if exc_info is None:
            outcome = "ok"
        elif isinstance(exc_info[1], entrypoint.expected_exceptions):
            outcome = "client_error"
        else:
            outcome = "error"
        method = entrypoint.method_name
        RPC_REQUESTS.labels(method, outcome).inc()
        RPC_DURATION.labels(method).observe(elapsed)
        _log.info(
            "rpc %s %s in %.1f ms",
            method,
            outcome,
            elapsed * 1000,
            extra={"rpc_method": method, "outcome": outcome, "duration_ms": round(elapsed * 1000, 2)},
        )


class MetricsServer(WebServer):
    """Nameko's web server, bound to ``METRICS_ADDRESS[<service>]`` instead of
    ``WEB_SERVER_ADDRESS``, for services that have no HTTP API of their own."""

    @property
    def bind_addr(self):
        addresses = self.container.config.get("METRICS_ADDRESS") or {}
        return parse_address(str(addresses.get(self.container.service_name, "127.0.0.1:0")))

    def start(self):
        super().start()
        host, port = self._sock.getsockname()[:2]
        _log.info("metrics on http://%s:%s/metrics", host, port, extra={"metrics_port": port})


class MetricsEndpoint(HttpRequestHandler):
    server = MetricsServer()


metrics_http = MetricsEndpoint.decorator
