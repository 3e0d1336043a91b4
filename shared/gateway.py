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
from fastapi.responses import JSONResponse
from faststream.specification import AsyncAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from shared.api import guard_app, install_error_handlers
from shared.bus import ensure_topics
from shared.console import install_console
from shared.service import ServiceRunner
from shared.settings import Settings

log = structlog.get_logger("yuqing.gateway")


class Gateway:
    def __init__(self, services: Sequence[ServiceRunner[Any]], settings: Settings) -> None:
        if not services:
            raise ValueError("a gateway needs at least one service")
        self.services = list(services)
        self.settings = settings
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
        fresh_broker = await ensure_topics(self.settings)
        if fresh_broker:
            # A broker that lost its topics (the embedded one keeps them in memory) gets
            # every stored event again; consumers are idempotent, so nothing happens twice.
            for service in self.services:
                await service.store.republish_all()
        await asyncio.gather(*(s.start() for s in self.services))
        self.ready.set()

    async def stop(self) -> None:
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
        spec = AsyncAPI(
            *(s.broker for s in self.services),
            title="yuqing events",
            version="1",
            description="The topics the yuqing services publish and consume. "
            "Every message is a shared.events.Envelope, keyed by incident_id.",
        )
        result: dict[str, Any] = spec.to_specification().to_jsonable()
        return result

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
            private=("/metrics", "/asyncapi.json"),
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
            ok = all(v == "ok" for c in checks.values() for v in c.values())
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

        # The web console at `/`: sign-in, its change stream, its pages (the last route).
        ctx = self.services[0].ctx
        install_console(
            app,
            settings=self.settings,
            tokens=ctx.tokens,
            directory=ctx.directory,
            catalogue=ctx.catalogue,
            system=self,
            archive_here=any(s.name == "archive" for s in self.services),
        )
        return app
