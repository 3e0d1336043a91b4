"""An archive upgraded with its log: what it logged before it recorded signatures is still
folded and its hash chain still checked, while an unsigned event logged after (one written
into the store by other means) is folded nowhere."""

from __future__ import annotations

from typing import Any

from services.archive.projections import LOG, ArchiveViews
from shared.signing import BusKeys
from tests.fakes.mongo import FakeMongo

KEYS = BusKeys(b"a-bus-secret-that-is-long-enough-for-hmac-sha256")


def logged(seq: int, **fields: Any) -> dict[str, Any]:
    return {"_id": f"e{seq}", "seq": seq, "incident_id": "inc-old", "envelope": {}, **fields}


async def test_events_logged_before_signing_stay_trusted_and_later_unsigned_ones_do_not() -> None:
    db: Any = FakeMongo().database("fake_archive")
    views = ArchiveViews(db, keys=KEYS)
    await db[LOG].insert_many([logged(1), logged(2)])  # the upgraded archive's old log

    await views.mark_signing_start()
    await views.mark_signing_start()  # every later start keeps the first mark

    assert views.signed(logged(1))
    assert views.signed(logged(2))
    assert views.before_signing(logged(2))
    # Written after the upgrade without a signature, or with an empty one: not trusted.
    assert not views.signed(logged(3))
    assert not views.signed(logged(2, signature=None, producer="intake"))
    # A fresh archive (nothing logged yet) trusts no unsigned event at all.
    empty: Any = FakeMongo().database("fake_archive")
    fresh = ArchiveViews(empty, keys=KEYS)
    await fresh.mark_signing_start()
    assert not fresh.signed(logged(1))
