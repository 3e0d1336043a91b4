"""A service's declared reactions: `{EventType: handler}`, built once in its composition root.

Each handler receives the envelope, its payload already typed as the key says, and the
unit of work of the consumer's transaction (the inbox mark commits with whatever the
handler writes). The consumer dispatches on the payload's class; nothing else does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

from shared.events import Envelope, EventPayload
from shared.store import UnitOfWork

P = TypeVar("P", bound=EventPayload)
TypedHandler = Callable[[Envelope, P, UnitOfWork], Awaitable[None]]
Handler = Callable[[Envelope, UnitOfWork], Awaitable[None]]


class HandlerMap:
    def __init__(self) -> None:
        self._handlers: dict[type[EventPayload], TypedHandler[Any]] = {}

    def on(self, kind: type[P], handler: TypedHandler[P]) -> HandlerMap:
        if kind in self._handlers:
            raise ValueError(f"{kind.EVENT_TYPE} has two handlers")
        self._handlers[kind] = handler
        return self

    def on_each(self, kinds: tuple[type[EventPayload], ...], handler: Handler) -> HandlerMap:
        """One handler for several types that it treats alike (the archive records all)."""

        async def untyped(event: Envelope, _: EventPayload, uow: UnitOfWork) -> None:
            await handler(event, uow)

        for kind in kinds:
            self.on(kind, untyped)
        return self

    def handler_for(self, event: Envelope) -> Handler | None:
        typed = self._handlers.get(type(event.payload))
        if typed is None:
            return None

        async def handle(envelope: Envelope, uow: UnitOfWork) -> None:
            await typed(envelope, cast(Any, envelope.payload), uow)

        return handle

    def types(self) -> Iterator[type[EventPayload]]:
        return iter(self._handlers)

    def topics(self) -> set[str]:
        return {kind.TOPIC for kind in self._handlers}

    def __bool__(self) -> bool:
        return bool(self._handlers)

    def check(self, service: str, consumes: tuple[str, ...]) -> None:
        """At start: every handled type comes on a topic the service subscribes to, and
        every topic it subscribes to brings at least one type it handles."""
        unsubscribed = sorted(k.EVENT_TYPE for k in self._handlers if k.TOPIC not in consumes)
        if unsubscribed:
            raise ValueError(
                f"{service} handles {', '.join(unsubscribed)} but does not subscribe to their "
                "topics"
            )
        idle = sorted(set(consumes) - self.topics())
        if idle:
            raise ValueError(f"{service} subscribes to {', '.join(idle)} but handles none of it")
