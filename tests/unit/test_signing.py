"""Signed events (shared/signing.py): the canonical form, the per-service keys, the checks
a consumer makes before it handles an event, the archive's chain check of the signatures
it recorded, and the bus secret a deployment must set. Pure: no broker, no database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.archive.domain import GENESIS, ChainLink, link_hash, verify_chain
from shared.bus import (
    EPOCH_HEADER,
    TRACEPARENT_HEADER,
    BusMisconfigured,
    bus_keys,
    relay_headers,
    signed_headers,
    trusted_relay_values,
)
from shared.events import (
    Actor,
    DeadlineMissed,
    Envelope,
    EventPayload,
    IncidentResolved,
    utcnow,
)
from shared.handlers import Delivery
from shared.settings import Settings
from shared.signing import (
    PRODUCER_HEADER,
    SIGNATURE_HEADER,
    TOPIC_OWNERS,
    BusKeys,
    canonical_form,
    check_signed,
    derive_key,
    hkdf_sha256,
)

SECRET = b"a-bus-secret-that-is-long-enough-for-hmac-sha256"
KEYS = BusKeys(SECRET)


def event(payload: EventPayload, incident: str = "inc-1", version: int = 1) -> Envelope:
    return Envelope.new(
        payload,
        incident_id=incident,
        stream_id=f"s-{incident}",
        stream_version=version,
        actor=Actor(type="person", id="leader-zhang"),
    )


def resolved(incident: str = "inc-1", version: int = 1) -> Envelope:
    return event(IncidentResolved(reason="舆情平息"), incident, version)


def missed() -> Envelope:
    now = utcnow()
    payload = DeadlineMissed(
        obligation_id="ob-1", kind="phone", level=1, deadline=now, alerted_roles=()
    )
    return event(payload)


def doc(e: Envelope) -> dict[str, Any]:
    return e.model_dump(mode="json")


def signed(e: Envelope, keys: BusKeys = KEYS, producer: str | None = None) -> str:
    return keys.sign(doc(e), topic=e.topic, producer=producer or TOPIC_OWNERS[e.topic])


# --------------------------------------------------------------------------- keys and form


def test_hkdf_matches_rfc_5869_test_vectors() -> None:
    ikm = bytes([0x0B] * 22)
    case_1 = hkdf_sha256(ikm, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42).hex()
    case_3 = hkdf_sha256(ikm, salt=b"", info=b"", length=42).hex()

    assert case_1 == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert case_3 == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_each_service_has_a_key_of_its_own_from_the_one_secret() -> None:
    keys = {service: derive_key(SECRET, service) for service in TOPIC_OWNERS.values()}

    assert len(set(keys.values())) == 5
    assert all(len(k) == 32 for k in keys.values())
    assert derive_key(SECRET, "intake") == keys["intake"]  # the same everywhere it is derived
    assert derive_key(SECRET + b"!", "intake") != keys["intake"]


def test_the_canonical_form_is_sorted_compact_json_of_envelope_topic_and_producer() -> None:
    form = canonical_form({"b": 1, "a": "舆情"}, topic="intake.events", producer="intake")

    assert form == (
        '{"envelope":{"a":"舆情","b":1},"producer":"intake","topic":"intake.events"}'.encode()
    )


def test_a_signature_holds_only_for_the_same_envelope_topic_producer_and_key() -> None:
    e = resolved()
    signature = signed(e)
    other = e.model_copy(update={"payload": IncidentResolved(reason="改过")})

    assert signature.startswith("sha256=")
    assert KEYS.signature_holds(signature, doc(e), topic=e.topic, producer="intake")
    assert not KEYS.signature_holds(signature, doc(other), topic=e.topic, producer="intake")
    assert not KEYS.signature_holds(signature, doc(e), topic="grading.events", producer="intake")
    assert not KEYS.signature_holds(signature, doc(e), topic=e.topic, producer="grading")
    assert not BusKeys(b"another-secret-of-enough-length-for-this-test").signature_holds(
        signature, doc(e), topic=e.topic, producer="intake"
    )


def test_the_relay_headers_carry_the_producer_and_its_signature() -> None:
    e = resolved()

    headers = signed_headers(e, "intake", KEYS)

    assert headers[PRODUCER_HEADER] == "intake"
    assert headers[SIGNATURE_HEADER] == signed(e)
    assert (headers["event_type"], headers["event_id"]) == ("IncidentResolved", str(e.event_id))


def test_the_relays_epoch_and_traceparent_count_only_as_its_producer_signed_them() -> None:
    e, other = resolved(), resolved("inc-2")
    span = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = relay_headers(e, "intake", KEYS, epoch=3, span=span)
    delivery = Delivery(
        topic="intake.events", producer="intake", signature=headers[SIGNATURE_HEADER]
    )

    assert trusted_relay_values(KEYS, delivery, headers) == {
        EPOCH_HEADER: "3",
        TRACEPARENT_HEADER: span,
    }
    changed_span = span.replace("b7ad", "0000")
    for forged in (
        {**headers, EPOCH_HEADER: "4"},
        {**headers, TRACEPARENT_HEADER: changed_span},
        {k: v for k, v in headers.items() if k != "yuqing-relay-signature"},
    ):
        assert trusted_relay_values(KEYS, delivery, forged) == {}
    # Moved to another event, the relay's signature does not hold either.
    moved = {
        **signed_headers(other, "intake", KEYS),
        **{
            k: headers[k]
            for k in headers
            if k.startswith(("yuqing-relay", "yuqing-epoch", "traceparent"))
        },
    }
    other_delivery = Delivery(
        topic="intake.events", producer="intake", signature=moved[SIGNATURE_HEADER]
    )
    assert trusted_relay_values(KEYS, other_delivery, moved) == {}
    # Signed with another deployment's secret, neither.
    foreign = relay_headers(e, "intake", BusKeys(b"x" * 48), epoch=3, span=span)
    assert (
        trusted_relay_values(
            KEYS, delivery, {**headers, "yuqing-relay-signature": foreign["yuqing-relay-signature"]}
        )
        == {}
    )


# --------------------------------------------------------------------------- the consumer's check


def test_an_owner_signed_event_on_its_topic_passes() -> None:
    e = resolved()

    assert (
        check_signed(KEYS, doc(e), topic="intake.events", producer="intake", signature=signed(e))
        is None
    )


@pytest.mark.parametrize(
    ("producer", "signature", "reason"),
    [
        ("intake", None, "unsigned event: no yuqing-signature header"),
        (None, "sha256=00", "unsigned event: no yuqing-producer header"),
        (
            "intake",
            "sha256=" + "0" * 64,
            "bad signature: the event is not signed with intake's key",
        ),
    ],
)
def test_unsigned_and_wrongly_signed_events_are_refused_with_the_reason(
    producer: str | None, signature: str | None, reason: str
) -> None:
    e = resolved()

    assert (
        check_signed(KEYS, doc(e), topic="intake.events", producer=producer, signature=signature)
        == reason
    )


def test_an_event_signed_with_another_deployments_secret_is_refused() -> None:
    e = resolved()
    forged = signed(e, BusKeys(b"the-attackers-own-secret-long-enough-to-sign"))

    reason = check_signed(KEYS, doc(e), topic="intake.events", producer="intake", signature=forged)

    assert reason == "bad signature: the event is not signed with intake's key"


def test_an_event_of_another_topics_type_is_refused_even_signed_by_that_topics_owner() -> None:
    e = missed()  # notification's event, produced onto intake's topic
    by_intake = KEYS.sign(doc(e), topic="intake.events", producer="intake")

    reason = check_signed(
        KEYS, doc(e), topic="intake.events", producer="intake", signature=by_intake
    )

    assert reason == "wrong topic: DeadlineMissed belongs on notification.events, not intake.events"


def test_an_event_published_by_a_service_that_does_not_own_the_topic_is_refused() -> None:
    e = resolved()
    by_grading = KEYS.sign(doc(e), topic="intake.events", producer="grading")

    reason = check_signed(
        KEYS, doc(e), topic="intake.events", producer="grading", signature=by_grading
    )

    assert reason == "wrong producer: intake.events carries only intake's events, not grading's"


# --------------------------------------------------------------------------- the archive's chain


def chain(events: list[Envelope], keys: BusKeys = KEYS) -> list[ChainLink]:
    links, prev = [], GENESIS
    for position, e in enumerate(events, start=1):
        envelope = doc(e)
        digest = link_hash(prev, envelope)
        links.append(
            ChainLink(
                position,
                str(e.event_id),
                envelope,
                prev,
                digest,
                producer=TOPIC_OWNERS[e.topic],
                signature=signed(e, keys),
            )
        )
        prev = digest
    return links


def appended(links: list[ChainLink], e: Envelope, signature: str | None) -> list[ChainLink]:
    """An event written into the store at the chain's end, its hash recomputed."""
    envelope = doc(e)
    prev = links[-1].hash
    link = ChainLink(
        len(links) + 1,
        str(e.event_id),
        envelope,
        prev,
        link_hash(prev, envelope),
        producer="intake",
        signature=signature,
    )
    return [*links, link]


