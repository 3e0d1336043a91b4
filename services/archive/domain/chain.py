"""The per-incident hash chain: each stored event linked to the one stored before it.

The chain follows ingest order, not causal order: it must only ever grow at its end, or an
honest late arrival would look like an edit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

GENESIS = "0" * 64


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """One byte form per JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def link_hash(prev_hash: str, envelope: Mapping[str, Any]) -> str:
    """sha256 over the previous link's hash and this envelope's canonical JSON."""
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(envelope)).hexdigest()


@dataclass(frozen=True)
class ChainLink:
    """One stored event as the chain sees it."""

    position: int
    event_id: str
    envelope: Mapping[str, Any]
    prev_hash: str
    hash: str


class ChainBreak(BaseModel):
    position: int
    event_id: str | None
    reason: str


class ChainReport(BaseModel):
    incident_id: str
    ok: bool
    length: int
    head: str
    broken: ChainBreak | None = None


def verify_chain(incident_id: str, links: Sequence[ChainLink], expected_length: int) -> ChainReport:
    """Recompute the chain in stored order and name the first link that does not hold."""
    prev = GENESIS
    broken: ChainBreak | None = None
    for expected_position, link in enumerate(links, start=1):
        reason: str | None = None
        if link.position != expected_position:
            reason = f"position {expected_position} is missing (found {link.position})"
        elif link.prev_hash != prev:
            reason = "prev_hash does not match the hash of the link before"
        elif str(link.envelope.get("event_id")) != link.event_id:
            reason = "stored event_id differs from the envelope's"
        elif link_hash(prev, link.envelope) != link.hash:
            reason = "the stored event does not match its hash: it was altered"
        if reason:
            broken = ChainBreak(position=expected_position, event_id=link.event_id, reason=reason)
            break
        prev = link.hash
    if broken is None and len(links) != expected_length:
        broken = ChainBreak(
            position=min(len(links), expected_length) + 1,
            event_id=None,
            reason=f"the chain head records {expected_length} links but {len(links)} are stored",
        )
    return ChainReport(
        incident_id=incident_id,
        ok=broken is None,
        length=len(links),
        head=links[-1].hash if links else GENESIS,
        broken=broken,
    )
