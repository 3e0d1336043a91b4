"""The `yuqing` command: run the whole system, run one service, issue a token."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

import httpx
import uvicorn

from shared.embedded import EmbeddedError, EmbeddedInfra
from shared.gateway import Gateway
from shared.identity import Role
from shared.logging import configure_logging, get_logger
from shared.policy import parse_duration as policy_duration
from shared.service import Build, Context, ServiceParts, ServiceRunner
from shared.settings import SERVICE_NAMES, Settings

log = get_logger("yuqing.cli")


def composition_root(name: str) -> Build[ServiceParts]:
    """The `build` of services/<name>/bootstrap.py: where that service is assembled."""
    build: Build[ServiceParts] = importlib.import_module(f"services.{name}.bootstrap").build
    return build


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '8h', '7d': written as the policy files write durations."""
    try:
        return policy_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {exc}") from None


def parse_roles(text: str) -> list[Role]:
    try:
        return [Role(r.strip()) for r in text.split(",") if r.strip()]
    except ValueError:
        valid = ", ".join(r.value for r in Role)
        raise argparse.ArgumentTypeError(f"unknown role in {text!r}; roles: {valid}") from None


async def _serve(names: Sequence[str], settings: Settings, *, announce: bool) -> None:
    ctx = Context.from_settings(settings)
    runners = [ServiceRunner.connect(n, composition_root(n), ctx) for n in names]
    gateway = Gateway(runners, settings)
    config = uvicorn.Config(
        gateway,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn offers no event
        await asyncio.sleep(0.05)
    if server.started:
        print(f"yuqing is up at {settings.base_url} ({', '.join(names)})", flush=True)
        if announce:
            token = ctx.tokens.issue("admin", "county", [Role.ADMIN], name="development admin")
            print(f"YUQING_TOKEN={token}", flush=True)
    await serving
    if not server.started:
        raise SystemExit(f"yuqing could not start on {settings.http_host}:{settings.http_port}")


def _run(names: Sequence[str], *, announce: bool) -> int:
    settings = Settings()
    configure_logging(settings)
    infra = EmbeddedInfra(settings)
    try:
        resolved = infra.start()
    except EmbeddedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(names, resolved, announce=announce))
    except KeyboardInterrupt:
        pass
    finally:
        infra.stop()
    return 0


def _token(args: argparse.Namespace) -> int:
    ctx = Context.from_settings(Settings())
    if ctx.directory.unit(args.unit) is None:
        known = ", ".join(u.id for u in ctx.directory.units)
        print(f"error: unknown unit {args.unit!r}; units: {known}", file=sys.stderr)
        return 2
    print(ctx.tokens.issue(args.sub, args.unit, args.roles, ttl=args.ttl, name=args.name))
    return 0


def _replay(args: argparse.Namespace) -> int:
    """Ask the running archive to replay its log, and follow the job until it ends: the
    archive does the work so that its API keeps serving and swaps the models in itself.
    """
    settings = Settings()
    ctx = Context.from_settings(settings)
    token = ctx.tokens.issue("cli-replay", "county", [Role.ADMIN], name="yuqing replay")
    base = (args.url or settings.base_url).rstrip("/") + "/archive/v1/replay"
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30.0) as http:
        try:
            started = http.post(base)
        except httpx.HTTPError as exc:
            print(f"error: the archive at {base} is not reachable: {exc}", file=sys.stderr)
            return 2
        if started.status_code != 202:
            print(f"error: {started.status_code} {started.text}", file=sys.stderr)
            return 1
        job = started.json()
        while job["state"] == "running":
            print(f"replay {job['job_id']}: {job['processed']}/{job['total']}", flush=True)
            time.sleep(args.poll)
            job = http.get(f"{base}/{job['job_id']}").raise_for_status().json()
    if job["state"] != "completed":
        print(f"replay {job['job_id']} failed: {job['error']}", file=sys.stderr)
        return 1
    models = job["collections"]
    print(
        f"replay {job['job_id']} completed: {job['processed']}/{job['total']} incidents; "
        f"serving {models['incidents']} and {models['cases']}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yuqing", description="舆情处置平台 yuqing")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "up",
        help="start the embedded servers where no URL is set, then all five services on one port",
    )
    serve = commands.add_parser("serve", help="run one service alone")
    serve.add_argument("service", choices=SERVICE_NAMES)
    token = commands.add_parser("token", help="print a bearer token")
    token.add_argument("--sub", required=True, help="subject: a person's or client's id")
    token.add_argument("--unit", required=True, help="the unit it belongs to, e.g. county")
    token.add_argument("--roles", required=True, type=parse_roles, help="e.g. monitor,office")
    token.add_argument("--ttl", type=parse_duration, default=None, help="e.g. 30m, 8h, 7d")
    token.add_argument("--name", default=None, help="display name")
    replay = commands.add_parser(
        "replay", help="rebuild the archive's read models from its log, then swap them in"
    )
    replay.add_argument("--url", default=None, help="the system's base URL (default: settings)")
    replay.add_argument("--poll", type=float, default=1.0, help="seconds between progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return _run(SERVICE_NAMES, announce=True)
    if args.command == "serve":
        return _run([args.service], announce=False)
    if args.command == "replay":
        return _replay(args)
    return _token(args)


if __name__ == "__main__":
    sys.exit(main())
