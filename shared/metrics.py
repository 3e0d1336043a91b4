"""Prometheus metrics of every service, labelled by service so one process can host all five."""

from __future__ import annotations

from collections.abc import Callable

from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import metrics as http_metrics
from prometheus_fastapi_instrumentator.metrics import Info

EVENTS_APPENDED = Counter(
    "yuqing_events_appended_total",
    "Events appended to a service's event store",
    ["service", "event_type"],
)
EVENTS_PUBLISHED = Counter(
    "yuqing_events_published_total",
    "Events relayed from the outbox to Kafka",
    ["service", "topic"],
)
OUTBOX_BACKLOG = Gauge(
    "yuqing_outbox_backlog",
    "Stored events not yet relayed to Kafka, counted in the store by every replica",
    ["service"],
)
CONSUMER_LAG = Gauge(
    "yuqing_consumer_lag",
    "Messages on a partition that the service's consumer group has not yet committed",
    ["service", "topic", "partition"],
)
OBLIGATIONS_OWED = Gauge(
    "yuqing_obligations_owed",
    "Duties still owed, by level and whether their deadline has passed",
    ["level", "overdue"],
)
DELIVERIES_FAILED = Counter(
    "yuqing_deliveries_failed_total",
    "Delivery attempts that failed, by channel",
    ["channel"],
)
NOTIFICATIONS_UNREACHABLE = Counter(
    "yuqing_notifications_unreachable_total",
    "People a page could not tell (no contact on a channel that reaches them), by duty level",
    ["level"],
)
ACKNOWLEDGE_SECONDS = Histogram(
    "yuqing_acknowledge_seconds",
    "Time from a notification being sent to its recipient acknowledging it",
    buckets=(30, 60, 120, 300, 600, 900, 1800, 3600, 7200),
)
OUTBOX_ERRORS = Counter(
    "yuqing_outbox_errors_total", "Failed attempts to relay the outbox", ["service"]
)
EVENTS_CONSUMED = Counter(
    "yuqing_events_consumed_total",
    "Events handled by a consumer, by outcome",
    ["service", "event_type", "outcome"],
)
DEAD_LETTERS = Counter(
    "yuqing_dead_letters_total", "Messages sent to the dead-letter topic", ["service", "topic"]
)
UNTRUSTED_RELAY_HEADERS = Counter(
    "yuqing_relay_headers_untrusted_total",
    "Events whose relay headers (epoch, traceparent) their producer did not sign: ignored",
    ["producer", "topic"],
)
CONSUME_SECONDS = Histogram(
    "yuqing_consume_seconds", "Time to handle one consumed event", ["service"]
)


# --------------------------------------------------------------------------- HTTP

# HTTP requests, counted and timed by prometheus-fastapi-instrumentator's middleware
# (shared/api.py): by route template (`handler`, "none" for a path no route matches),
# method, exact status and service. Made once: the five apps of one process share them,
# each request's `Info` naming its service.
HTTP_LABELS = {"service": "the service whose app answered"}
_HTTP = (
    http_metrics.requests(
        metric_namespace="yuqing",
        metric_doc="HTTP requests answered, by route template, method, status and service",
        custom_labels=HTTP_LABELS,
    ),
    http_metrics.latency(
        metric_namespace="yuqing",
        metric_doc="HTTP request latency in seconds, by route template, method, status and service",
        custom_labels=HTTP_LABELS,
    ),
)
HTTP_INSTRUMENTATIONS: tuple[Callable[[Info], None], ...] = tuple(m for m in _HTTP if m)


def http_instrumentation(service: str) -> Callable[[Info], None]:
    """What the instrumentator records of one request that `service`'s app answered."""

    def record(info: Info) -> None:
        vars(info)["service"] = service  # the custom label is read from the request's Info
        for instrumentation in HTTP_INSTRUMENTATIONS:
            instrumentation(info)

    return record


# --------------------------------------------------------------------------- Kafka


def kafka_metrics(service: str) -> KafkaPrometheusMiddleware:
    """FastStream's Prometheus middleware for `service`'s broker, on the process registry
    that /metrics serves: messages received, processed (by status: acked, nacked, error...)
    and published, with their sizes, durations and exceptions, per topic, as
    `faststream_*{app_name="<service>"}` (the names FastStream's own Grafana dashboard reads).
    The five brokers of one process share the metrics, told apart by `app_name`."""
    return KafkaPrometheusMiddleware(registry=REGISTRY, app_name=service)