def test_a_signed_chain_verifies() -> None:
    links = chain([resolved(version=1), resolved(version=2)])

    report = verify_chain("inc-1", links, expected_length=2, keys=KEYS)

    assert (report.ok, report.broken, report.failures) == (True, None, [])


def test_an_event_appended_with_a_recomputed_hash_is_named_by_its_missing_signature() -> None:
    links = appended(chain([resolved(version=1)]), resolved(version=2), signature=None)

    report = verify_chain("inc-1", links, expected_length=2, keys=KEYS)

    assert not report.ok
    assert [(f.position, f.event_id) for f in report.failures] == [(2, links[1].event_id)]
    assert report.broken == report.failures[0]
    assert "no producer signature" in report.failures[0].reason
    # Without the keys the hash chain alone cannot tell: that is what the signatures are for.
    assert verify_chain("inc-1", links, expected_length=2).ok


def test_an_event_appended_with_a_forged_signature_is_named() -> None:
    forged = resolved(version=2)
    signature = signed(forged, BusKeys(b"the-attackers-own-secret-long-enough-to-sign"))
    links = appended(chain([resolved(version=1)]), forged, signature=signature)

    report = verify_chain("inc-1", links, expected_length=2, keys=KEYS)

    assert [(f.position, f.event_id) for f in report.failures] == [(2, str(forged.event_id))]
    assert "signature does not hold" in report.failures[0].reason
    assert "not signed with intake's key" in report.failures[0].reason


