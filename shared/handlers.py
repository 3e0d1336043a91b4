"""A service's declared reactions: `{EventType: handler}`, built once in its composition root.

Each handler receives the envelope, its payload already typed as the key says, and the
unit of work of the consumer's transaction (the inbox mark commits with whatever the
handler writes). The consumer dispatches on the payload's class; nothing else does.

A service may also declare one handler for a whole batch of consumed events (`on_batch`),
handed them in order with how each came; the consumer uses it, in one transaction, when
it has several events in hand and the map handles every one of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from shared.events import Envelope, EventPayload
from shared.store import UnitOfWork

P = TypeVar("P", bound=EventPayload)
TypedHandler = Callable[[Envelope, P, UnitOfWork], Awaitable[None]]
Handler = Callable[[Envelope, UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class Delivery:
    """How a consumed event came: on which (logical) topic, from whom, with what signature,
    each checked before any handler sees the event."""

    topic: str
    producer: str
    signature: str


BatchHandler = Callable[[Sequence[tuple[Envelope, Delivery | None]], UnitOfWork], Awaitable[None]]


class HandlerMap:
    def __init__(self) -> None:
        self._handlers: dict[type[EventPayload], TypedHandler[Any]] = {}
        self.batch: BatchHandler | None = None

    def on_batch(self, handler: BatchHandler) -> HandlerMap:
        """What handles several events at once (in order, in one transaction): it must do
        for each what the event's own handler does."""
        self.batch = handler
        return self

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
