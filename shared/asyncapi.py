"""The AsyncAPI 3 document of the event bus, written from the declared events themselves.

Every event type is a message with its own payload schema (the envelope with that type's
payload, `event_type` and `schema_version` fixed), on the channel of its topic; the
dead-letter topic is a channel too. The operations are those of all five services, from
the one declaration of the bus (shared/events.py: each topic's owner sends on it, each
service receives what `SUBSCRIPTIONS` says it reads), whichever services run in the
process that serves it: in the distributed shape nginx and the Ingress send
`/asyncapi.json` to the archive, and its document is the whole bus's. The servers are
the configured bootstrap brokers, one each, with the configured Kafka security. A
partner's engineer can generate a consumer from it that rejects what the system would
never send.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field, create_model
from pydantic.json_schema import models_json_schema

from shared.events import (
    ALL_TOPICS,
    DEAD_LETTER_TOPIC,
    SUBSCRIPTIONS,
    Envelope,
    EventPayload,
    event_types,
)
from shared.settings import SERVICE_NAMES, Settings
from shared.signing import PRODUCER_HEADER, RELAY_SIGNATURE_HEADER, SIGNATURE_HEADER, TOPIC_OWNERS

REF = "#/components/schemas/{model}"


class DeadLetter(BaseModel):
    """A message a consumer could not act on, with the reason (yuqing.deadletter)."""

    consumer: str = Field(description="The consumer that gave up on it, e.g. grading-consumer")
    source_topic: str = Field(description="The topic it arrived on")
    reason: str = Field(description="Why it was not handled")
    failed_at: str = Field(description="When, ISO 8601")
    message: str = Field(description="The message as received, decoded as UTF-8")


def _typed_envelope(kind: type[EventPayload]) -> type[BaseModel]:
    """The envelope as it travels with a `kind` payload: a schema, never a validator."""
    fields: dict[str, Any] = {
        "event_type": (Literal[kind.EVENT_TYPE], ...),
        "schema_version": (Literal[kind.SCHEMA_VERSION], ...),
        "payload": (kind, ...),
    }
    doc = " ".join((f"{kind.EVENT_TYPE} on {kind.TOPIC}.", (kind.__doc__ or "").strip()))
    model: type[BaseModel] = create_model(
        kind.EVENT_TYPE + "Event", __base__=Envelope, __doc__=doc.strip(), **fields
    )
    return model


def _summary(kind: type[EventPayload]) -> str:
    doc = (kind.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else kind.EVENT_TYPE


HEADERS = {
    "type": "object",
    "properties": {
        "event_type": {"type": "string", "description": "The message's event type"},
        "event_id": {"type": "string", "format": "uuid"},
        "content-type": {"type": "string", "const": "application/json"},
        PRODUCER_HEADER: {
            "type": "string",
            "description": "The service that published it: the owner of its topic",
        },
        SIGNATURE_HEADER: {
            "type": "string",
            "pattern": "^sha256=[0-9a-f]{64}$",
            "description": (
                "HMAC-SHA256 of the canonical JSON of {envelope, producer, topic} with the "
                "producer's key (derived from the deployment's bus secret): a consumer "
                "takes only what the topic's owner signed"
            ),
        },
        "correlation_id": {
            "type": "string",
            "description": "FastStream's correlation header: the envelope's correlation_id",
        },
        "yuqing-epoch": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": (
                "How many times the producer's relay found the broker had lost what it had "
                "sent: a consumer that sees it grow reads the topic again from its start"
            ),
        },
        "traceparent": {
            "type": "string",
            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": (
                "W3C trace context of the span that published it: the trace id is the "
                "envelope's correlation_id"
            ),
        },
        RELAY_SIGNATURE_HEADER: {
            "type": "string",
            "pattern": "^sha256=[0-9a-f]{64}$",
            "description": (
                "HMAC-SHA256, with the producer's key, of `relay-headers:` and the canonical "
                "JSON of {event: <yuqing-signature>, headers: {yuqing-epoch, traceparent}}: "
                "a consumer follows the epoch and the traceparent only when it holds"
            ),
        },
    },
    "required": ["event_type", "event_id", PRODUCER_HEADER, SIGNATURE_HEADER],
}
DEAD_LETTER_HEADERS = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": 500, "description": "Why, cut to 500"},
        "consumer": {"type": "string", "description": "The consumer that gave up on it"},
        "source_topic": {"type": "string", "description": "The topic it arrived on"},
    },
    "required": ["reason", "consumer", "source_topic"],
}


def _package_version() -> str:
    try:
        return version("yuqing")
    except PackageNotFoundError:
        return "0"


def asyncapi_document(settings: Settings) -> dict[str, Any]:
    """The document of the whole bus as `settings` deploy it (topic names, brokers,
    security): the same whichever services the serving process runs."""
    kinds = sorted(event_types().values(), key=lambda k: (k.TOPIC, k.EVENT_TYPE))
    envelopes = {k.EVENT_TYPE: _typed_envelope(k) for k in kinds}
    models: list[type[BaseModel]] = [*envelopes.values(), DeadLetter]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})

    messages: dict[str, Any] = {
        k.EVENT_TYPE: {
            "name": k.EVENT_TYPE,
            "title": k.EVENT_TYPE,
            "summary": _summary(k),
            "contentType": "application/json",
            "headers": HEADERS,
            "payload": {"$ref": REF.format(model=envelopes[k.EVENT_TYPE].__name__)},
            "correlationId": {"location": "$message.payload#/correlation_id"},
            "bindings": {"kafka": {"key": {"type": "string", "description": "incident_id"}}},
        }
        for k in kinds
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": _summary_of(DeadLetter),
        "contentType": "application/json",
        "headers": DEAD_LETTER_HEADERS,
        "payload": {"$ref": REF.format(model="DeadLetter")},
    }

    channels: dict[str, Any] = {}
    for topic in ALL_TOPICS:
        channels[_channel(topic)] = {
            "address": settings.topic(topic),
            "description": f"Events of the {topic.split('.')[0]} service, keyed by incident_id",
            "messages": {
                k.EVENT_TYPE: {"$ref": f"#/components/messages/{k.EVENT_TYPE}"}
                for k in kinds
                if topic == k.TOPIC
            },
        }
    channels[_channel(DEAD_LETTER_TOPIC)] = {
        "address": settings.topic(DEAD_LETTER_TOPIC),
        "description": "Messages a consumer could not act on, with the reason",
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }

    operations = _operations(kinds)
    servers, security_schemes = _servers(settings)
    components: dict[str, Any] = {"messages": messages, "schemas": schemas}
    if security_schemes:
        components["securitySchemes"] = security_schemes

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "yuqing events",
            "version": _package_version(),
            "description": (
                "The topics the yuqing services publish and consume. Every message is an "
                "envelope (event id, type, schema version, incident, stream position, actor, "
                "correlation) around its type's payload, keyed by incident_id; one incident "
                "stays in order on every topic."
            ),
        },
        "defaultContentType": "application/json",
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def _operations(kinds: list[type[EventPayload]]) -> dict[str, Any]:
    """What every service sends and receives, from the declaration of the bus: the owner
    of each topic sends its types on it (shared/signing.py's TOPIC_OWNERS, the topics of
    shared/events.py), each consumer receives every message of the topics `SUBSCRIPTIONS`
    gives it, and dead-letters what it cannot act on."""
    topics_of = {service: topic for topic, service in TOPIC_OWNERS.items()}
    dead = _channel(DEAD_LETTER_TOPIC)
    operations: dict[str, Any] = {}
    for service in SERVICE_NAMES:
        topic = topics_of.get(service)
        sent = [k for k in kinds if topic == k.TOPIC]
        if topic is not None and sent:
            operations[f"{service}_sends"] = _operation(
                "send", topic, sent, f"{service} relays its stored events"
            )
        consumed = SUBSCRIPTIONS.get(service, ())
        for read in consumed:
            received = [k for k in kinds if read == k.TOPIC]
            operations[f"{service}_receives_{_channel(read)}"] = _operation(
                "receive",
                read,
                received,
                f"{service} reads every message of {read}: it acts on the types it handles "
                "and passes over the others",
            )
        if consumed:
            operations[f"{service}_dead_letters"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{dead}"},
                "summary": f"{service} gives up on a message, with the reason",
                "messages": [{"$ref": f"#/channels/{dead}/messages/DeadLetter"}],
            }
    return operations


# The AsyncAPI 3 security scheme of each SASL mechanism the services speak.
_SASL_SCHEMES = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}


def _servers(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """One server per bootstrap broker (`host:port`, as configured), on the configured
    security protocol: `kafka` in the clear, `kafka-secure` over TLS (SSL, SASL_SSL); the
    SASL mechanism (SASL_*) or, over SSL with a client certificate configured, mutual TLS
    named as the security scheme a client must satisfy. The servers, and the security
    schemes they refer to (none configured, none)."""
    configured = settings.kafka_bootstrap_servers or "localhost:9092"
    hosts = [h.strip() for h in configured.split(",") if h.strip()] or ["localhost:9092"]
    protocol = settings.kafka_security_protocol
    tls = protocol in ("SSL", "SASL_SSL")
    schemes: dict[str, Any] = {}
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism
        schemes["sasl"] = {
            "type": _SASL_SCHEMES[mechanism],
            "description": (
                f"SASL {mechanism} with the username and password the deployment gives the "
                f"client ({protocol})"
            ),
        }
    elif tls and settings.kafka_ssl_certfile is not None:
        schemes["mutualTLS"] = {
            "type": "X509",
            "description": "Mutual TLS: the client shows a certificate the brokers trust",
        }
    wire = "TLS" if tls else "in the clear"
    servers: dict[str, Any] = {}
    for n, host in enumerate(hosts, start=1):
        server: dict[str, Any] = {
            "host": host,
            "protocol": "kafka-secure" if tls else "kafka",
            "title": f"Kafka bootstrap broker {n} of {len(hosts)}",
            "description": (
                f"One of the deployment's bootstrap brokers ({protocol}, {wire}): a client "
                "may start from any of them"
            ),
        }
        if schemes:
            server["security"] = [
                {"$ref": f"#/components/securitySchemes/{name}"} for name in schemes
            ]
        servers[f"kafka-{n}"] = server
    return servers, schemes


def _summary_of(model: type[BaseModel]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def _channel(topic: str) -> str:
    return topic.replace(".", "_")


def _operation(
    action: str, topic: str, kinds: Iterable[type[EventPayload]], summary: str
) -> dict[str, Any]:
    channel = _channel(topic)
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{k.EVENT_TYPE}"} for k in kinds],
    }


_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>{{ doc.info.title }} · AsyncAPI {{ doc.asyncapi }}</title></head>
<body>
<h1>{{ doc.info.title }} <small>v{{ doc.info.version }}</small></h1>
<p>{{ doc.info.description }}</p>
<p>机器可读版本：<a href="asyncapi.json">asyncapi.json</a>（AsyncAPI {{ doc.asyncapi }}）</p>
<h2>主题 Channels</h2>
<table border="1" cellpadding="4">
<thead><tr><th>主题 address</th><th>说明</th><th>消息 messages</th></tr></thead>
<tbody>
{% for name, channel in doc.channels.items() %}<tr>
<td><code>{{ channel.address }}</code></td><td>{{ channel.description }}</td>
<td>{% for m in channel.messages %}<a href="#{{ m }}">{{ m }}</a>
{% endfor %}</td>
</tr>{% endfor %}
</tbody></table>
<h2>收发 Operations</h2>
<table border="1" cellpadding="4">
<thead><tr><th>operation</th><th>action</th><th>channel</th><th>messages</th></tr></thead>
<tbody>
{% for name, op in doc.operations.items() %}<tr>
<td><code>{{ name }}</code></td><td>{{ op.action }}</td>
<td><code>{{ op.channel["$ref"].rsplit("/", 1)[-1] }}</code></td>
<td>{{ op.messages | map(attribute="$ref") | map("replace", "#/channels/", "") | join(", ") }}</td>
</tr>{% endfor %}
</tbody></table>
<h2>消息 Messages</h2>
{% for name, message in doc.components.messages.items() %}
<h3 id="{{ name }}">{{ name }}</h3>
<p>{{ message.summary }}</p>
<details><summary>payload schema</summary><pre>{{ schemas[name] }}</pre></details>
{% endfor %}
</body></html>
"""
)


def asyncapi_page(document: dict[str, Any]) -> str:
    """The document as a page a partner's engineer reads in a browser: no script, nothing
    loaded from elsewhere."""
    components = document["components"]
    schemas = {
        name: json.dumps(
            components["schemas"][message["payload"]["$ref"].rsplit("/", 1)[-1]],
            ensure_ascii=False,
            indent=2,
        )
        for name, message in components["messages"].items()
    }
    return _PAGE.render(doc=document, schemas=schemas)