def test_an_edited_event_with_its_hash_recomputed_fails_its_signature_and_the_next_link() -> None:
    events = [resolved(version=v) for v in (1, 2, 3)]
    links = chain(events)
    edited = {**links[1].envelope, "payload": {"reason": "改过的原因"}}
    links[1] = ChainLink(
        2,
        links[1].event_id,
        edited,
        links[1].prev_hash,
        link_hash(links[1].prev_hash, edited),
        producer=links[1].producer,
        signature=links[1].signature,
    )

    report = verify_chain("inc-1", links, expected_length=3, keys=KEYS)

    assert [f.position for f in report.failures] == [2, 3]
    assert "signature does not hold" in report.failures[0].reason
    assert "prev_hash" in report.failures[1].reason


def test_every_failing_event_is_listed_not_only_the_first() -> None:
    events = [resolved(version=v) for v in (1, 2, 3, 4)]
    links = chain(events)
    for i in (1, 3):
        links[i] = ChainLink(
            links[i].position,
            links[i].event_id,
            links[i].envelope,
            links[i].prev_hash,
            links[i].hash,
            producer="intake",
            signature="sha256=" + "f" * 64,
        )

    report = verify_chain("inc-1", links, expected_length=4, keys=KEYS)

    assert [f.position for f in report.failures] == [2, 4]
    assert report.broken is not None
    assert report.broken.position == 2


