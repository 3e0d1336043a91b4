"""The archive and attached files: the incident view lists each with its logged sha256,
the case carries them, the timeline says so, and the hash chain vouches for the hash."""

from __future__ import annotations

import hashlib
from dataclasses import replace

from services.archive.domain import fold, link_hash, verify_chain
from services.archive.domain.cases import case_figures, case_record
from shared.events import AttachmentAdded, Envelope
from tests.unit.test_archive_fold import (
    INCIDENT,
    MONITOR,
    at,
    chain_of,
    full_incident,
    lines_of,
)

FILE = b"%PDF-1.4 scanned reply"
DIGEST = hashlib.sha256(FILE).hexdigest()


def with_attachment() -> tuple[list[Envelope], Envelope]:
    script = full_incident()
    added = script.add(
        AttachmentAdded(
            attachment_id="att-1",
            report_id="r1",
            filename="回复函.pdf",
            content_type="application/pdf",
            size=len(FILE),
            sha256=DIGEST,
            added_by="monitor-chen",
        ),
        f"incident-{INCIDENT}",
        at(minutes=5),
        actor=MONITOR,
    )
    return script.events, added


def test_the_view_and_the_case_list_each_file_with_its_logged_sha256() -> None:
    script = full_incident()
    events, added = with_attachment()
    script.events = events

    view = fold(INCIDENT, script.logged())

    [listed] = view.attachments
    assert (listed.attachment_id, listed.report_id, listed.filename, listed.sha256) == (
        "att-1",
        "r1",
        "回复函.pdf",
        DIGEST,
    )
    assert (listed.size, listed.event_id, listed.added_at) == (
        len(FILE),
        str(added.event_id),
        at(minutes=5),
    )
    # The figures the archive takes when it archives the case.
    view.case_figures = case_figures(view, at(days=1)).model_dump(mode="json")
    case = case_record(view)
    assert case is not None
    assert [a.sha256 for a in case.attachments] == [DIGEST]
    [line] = [e for e in lines_of(script.logged()) if e.event_type == "AttachmentAdded"]
    assert DIGEST in line.summary
    assert "回复函.pdf" in line.summary


def test_a_logged_sha256_changed_afterwards_breaks_the_chain() -> None:
    events, _ = with_attachment()
    links = chain_of(events)
    assert verify_chain(INCIDENT, links, expected_length=len(links)).ok

    last = links[-1]
    forged = {**last.envelope, "payload": {**last.envelope["payload"], "sha256": "0" * 64}}
    links[-1] = replace(last, envelope=forged)

    report = verify_chain(INCIDENT, links, expected_length=len(links))
    assert not report.ok
    assert link_hash(last.prev_hash, forged) != last.hash
