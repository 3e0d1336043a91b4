"""The archive's list pages: flat filters and the windows of `sort_at` they are read in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.archive.listing import ListWindows, flat_query
from tests.fakes.mongo import FakeMongo

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_conditions_on_different_fields_sit_side_by_side_without_and() -> None:
    query = flat_query([{"unit_ids": {"$in": ["a", "b"]}}, {"level": 1}, {"status": "open"}])

    assert query == {"unit_ids": {"$in": ["a", "b"]}, "level": 1, "status": "open"}


def test_two_conditions_on_one_field_merge_into_one_operator_document() -> None:
    since, until = NOW - timedelta(days=1), NOW
    query = flat_query(
        [
            {"unit_ids": {"$in": ["a", "b"]}},
            {"unit_ids": "a"},
            {"opened_at": {"$gte": since}},
            {"opened_at": {"$lt": until}},
        ]
    )

    assert query == {
        "unit_ids": {"$in": ["a", "b"], "$eq": "a"},
        "opened_at": {"$gte": since, "$lt": until},
    }


def test_what_cannot_merge_goes_in_and() -> None:
    first, second = {"$or": [{"a": 1}, {"b": 1}]}, {"$or": [{"c": 1}, {"d": 1}]}
    text = {"title": {"$regex": "x", "$options": "i"}}
    query = flat_query([first, second, {"level": 1}, {"level": 2}, text, text])

    assert query == {**first, "level": 1, **text, "$and": [second, {"level": 2}, text]}


async def test_pages_find_every_row_once_across_gaps_the_future_and_ties() -> None:
    collection: Any = FakeMongo().database("listing")["incidents"]
    times = [NOW + timedelta(days=400), NOW - timedelta(days=20 * 365)]  # beyond every window
    times += [NOW - timedelta(days=90) - timedelta(minutes=7 * n) for n in range(150)]
    times += [NOW - timedelta(days=200)] * 30  # one tie, longer than a page
    rows = [
        {"_id": f"inc-{n:04d}", "sort_at": at, "level": 1 + n % 3, "summary": {"n": n}}
        for n, at in enumerate(times)
    ]
    await collection.insert_many(rows)
    windows = ListWindows(lambda: NOW)

    async def every(filters: dict[str, Any], limit: int) -> list[str]:
        seen: list[str] = []
        after = None
        while True:
            page = await windows.page(collection, filters, limit, after)
            seen += [row["_id"] for row in page[:limit]]
            assert all(set(row) <= {"_id", "summary", "sort_at"} for row in page)
            if len(page) <= limit:
                return seen
            last = page[limit - 1]
            after = (last["sort_at"], last["_id"])

    newest_first = sorted(rows, key=lambda r: (r["sort_at"], r["_id"]), reverse=True)
    assert await every({}, 20) == [r["_id"] for r in newest_first]
    assert await every({"level": 2}, 7) == [r["_id"] for r in newest_first if r["level"] == 2]
    assert await every({"level": 4}, 5) == []
