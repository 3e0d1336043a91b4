"""Prometheus metrics of every service, labelled by service so one process can host all five."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
CONSUME_SECONDS = Histogram(
    "yuqing_consume_seconds", "Time to handle one consumed event", ["service"]
)
HTTP_REQUESTS = Counter(
    "yuqing_http_requests_total",
    "HTTP requests served",
    ["service", "method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "yuqing_http_request_seconds", "HTTP request latency", ["service", "method", "route"]
)
