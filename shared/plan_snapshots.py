"""What a service decides by under each plan version, kept in its own database.

Grading keeps each version's rulebook, notification each version's duty table: an open
incident is decided by the version it started under, even after the pack moved on and the
service restarted. Each service stores the snapshot of the version in force at start (the
first time it is in force) and reads any other one once. A version already stored with
other content stops the start: a plan that changes must change its `version` in
plan.yaml, or incidents pinned to the old text would be decided by the new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from pymongo.asynchronous.database import AsyncDatabase

from shared.plan import PlanError
from shared.store import Document


def snapshot_key(plan_id: str | None, plan_version: str | None) -> str:
    """A stored snapshot's `_id`."""
    return f"{plan_id}@{plan_version}"


def content_digest(data: Any) -> str:
    """A snapshot's content (JSON-ready), hashed: what tells two texts of one version apart."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Snapshot(Protocol):
    @property
    def key(self) -> str: ...


S = TypeVar("S", bound=Snapshot)


class SnapshotStore(Generic[S]):
    """The snapshots of one collection; `current` is the one in force. Snapshots never
    change once stored: each is read from the database once."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        collection: str,
        current: S,
        load: Callable[[Document], S],
    ) -> None:
        self.collection = db[collection]
        self.current = current
        self._load = load
        self._known: dict[str, S] = {current.key: current}

    async def record_current(self, doc: Document, refusal: Callable[[Document], str]) -> None:
        """Store `doc`, the current snapshot's document (with its `digest`), unless its
        version is stored already; PlanError, worded by `refusal(stored)`, when it is
        stored with another digest."""
        await self.collection.update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)
        stored = await self.collection.find_one({"_id": doc["_id"]}) or doc
        if stored.get("digest") != doc["digest"]:
            raise PlanError(refusal(stored))

    async def stored(self, plan_id: str | None, plan_version: str | None) -> S | None:
        key = snapshot_key(plan_id, plan_version)
        if key not in self._known:
            doc = await self.collection.find_one({"_id": key})
            if doc is None:
                return None
            self._known[key] = self._load(doc)
        return self._known[key]
