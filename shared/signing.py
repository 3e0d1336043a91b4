"""Signed events: who published an event on the bus, and proof that they did.

Every service signs what its outbox relay publishes with a key of its own: HMAC-SHA256
over the canonical form of the event, that is the canonical JSON (sorted keys, compact
separators, UTF-8) of `{"envelope", "producer", "topic"}`, where the envelope is the event
as JSON (`Envelope.model_dump(mode="json")`, exactly what the archive stores) and the topic
is the logical one (`intake.events`, without the deployment's prefix). The signature
travels in the `yuqing-signature` header (`sha256=<hex>`), the producer in
`yuqing-producer`.

A service's key is derived from the deployment's bus secret and the service's name
(HKDF-SHA256, RFC 5869), so a signature made for one service never holds for another.
A consumer takes an event only when it came on its own type's topic, from that topic's
owner (`intake.events` is intake's), signed with the owner's key: `check_delivery` says
why not otherwise. The archive keeps each event's signature in its chain and checks it
again when the chain is verified.

Pure: no I/O, no settings, no broker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from shared.events import ALL_TOPICS, EventError, payload_class

SIGNATURE_HEADER = "yuqing-signature"
PRODUCER_HEADER = "yuqing-producer"
# The relay's own headers (the broker epoch, the traceparent) signed by the producer too,
# bound to the event's signature: a forged epoch would make consumers read a topic again, a
# forged traceparent would hang the hop under someone else's span.
RELAY_SIGNATURE_HEADER = "yuqing-relay-signature"
# A record that carries no event, only the relay's epoch (`yuqing-marker: broker-epoch`):
# sent after a wipe where a consumer could stand past the refilled log's end.
MARKER_HEADER = "yuqing-marker"
EPOCH_MARKER = "broker-epoch"


def marker_binding(topic: str) -> str:
    """What a marker's relay signature is bound to in place of an event's signature."""
    return f"marker:{topic}"


SCHEME = "sha256"
MIN_BUS_SECRET_BYTES = 32  # an HMAC key shorter than the hash output is guessable (RFC 7518 3.2)
_HKDF_SALT = b"yuqing-bus-v1"
_HKDF_INFO = b"yuqing event signing key:"

# Each service's topic, and so the only producer whose events it carries.
TOPIC_OWNERS: Mapping[str, str] = {topic: topic.removesuffix(".events") for topic in ALL_TOPICS}


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """One byte form per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def canonical_form(envelope: Mapping[str, Any], *, topic: str, producer: str) -> bytes:
    """The bytes a producer signs: the envelope, the topic it is published on, and who."""
    return canonical_json({"envelope": envelope, "producer": producer, "topic": topic})


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF with SHA-256 (RFC 5869): extract a key from `ikm`, expand it to `length` bytes."""
    if not 0 < length <= 255 * hashlib.sha256().digest_size:
        raise ValueError(f"HKDF-SHA256 cannot make {length} bytes")
    prk = hmac.new(salt or bytes(hashlib.sha256().digest_size), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // hashlib.sha256().digest_size) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def derive_key(secret: bytes, service: str) -> bytes:
    """A service's 32-byte signing key: HKDF-SHA256 of the bus secret with the service's
    name as the context, so no two services share a key."""
    return hkdf_sha256(secret, salt=_HKDF_SALT, info=_HKDF_INFO + service.encode("utf-8"))


# A secret's own spread of bytes, times its length, must say at least this many bits: 32
# random characters of any alphabet do (hex: ~120), 32 times one letter says 0.
MIN_SECRET_ESTIMATED_BITS = 96
# What the shipped examples hold where a secret goes: a deployment that kept one is known.
PLACEHOLDERS = (b"replace-me", b"changeme", b"change-me")


def estimated_bits(secret: bytes) -> float:
    """The secret's length times the Shannon entropy of its own bytes: a floor no guesser
    cares about, but it tells a random value from a repeated or patterned one."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    return -sum(n * math.log2(n / len(secret)) for n in counts.values())


def weak_secret(secret: bytes, name: str, what: str) -> str | None:
    """Why `secret` (the setting `name`, `what` it is for) is too weak, or None."""
    advice = "(e.g. `openssl rand -base64 48`)"
    if len(secret) < MIN_BUS_SECRET_BYTES:
        return (
            f"{name} is {len(secret)} bytes long; {what} needs at least "
            f"{MIN_BUS_SECRET_BYTES} random bytes {advice}"
        )
    lowered = secret.lower()
    if any(marker in lowered for marker in PLACEHOLDERS):
        return f"{name} is still the example's placeholder; {what} needs random bytes {advice}"
    bits = estimated_bits(secret)
    if bits < MIN_SECRET_ESTIMATED_BITS:
        return (
            f"{name} repeats itself (about {bits:.0f} bits in {len(secret)} bytes); {what} "
            f"needs random bytes {advice}"
        )
    return None


