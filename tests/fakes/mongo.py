"""An in-memory MongoDB behind PyMongo's async API, for the fast test layer.

mongomock keeps the documents and evaluates queries, updates and unique indexes; this
module gives it the awaitable surface of `AsyncDatabase`/`AsyncCollection` that the
services use, and transactions that roll back: a unit of work runs alone (one at a time,
as a test drives one thing at once) and a failure restores every collection as it was.
The contract tests in tests/service/test_store_contract.py hold it to what the real
server does for the event store: unique versions and ids, atomic units of work, leases.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import mongomock
from bson.codec_options import CodecOptions
from pymongo import ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.results import BulkWriteResult

from shared.store import EventStore

T = TypeVar("T")
_in_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tx", default=False)


def _drop_session(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.pop("session", None)
    return kwargs


class FakeCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def sort(self, *args: Any, **kwargs: Any) -> FakeCursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> FakeCursor:
        self._cursor = self._cursor.limit(n)
        return self

    def skip(self, n: int) -> FakeCursor:
        self._cursor = self._cursor.skip(n)
        return self

    def batch_size(self, _: int) -> FakeCursor:
        return self

    def __aiter__(self) -> FakeCursor:
        self._items: Iterator[Any] = iter(list(self._cursor))
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None

    async def to_list(self, length: int | None = None) -> list[Any]:
        items = list(self._cursor)
        return items if length is None else items[:length]


class FakeCollection:
    def __init__(self, collection: Any) -> None:
        self._c = collection
        self.name = collection.name
        # As the fake client reads documents back: time zone aware, as the services' are.
        self.codec_options = CodecOptions(tz_aware=True)

    def find(self, *args: Any, **kwargs: Any) -> FakeCursor:
        kwargs = _drop_session(kwargs)
        kwargs.pop("batch_size", None)
        return FakeCursor(self._c.find(*args, **kwargs))

    async def bulk_write(self, requests: list[Any], ordered: bool = True, **_: Any) -> Any:
        """ReplaceOne and UpdateOne requests, one by one, failing as the server does: every
        request is tried when unordered, and duplicate keys are reported together at the end."""
        errors: list[dict[str, Any]] = []
        upserted = 0
        for index, request in enumerate(requests):
            if not isinstance(request, ReplaceOne | UpdateOne):
                raise NotImplementedError(f"{type(request).__name__} in a fake bulk write")
            write = self._c.replace_one if isinstance(request, ReplaceOne) else self._c.update_one
            try:
                result = write(request._filter, request._doc, upsert=request._upsert)
                upserted += result.upserted_id is not None
            except DuplicateKeyError as exc:
                errors.append({"index": index, "code": 11000, "errmsg": str(exc)})
                if ordered:
                    break
        if errors:
            raise BulkWriteError({"writeErrors": errors, "nUpserted": upserted})
        return BulkWriteResult({"nUpserted": upserted}, acknowledged=True)

    def aggregate(self, pipeline: list[Any], **kwargs: Any) -> Any:
        raise NotImplementedError("aggregate is not used by the services")

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._c, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            kwargs = _drop_session(kwargs)
            kwargs.pop("name", None) if name == "create_index" else None
            return method(*args, **kwargs)

        return call


class FakeDatabase:
    def __init__(self, client: Any, name: str) -> None:
        self._client = client
        self._db = client[name]
        self.name = name

    def __getitem__(self, name: str) -> FakeCollection:
        return FakeCollection(self._db[name])

    def get_collection(self, name: str) -> FakeCollection:
        return self[name]

    async def command(self, name: str, *_: Any, **__: Any) -> dict[str, Any]:
        return {"ok": 1.0}

    async def create_collection(self, name: str, **_: Any) -> FakeCollection:
        return FakeCollection(self._db.create_collection(name))

    async def drop_collection(self, name: str, **_: Any) -> None:
        self._db.drop_collection(name)

    async def list_collection_names(self, **_: Any) -> list[str]:
        return list(self._db.list_collection_names())


class InMemoryTransactions:
    """Units of work one at a time; a failed one leaves every collection as it found it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = asyncio.Lock()

    def _snapshot(self) -> dict[tuple[str, str], Any]:
        saved: dict[tuple[str, str], Any] = {}
        for db_name, db_store in self._client._store._databases.items():
            for name, collection in db_store._collections.items():
                saved[(db_name, name)] = copy.deepcopy(collection._documents)
        return saved

    def _restore(self, saved: dict[tuple[str, str], Any]) -> None:
        for db_name, db_store in self._client._store._databases.items():
            for name, collection in db_store._collections.items():
                collection._documents.clear()
                collection._documents.update(saved.get((db_name, name), {}))

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        if _in_transaction.get():
            raise RuntimeError("a unit of work started another inside itself")
        async with self._lock:
            token = _in_transaction.set(True)
            saved = self._snapshot()
            try:
                return await work(None)
            except BaseException:
                self._restore(saved)
                raise
            finally:
                _in_transaction.reset(token)


class FakeMongo:
    """One in-memory server; each service gets its own database on it, as in production."""

    def __init__(self) -> None:
        self.client: Any = mongomock.MongoClient(tz_aware=True)
        self.transactions = InMemoryTransactions(self.client)

    def database(self, name: str) -> FakeDatabase:
        return FakeDatabase(self.client, name)

    def store(self, service: str) -> EventStore:
        db: Any = self.database(f"fake_{service}")
        return EventStore(db, self.transactions, service)
