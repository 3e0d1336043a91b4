"""What the console's event stream hears of: the archive's incident views as they change.

One MongoDB change stream per process on the archive's database (every collection of
incident views, so the one a replay builds too), fanned out to each open event stream of
the console. A stream passes on only the incidents its caller may see (the one visibility
policy, on the unit ids and filers the view carries), and a burst of changes as one
message. In the distributed shape the gateway routes the console's stream to the
archive's process, which has this feed; a process without the archive reads the
archive's list every few seconds instead (shared/console.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from shared.visibility import IncidentScope, scope_of

log = structlog.get_logger("yuqing.console.changes")

_VIEWS = "incidents"  # the archive's incident views: `incidents`, and a replay's `incidents_…`
# The shortest time between two reads of the change stream (getMore) on the server.
_GETMORE_EVERY = 0.5
_QUEUE = 1000  # changes a slow stream may fall behind by before the oldest are dropped
_RETRY_SECONDS = 2.0
# A server without change streams (a standalone mongod): the console reads the list instead.
_NOT_SUPPORTED = {40573, 40324, 115}


class ChangeFeed:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.db = db
        self.ready = asyncio.Event()  # the change stream is open
        self.unavailable = False  # the server has no change streams: streams poll instead
        self._streams: set[asyncio.Queue[IncidentScope]] = set()
        self._task: asyncio.Task[None] | None = None
        self._asked_at = float("-inf")  # the last getMore, on the event loop's clock

    @property
    def streams(self) -> int:
        """How many event streams are listening."""
        return len(self._streams)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-change-feed")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.unavailable = True
            log.error("the archive's change stream stopped", error=repr(task.exception()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5):
                    await self._task
            self._task = None

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[IncidentScope]]:
        """The incidents that change while the block runs, as they change."""
        queue: asyncio.Queue[IncidentScope] = asyncio.Queue(_QUEUE)
        self._streams.add(queue)
        try:
            yield queue
        finally:
            self._streams.discard(queue)

    def _tell(self, scope: IncidentScope) -> None:
        for queue in self._streams:
            if queue.full():  # a stream that does not read: it keeps the newest
                queue.get_nowait()
            queue.put_nowait(scope)

    async def _run(self) -> None:
        # Only the views' changes come back (the log, inbox and chains change with every
        # event): fewer batches, so fewer round trips while the system is busy.
        pipeline = [
            {
                "$match": {
                    "operationType": {"$in": ["insert", "replace", "update"]},
                    "ns.coll": {"$regex": f"^{_VIEWS}"},
                }
            }
        ]
        resume: Any = None
        if not callable(getattr(self.db, "watch", None)):  # a test's in-memory database
            self._give_up("the database has no watch()")
            return
        while True:
            try:
                # Each wait on the server short: it holds no server thread for long (a
                # stopping server waits for them).
                watch = await self.db.watch(
                    pipeline,
                    full_document="updateLookup",
                    resume_after=resume,
                    max_await_time_ms=250,
                )
                async with watch as stream:
                    self.ready.set()
                    while stream.alive:
                        if not _buffered(stream):
                            await self._pace()
                        change = await stream.try_next()
                        if change is None:
                            continue
                        resume = change.get("_id")
                        if not str(change.get("ns", {}).get("coll", "")).startswith(_VIEWS):
                            continue
                        doc = change.get("fullDocument") or {}
                        if "_id" not in doc:
                            continue
                        self._tell(
                            scope_of(
                                str(doc["_id"]),
                                tuple(doc.get("unit_ids") or ()),
                                tuple(doc.get("filed_by") or ()),
                            )
                        )
            except OperationFailure as exc:
                if exc.code in _NOT_SUPPORTED:
                    self._give_up(str(exc))
                    return
                await self._retry(exc)
                resume = None
            except PyMongoError as exc:
                self.ready.clear()
                log.warning(
                    "the archive's change stream failed: opening it again",
                    error=str(exc),
                    retry_in=_RETRY_SECONDS,
                )
                await asyncio.sleep(_RETRY_SECONDS)

    async def _pace(self) -> None:
        """At most one getMore every _GETMORE_EVERY: while the archive is busy each one
        would come back at once with a change or two (a round trip per view written);
        waiting gathers them, and a page hears of a burst once."""
        loop = asyncio.get_running_loop()
        wait = self._asked_at + _GETMORE_EVERY - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._asked_at = loop.time()

    def _give_up(self, why: str) -> None:
        self.unavailable = True
        log.warning("the archive's database has no change streams: the console polls", why=why)

    async def _retry(self, exc: Exception) -> None:
        """A change stream refused (its resume point gone, say): opened again from now."""
        self.ready.clear()
        log.warning("the archive's change stream was refused: opening it again", error=str(exc))
        await asyncio.sleep(_RETRY_SECONDS)


def _buffered(stream: Any) -> int:
    """The changes the driver holds already (read without a round trip). PyMongo keeps them
    in its cursor's `_data`, which it does not publish: without it (another driver version)
    every change is paced as a read would be: a slower feed, never a wrong one."""
    return len(getattr(getattr(stream, "_cursor", None), "_data", None) or ())
