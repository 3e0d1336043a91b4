"""The `yuqing` command: run the whole system, run one service, issue a token."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import signal
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

import httpx
import uvicorn

from shared.auth import RevocationList, TokenTooLong
from shared.console import PasswordBook
from shared.directory import Directory
from shared.embedded import EmbeddedError, EmbeddedInfra
from shared.events import utcnow
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
    demo = []  # the console's demo passwords, made before anyone can sign in
    if announce and settings.demo_passwords_on:
        demo = PasswordBook.from_settings(settings, ctx.directory).ensure_demo_passwords()
    config = uvicorn.Config(
        gateway,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,  # the console's open event streams do not hold a stop
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn offers no event
        await asyncio.sleep(0.05)
    if server.started:
        print(f"yuqing is up at {settings.base_url} ({', '.join(names)})", flush=True)
        if announce:
            for person, password in demo:
                if password is not None:
                    print(f"YUQING_PASSWORD={person.id}:{password}", flush=True)
            token = ctx.tokens.issue("admin", "county", [Role.ADMIN], name="development admin")
            print(f"YUQING_TOKEN={token}", flush=True)
    await serving
    if not server.started:
        raise SystemExit(f"yuqing could not start on {settings.http_host}:{settings.http_port}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(names: Sequence[str], *, announce: bool) -> int:
    # SIGTERM (Kubernetes' stop, `kill`) stops as a terminal's Ctrl-C does: uvicorn stops
    # the services, then hands the signal on, and the servers are stopped last, below.
    signal.signal(signal.SIGTERM, _interrupt)
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
    settings = Settings()
    if args.token_command == "revoke":  # noqa: S105 - a sub-command, not a secret
        return _revoke(args, settings)
    missing = [f"--{n}" for n in ("sub", "unit", "roles") if getattr(args, n) is None]
    if missing:
        print(f"error: yuqing token needs {', '.join(missing)}", file=sys.stderr)
        return 2
    if settings.secret is None and not settings.signing_key_path.exists():
        print(
            "error: no signing key: set YUQING_SECRET, or run this where the services run "
            f"(their key is kept in {settings.signing_key_path}); a token signed with a key "
            "made up now would be refused by them",
            file=sys.stderr,
        )
        return 2
    ctx = Context.from_settings(settings)
    if ctx.directory.unit(args.unit) is None:
        known = ", ".join(u.id for u in ctx.directory.units)
        print(f"error: unknown unit {args.unit!r}; units: {known}", file=sys.stderr)
        return 2
    try:
        token = ctx.tokens.issue(args.sub, args.unit, args.roles, ttl=args.ttl, name=args.name)
    except TokenTooLong as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    claims = ctx.tokens.claims(token)
    print(token)
    print(f"jti={claims['jti']} (yuqing token revoke {claims['jti']})", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    revoked = RevocationList(settings.revocation_path)
    note = f"revoked {utcnow().isoformat(timespec='seconds')}"
    if args.reason:
        note += f": {args.reason}"
    if revoked.revoke(args.jti, note):
        print(f"revoked {args.jti} in {settings.revocation_path}")
    else:
        print(f"{args.jti} was already revoked in {settings.revocation_path}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    """Set a person's console password; it counts at the next sign-in, running or not."""
    settings = Settings()
    directory = Directory.load(settings.directory_path)
    if directory.person(args.person) is None:
        known = ", ".join(p.id for p in directory.people)
        print(f"error: unknown person {args.person!r}; people: {known}", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"new password for {args.person}: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < settings.password_min_length:
        print(
            f"error: a password needs at least {settings.password_min_length} characters",
            file=sys.stderr,
        )
        return 1
    PasswordBook.from_settings(settings, directory).set(args.person, password)
    print(f"password set for {args.person} in {settings.data_dir / 'passwords.json'}")
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
    token = commands.add_parser(
        "token", help="print a bearer token (its jti on stderr); `token revoke JTI` revokes one"
    )
    token.add_argument("--sub", help="subject: a person's or client's id (required)")
    token.add_argument("--unit", help="the unit it belongs to, e.g. county (required)")
    token.add_argument("--roles", type=parse_roles, help="e.g. monitor,office (required)")
    token.add_argument(
        "--ttl", type=parse_duration, default=None, help="e.g. 30m, 8h, 7d; at most the maximum"
    )
    token.add_argument("--name", default=None, help="display name")
    token_commands = token.add_subparsers(dest="token_command")
    revoke = token_commands.add_parser(
        "revoke", help="add a token's jti to the revocation list (YUQING_TOKEN_REVOCATION_PATH)"
    )
    revoke.add_argument("jti", help="the token's id, as `yuqing token` printed it")
    revoke.add_argument("--reason", default="", help="a note kept beside the id")
    passwd = commands.add_parser(
        "passwd", help="set a person's console password (read twice from the terminal, or stdin)"
    )
    passwd.add_argument("person", help="the person's id in the directory, e.g. office-li")
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
    if args.command == "passwd":
        return _passwd(args)
    return _token(args)


if __name__ == "__main__":
    sys.exit(main())
