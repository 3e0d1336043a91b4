"""Reading a list the API pages by `next_cursor`, as a client does: every page in order."""

from __future__ import annotations

from typing import Any

import httpx


async def every_page(
    http: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """Each page `path` answers, following `next_cursor` until it is null; a page that is
    not 200 fails the test with its body."""
    pages: list[dict[str, Any]] = []
    params: dict[str, str] = {}
    while True:
        r = await http.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        if r.json()["next_cursor"] is None:
            return pages
        params = {"cursor": r.json()["next_cursor"]}
