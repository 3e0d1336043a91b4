"""One HTTP port in front of one or more services of this process.

Each service keeps its own app, database, broker connection and consumer group; the
gateway only routes requests by prefix, starts and stops the services, and answers
`/healthz`, `/readyz`, `/metrics` and the AsyncAPI document for all of them together.
Cross-service steps never go through here: they go through Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from shared.api import guard_app, install_error_handlers
from shared.asyncapi import asyncapi_document, asyncapi_page
from shared.bus import ensure_topics
from shared.change_feed import ChangeFeed
from shared.console import install_console
from shared.service import ServiceRunner, ready
from shared.settings import Settings

log = structlog.get_logger("yuqing.gateway")


class Gateway:
    def __init__(self, services: Sequence[ServiceRunner[Any]], settings: Settings) -> None:
        if not services:
            raise ValueError("a gateway needs at least one service")
        self.services = list(services)
        self.settings = settings
        # The console's event stream hears of the archive's changes where it runs here.
        archive = next((s for s in self.services if s.name == "archive"), None)
        self.feed = ChangeFeed(archive.db) if archive is not None else None
        self.root = self._root_app()
        self.ready = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope.get("path", "")
        for service in self.services:
            if path == service.prefix or path.startswith(service.prefix + "/"):
                await service.app(scope, receive, send)
                return
        await self.root(scope, receive, send)

    async def start(self) -> None:
        # The topics exist before anyone subscribes. Whether the broker still has what a
        # service sent it is each service's own relay's question (OutboxRelay.check_broker,
        # at start and every YUQING_OUTBOX_CHECK_SECONDS), so every process of the
        # distributed shape finds a wipe by itself and sends again only what was lost.
        await ensure_topics(self.settings)
        await asyncio.gather(*(s.start() for s in self.services))
        if self.feed is not None:
            self.feed.start()
        self.ready.set()

    async def stop(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        await asyncio.gather(*(s.stop() for s in self.services), return_exceptions=True)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await self.stop()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def asyncapi(self) -> dict[str, Any]:
        """The whole bus's document, not only this process's services' part of it."""
        return asyncapi_document(self.settings)

    def _root_app(self) -> FastAPI:
        app = FastAPI(title="yuqing", docs_url=None, redoc_url=None, openapi_url=None)
        install_error_handlers(app)
        # Limits and security headers as on every service; /metrics and the AsyncAPI
        # document need an admin or analyst token unless YUQING_PUBLIC_DOCS.
        guard_app(
            app,
            self.settings,
            self.services[0].ctx.tokens,
            self.services[0].ctx.limiter,
            private=("/metrics", "/asyncapi.json", "/asyncapi"),
        )

        @app.get("/api")
        async def index() -> dict[str, Any]:
            return {
                "system": "yuqing 舆情处置平台",
                "services": [s.describe() for s in self.services],
                "asyncapi": "/asyncapi.json",
            }

        @app.get("/healthz")
        async def healthz() -> dict[str, Any]:
            return {"status": "ok", "services": [s.name for s in self.services]}

        @app.get("/readyz")
        async def readyz() -> JSONResponse:
            checks = {s.name: await s.readiness() for s in self.services}
            ok = all(ready(c) for c in checks.values())
            return JSONResponse(
                {"status": "ok" if ok else "unavailable", "services": checks},
                status_code=200 if ok else 503,
            )

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        @app.get("/asyncapi.json")
        async def asyncapi() -> dict[str, Any]:
            return self.asyncapi()

        @app.get("/asyncapi", response_class=HTMLResponse)
        async def asyncapi_html() -> HTMLResponse:
            return HTMLResponse(asyncapi_page(self.asyncapi()))

        # The web console at `/`: sign-in, its change stream, its pages (the last route).
        ctx = self.services[0].ctx
        install_console(
            app,
            settings=self.settings,
            tokens=ctx.tokens,
            directory=ctx.directory,
            catalogue=ctx.catalogue,
            system=self,
            archive_here=self.feed is not None,
            feed=self.feed,
        )
        return app