def secret_problem(secret: bytes, name: str = "YUQING_BUS_SECRET") -> str | None:
    """Why a bus secret is too weak to sign with, or None."""
    return weak_secret(secret, name, "the event signing secret")


def event_topic(envelope: Mapping[str, Any]) -> str | None:
    """The topic an event's type belongs on, from its envelope; None for an unknown type."""
    event_type = envelope.get("event_type")
    if not isinstance(event_type, str):
        return None
    try:
        return payload_class(event_type).TOPIC
    except EventError:
        return None


class BusKeys:
    """The signing keys of every service, derived from the one bus secret."""

    def __init__(self, secret: bytes, previous: Sequence[bytes] = ()) -> None:
        # The current secret signs; earlier ones (a rotation) still verify what they signed:
        # events in flight and the archive's whole log.
        self._secrets = (secret, *previous)
        self._keys: dict[tuple[int, str], bytes] = {}

    def key_for(self, service: str, generation: int = 0) -> bytes:
        key = self._keys.get((generation, service))
        if key is None:
            secret = self._secrets[generation]
            key = self._keys[(generation, service)] = derive_key(secret, service)
        return key

    def _digest(self, form: bytes, producer: str, generation: int) -> str:
        digest = hmac.new(self.key_for(producer, generation), form, hashlib.sha256).hexdigest()
        return f"{SCHEME}={digest}"

    def sign(self, envelope: Mapping[str, Any], *, topic: str, producer: str) -> str:
        """The signature `producer` gives the envelope published on `topic`."""
        return self._digest(canonical_form(envelope, topic=topic, producer=producer), producer, 0)

    def signature_holds(
        self, signature: str, envelope: Mapping[str, Any], *, topic: str, producer: str
    ) -> bool:
        form = canonical_form(envelope, topic=topic, producer=producer)
        return self._holds(form, producer, signature)

    def _holds(self, form: bytes, producer: str, signature: str) -> bool:
        return any(
            hmac.compare_digest(self._digest(form, producer, g).encode(), signature.encode())
            for g in range(len(self._secrets))
        )

    def seal(self, form: bytes, *, context: str) -> str:
        """An HMAC-SHA256 of `form` under the key derived for `context`, a name that is no
        service's (e.g. "archive-seal"): what a service vouches for in its own store, never
        mistaken for an event's signature (no topic is owned by `context`)."""
        return self._digest(form, context, 0)

    def seal_holds(self, seal: str, form: bytes, *, context: str) -> bool:
        return self._holds(form, context, seal)

    def sign_relay(self, values: Mapping[str, str], *, event_signature: str, producer: str) -> str:
        """`producer`'s signature over the relay's headers `values` sent with the event that
        `event_signature` signs (so they cannot be moved to another event)."""
        return self._digest(relay_form(values, event_signature), producer, 0)

    def relay_holds(
        self, signature: str, values: Mapping[str, str], *, event_signature: str, producer: str
    ) -> bool:
        return self._holds(relay_form(values, event_signature), producer, signature)


def relay_form(values: Mapping[str, str], event_signature: str) -> bytes:
    """The bytes a relay signs for its headers: their values and the event's signature."""
    return b"relay-headers:" + canonical_json({"event": event_signature, "headers": values})


def check_signed(
    keys: BusKeys,
    envelope: Mapping[str, Any],
    *,
    topic: str,
    producer: str | None,
    signature: str | None,
) -> str | None:
    """Why this event is not one its topic's owner published, or None when it is.

    `topic` is the (logical) topic the event came on, or is recorded under. Checked in
    this order: signed at all, the event's type belongs on that topic, the producer owns
    the topic, the signature is the owner's over this very envelope.
    """
    if not signature:
        return f"unsigned event: no {SIGNATURE_HEADER} header"
    if not producer:
        return f"unsigned event: no {PRODUCER_HEADER} header"
    belongs = event_topic(envelope)
    event_type = envelope.get("event_type")
    if belongs != topic:
        return f"wrong topic: {event_type} belongs on {belongs}, not {topic}"
    owner = TOPIC_OWNERS.get(topic)
    if producer != owner:
        return f"wrong producer: {topic} carries only {owner}'s events, not {producer}'s"
    if not keys.signature_holds(signature, envelope, topic=topic, producer=producer):
        return f"bad signature: the event is not signed with {producer}'s key"
    return None