# --------------------------------------------------------------------------- the bus secret


@pytest.mark.parametrize("given", [None, ""], ids=["unset", "empty"])
def test_production_does_not_start_without_a_bus_secret(tmp_path: Path, given: str | None) -> None:
    settings = Settings(
        environment="production", secret="k" * 48, bus_secret=given, data_dir=tmp_path
    )

    with pytest.raises(BusMisconfigured, match="YUQING_BUS_SECRET is not set"):
        bus_keys(settings)
    assert not (tmp_path / "bus.key").exists()  # none is invented


def test_production_does_not_start_with_a_weak_bus_secret(tmp_path: Path) -> None:
    settings = Settings(environment="production", bus_secret="short", data_dir=tmp_path)

    with pytest.raises(BusMisconfigured, match="YUQING_BUS_SECRET is 5 bytes long"):
        bus_keys(settings)


def test_development_makes_one_bus_secret_in_the_data_dir_and_every_process_uses_it(
    tmp_path: Path,
) -> None:
    first = bus_keys(Settings(data_dir=tmp_path))
    second = bus_keys(Settings(data_dir=tmp_path))
    e = resolved()

    assert (tmp_path / "bus.key").stat().st_mode & 0o777 == 0o600
    assert second.signature_holds(signed(e, first), doc(e), topic=e.topic, producer="intake")


def test_a_configured_bus_secret_is_what_signs(tmp_path: Path) -> None:
    keys = bus_keys(Settings(bus_secret=SECRET.decode(), data_dir=tmp_path))
    e = resolved()

    assert keys.signature_holds(signed(e), doc(e), topic=e.topic, producer="intake")
    assert not (tmp_path / "bus.key").exists()


def test_after_a_rotation_the_new_secret_signs_and_the_old_one_still_verifies(
    tmp_path: Path,
) -> None:
    new = "a-rotated-bus-secret-that-is-long-enough-for-hmac"
    rotated = bus_keys(
        Settings(bus_secret=new, bus_secret_previous=f" {SECRET.decode()} ", data_dir=tmp_path)
    )
    e = resolved()
    before = signed(e)  # logged, or in flight, under the old secret

    assert rotated.signature_holds(before, doc(e), topic=e.topic, producer="intake")
    after = signed(e, rotated)
    assert after != before
    assert after == signed(e, BusKeys(new.encode()))
    # A secret nobody configured verifies nothing.
    stranger = signed(e, BusKeys(b"the-attackers-own-secret-long-enough-to-sign"))
    assert not rotated.signature_holds(stranger, doc(e), topic=e.topic, producer="intake")


# --------------------------------------------------------------------------- a service's seal


def test_a_seal_holds_for_its_bytes_and_context_only_and_is_no_event_signature() -> None:
    form = b"archive-seal:" + b'{"seq":1}'
    seal = KEYS.seal(form, context="archive-seal")
    rotated = BusKeys(b"a-rotated-bus-secret-that-is-long-enough-for-hmac", [SECRET])
    e = resolved()

    assert KEYS.seal_holds(seal, form, context="archive-seal")
    assert rotated.seal_holds(seal, form, context="archive-seal")  # an older secret's seal
    assert not KEYS.seal_holds(seal, form + b" ", context="archive-seal")
    assert not KEYS.seal_holds(seal, form, context="intake")
    assert not BusKeys(b"x" * 48).seal_holds(seal, form, context="archive-seal")
    # Under a name no topic is owned by: never taken for an event's signature.
    sealed_event = KEYS.seal(
        canonical_form(doc(e), topic=e.topic, producer="archive-seal"), context="archive-seal"
    )
    assert (
        check_signed(KEYS, doc(e), topic=e.topic, producer="archive-seal", signature=sealed_event)
        is not None
    )
