"""Keyset paging of the lists: a page size within `YUQING_MAX_PAGE_SIZE` and a cursor
that resumes after the last row a page showed, so every row is reachable however many
match and however long the list.

A cursor is the sort key of that row, (time, id), as URL-safe base64 of JSON. A list that
pages two orders at once (the statement inbox) keeps one position per order in one cursor,
null for an order whose rows have all been shown. A limit above the maximum answers 422
naming `limit`; a cursor the API did not give out answers 400 naming `cursor`.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from shared.errors import BadRequest, Invalid

Key = tuple[datetime, str]  # the row's sort time and its id (the tie-break)


def page_size(limit: int | None, maximum: int) -> int:
    """The rows a page holds: `limit` as asked (422 naming it above `maximum`), or the
    maximum when none is asked."""
    if limit is None:
        return maximum
    if limit > maximum:
        raise Invalid("limit", f"at most {maximum} (YUQING_MAX_PAGE_SIZE)", "less_than_equal")
    return limit


def _key_json(key: Key) -> list[str]:
    return [key[0].isoformat(), key[1]]


def _key_of(value: Any) -> Key:
    sort_at, key = value
    if not isinstance(sort_at, str) or not isinstance(key, str):
        raise TypeError("a position is [time, id]")
    return datetime.fromisoformat(sort_at), key


def _encode(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _decode(cursor: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(cursor.encode()))


def _refused(reason: str) -> BadRequest:
    return BadRequest("cursor is not one this API returned", {"field": "cursor", "reason": reason})


def encode_cursor(key: Key) -> str:
    """The cursor of the page after the row whose key is `key`."""
    return _encode(_key_json(key))


def decode_cursor(cursor: str) -> Key:
    """The key a cursor of `encode_cursor` holds; 400 for any other string."""
    try:
        return _key_of(_decode(cursor))
    except (ValueError, TypeError, binascii.Error) as exc:
        raise _refused(str(exc)) from None


def encode_positions(*keys: Key | None) -> str:
    """One cursor for several orders paged together: each one's key, None when done."""
    return _encode([None if key is None else _key_json(key) for key in keys])


def decode_positions(cursor: str, orders: int) -> list[Key | None]:
    """The positions a cursor of `encode_positions` holds for `orders` orders; 400 for
    any other string."""
    try:
        value = _decode(cursor)
        if not isinstance(value, list) or len(value) != orders:
            raise ValueError(f"a position for each of {orders} lists")
        return [None if part is None else _key_of(part) for part in value]
    except (ValueError, TypeError, binascii.Error) as exc:
        raise _refused(str(exc)) from None


def after(key: Key, field: str, *, descending: bool = False) -> dict[str, Any]:
    """The rows after `key` in the order (`field`, `_id`), both ascending or both
    descending: a later (earlier) `field`, or the same one and a later (earlier) id."""
    beyond = "$lt" if descending else "$gt"
    sort_at, row_id = key
    return {"$or": [{field: {beyond: sort_at}}, {field: sort_at, "_id": {beyond: row_id}}]}
