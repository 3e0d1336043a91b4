"""The per-incident hash chain: each stored event linked to the one stored before it, with
the signature its producer gave it.

The chain follows ingest order, not causal order: it must only ever grow at its end, or an
honest late arrival would look like an edit. A link's hash proves the log was not edited
after the archive stored it; the producer's signature (shared/signing.py), recorded with
it, proves the event is one its topic's owner published: an event written into the log
with its hash recomputed has no signature that holds, since that needs the producer's key.
An archive upgraded with its log holds events from before it recorded signatures: when
signing began it sealed each of them (`seal_form`, with a key of its own derived from the
bus secret), and only an event whose seal holds passes unsigned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.signing import BusKeys, check_signed, event_topic
from shared.signing import canonical_json as canonical_json  # one byte form, re-exported

GENESIS = "0" * 64


def link_hash(prev_hash: str, envelope: Mapping[str, Any]) -> str:
    """sha256 over the previous link's hash and this envelope's canonical JSON."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(envelope)).hexdigest()


@dataclass(frozen=True)
class ChainLink:
    """One stored event as the chain sees it, and who signed it."""

    position: int
    event_id: str
    envelope: Mapping[str, Any]
    prev_hash: str
    hash: str
    producer: str | None = None
    signature: str | None = None
    # Logged before this archive began recording signatures, and sealed so by the archive
    # when signing began (`seal_form`): its hash chain is checked, it has no signature.
    before_signing: bool = False
    # It carries an archive seal at all (one that does not hold, when not before_signing).
    sealed: bool = False


class ChainBreak(BaseModel):
    position: int
    event_id: str | None
    reason: str


class ChainReport(BaseModel):
    incident_id: str
    ok: bool
    length: int
    head: str
    # The first link that does not hold (its hash, its place or its signature).
    broken: ChainBreak | None = None
    # Every stored event whose hash or producer signature does not hold, in chain order.
    failures: list[ChainBreak] = []
    # Links logged before signing began and sealed so (an archive upgraded with its log):
    # their hash is checked, they have no signature.
    unsigned_before_signing: int = 0


def _link_problem(link: ChainLink, expected_position: int, prev: str) -> str | None:
    if link.position != expected_position:
        return f"position {expected_position} is missing (found {link.position})"
    if link.prev_hash != prev:
        return "prev_hash does not match the hash of the link before"
    if str(link.envelope.get("event_id")) != link.event_id:
        return "stored event_id differs from the envelope's"
    if link_hash(prev, link.envelope) != link.hash:
        return "the stored event does not match its hash: it was altered"
    return None


# What the archive's seal of an event logged before signing began is made with: a key
# derived from the bus secret for this name, which is no service's (shared/signing.py).
SEAL_CONTEXT = "archive-seal"
UNSIGNED = (
    "unsigned event written after signing began: no producer signature is recorded and "
    "it is none of the events the archive sealed when signing began"
)
BAD_SEAL = (
    "the archive's seal (an event logged before signing began) does not hold: the event "
    "or its place in the log was altered, or it was written into the store"
)


def seal_form(
    *, seq: Any, incident_id: Any, position: Any, prev_hash: Any, envelope: Any
) -> bytes | None:
    """The bytes the archive seals an unsigned event of its log with when signing begins:
    the envelope and its place (ingest seq, incident, chain position, previous hash), so a
    seal holds for that one stored event only. None when they are not JSON (altered)."""
    try:
        form = canonical_json(
            {
                "envelope": envelope,
                "incident_id": incident_id,
                "position": position,
                "prev_hash": prev_hash,
                "seq": seq,
            }
        )
    except (TypeError, ValueError):
        return None
    return b"archive-seal:" + form


def signature_problem(
    envelope: Mapping[str, Any],
    producer: str | None,
    signature: str | None,
    keys: BusKeys,
    *,
    sealed: bool = False,
) -> str | None:
    """Why a logged event is not one its producer signed, or None when it is. `sealed`:
    it carries an archive seal, which did not hold."""
    if not signature:
        return BAD_SEAL if sealed else UNSIGNED
    topic = event_topic(envelope) or "?"
    problem = check_signed(keys, envelope, topic=topic, producer=producer, signature=signature)
    return f"the producer signature does not hold ({problem})" if problem else None


def _signature_problem(link: ChainLink, keys: BusKeys) -> str | None:
    return signature_problem(link.envelope, link.producer, link.signature, keys, sealed=link.sealed)


def verify_chain(
    incident_id: str,
    links: Sequence[ChainLink],
    expected_length: int,
    keys: BusKeys | None = None,
) -> ChainReport:
    """Recompute the chain in stored order; name the first link that does not hold, and
    every event whose hash, or (given the bus keys) producer signature, does not hold."""
    prev, expected_position = GENESIS, 1
    failures: list[ChainBreak] = []
    for link in links:
        reason = _link_problem(link, expected_position, prev)
        if reason is None and keys is not None and not link.before_signing:
            reason = _signature_problem(link, keys)
        if reason:
            failures.append(
                ChainBreak(position=expected_position, event_id=link.event_id, reason=reason)
            )
        # Each link is checked against the one stored before it, so that one edit or one
        # removal names one place, not every link after it.
        prev, expected_position = link.hash, link.position + 1
    if len(links) != expected_length:
        failures.append(
            ChainBreak(
                position=min(len(links), expected_length) + 1,
                event_id=None,
                reason=(
                    f"the chain head records {expected_length} links but {len(links)} are stored"
                ),
            )
        )
    return ChainReport(
        incident_id=incident_id,
        ok=not failures,
        length=len(links),
        head=links[-1].hash if links else GENESIS,
        broken=failures[0] if failures else None,
        failures=failures,
        unsigned_before_signing=sum(1 for link in links if link.before_signing),
    )
