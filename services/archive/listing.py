"""How the archive reads a page of its lists: flat filters and keyset windows on `sort_at`.

The embedded SecantusDB plans a find from the filter's top-level fields only: a clause
inside `$and` or `$or` makes it a collection scan, and whatever the index hands it, it
decodes, matches and sorts every candidate before applying the limit. So a list page is
read as a few queries over successive windows of `sort_at`, newest first, each a flat
filter whose first field is the window's range (served by the `list_order` index), until
the page is full; a real MongoDB serves the same queries from the same index.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from shared.clock import Clock
from shared.store import Document

ORDER = [("sort_at", DESCENDING), ("_id", DESCENDING)]
# What a list row carries: the incident's summary or the case, and the key to page on.
ROW_FIELDS = {"summary": 1, "case": 1, "sort_at": 1}
_SMALLEST_WINDOW = timedelta(minutes=10)
# Past this much history the last window reaches back without a lower bound.
_WIDEST_WINDOW = timedelta(days=3650)
_FIRST_PER_ROW = timedelta(hours=1)  # a guess, until a full page has shown the spread
# The most a window grows over the one before it. Past a quiet spell the window that
# reaches the rows again holds up to this many times what the page needs, each of them
# decoded by the embedded server: ×2 read pages after a gap in a quarter to a half of the time ×4
# took, and ×1.5 spent it on more empty windows (10,000 views, bench/bench_pipeline.py).
_GROWTH = 2.0
# Operators whose meaning depends on a sibling: never merged with another condition.
_BOUND_TOGETHER = {"$regex", "$options"}


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _operators(value: Any) -> dict[str, Any] | None:
    """A field's condition as operators (`x` is `{"$eq": x}`); None for a literal document
    or operators that must stay as they are."""
    if isinstance(value, dict) and value:
        if not all(isinstance(k, str) and k.startswith("$") for k in value):
            return {"$eq": value}
        return None if _BOUND_TOGETHER & set(value) else dict(value)
    return {"$eq": value}


def flat_query(conditions: Sequence[Document]) -> Document:
    """The conjunction of `conditions` as one flat document: conditions on different
    fields side by side, two on one field merged into one operator document when their
    operators differ (each operator applies on its own, as inside `$and`); only what
    cannot be merged that way (two `$or`, two equalities of one field) goes in `$and`."""
    query: Document = {}
    rest: list[Document] = []
    for condition in conditions:
        for field, value in condition.items():
            if field not in query:
                query[field] = value
                continue
            if field.startswith("$"):
                rest.append({field: value})
                continue
            mine, theirs = _operators(query[field]), _operators(value)
            if mine is not None and theirs is not None and not set(mine) & set(theirs):
                query[field] = {**mine, **theirs}
            else:
                rest.append({field: value})
    if rest:
        query["$and"] = [*query.get("$and", []), *rest]
    return query


def _first(field: str, clause: Any, filters: Document) -> Document:
    """`filters` and the clause on `field`, that clause first: with no index for the
    whole filter, the embedded server looks up the first field that has one."""
    return flat_query([{field: clause}, filters])


class ListWindows:
    """Reads a page newest first in windows of `sort_at`, remembering where the newest
    rows were and how densely they came, so the first window is usually the only one.
    What it remembers only sizes the windows: every row is found whatever it holds."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.newest: datetime | None = None  # the newest `sort_at` a first page showed
        # The span of `sort_at` one row took last time, per set of filtered fields.
        self.per_row: dict[tuple[str, ...], timedelta] = {}

    async def page(
        self,
        collection: AsyncCollection[Document],
        filters: Document,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Document]:
        """Up to `limit + 1` rows matching `filters`, newest first, after the key."""
        wanted = limit + 1
        rows: list[Document] = []
        upper: datetime | None = None
        if after is not None:
            sort_at, key = after
            upper = aware(sort_at)
            # The rest of the tie at the cursor's time, then strictly older windows.
            tie = flat_query([{"sort_at": upper}, filters, {"_id": {"$lt": key}}])
            rows += await self._find(collection, tie, wanted)
        # The first window of a first page has no upper bound: rows newer than where the
        # newest were last seen (or than now) are in it.
        start = upper or self.newest or self.clock()
        shape = tuple(sorted(filters))
        span = max(_SMALLEST_WINDOW, self.per_row.get(shape, _FIRST_PER_ROW) * wanted)
        reached = timedelta(0)  # how far back from `start` the windows have read
        while len(rows) < wanted:
            bound: dict[str, datetime] = {}
            if reached + span < _WIDEST_WINDOW:
                bound["$gte"] = start - reached - span
            if upper is not None:
                bound["$lt"] = upper
            query = _first("sort_at", bound, filters) if bound else filters
            found = await self._find(collection, query, wanted - len(rows))
            rows += found
            if "$gte" not in bound:
                break
            reached += span
            upper = bound["$gte"]
            missing = wanted - len(rows)
            growth = _GROWTH if not found else min(_GROWTH, 1.5 * missing / len(found))
            span = span * max(growth, 1.0)
        if rows:
            if after is None:
                first = aware(rows[0]["sort_at"])
                self.newest = first if self.newest is None else max(self.newest, first)
            if len(rows) >= wanted:
                spread = aware(rows[0]["sort_at"]) - aware(rows[-1]["sort_at"])
                self.per_row[shape] = max(spread / len(rows), timedelta(seconds=1))
        return rows

    @staticmethod
    async def _find(
        collection: AsyncCollection[Document], query: Document, limit: int
    ) -> list[Document]:
        cursor = collection.find(query, ROW_FIELDS, sort=ORDER, limit=limit)
        return [doc async for doc in cursor]
