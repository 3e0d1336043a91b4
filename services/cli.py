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
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import uvicorn

from shared.auth import API_KEY_HEADER, ApiKeys, RevocationList, TokenService, TokenTooLong
from shared.console import PasswordBook
from shared.directory import Directory, Person
from shared.embedded import EmbeddedError, EmbeddedInfra
from shared.events import utcnow
from shared.gateway import Gateway
from shared.identity import Role
from shared.logging import configure_logging, get_logger
from shared.policy import PolicyError
from shared.policy import parse_duration as policy_duration
from shared.service import Build, Context, ServiceParts, ServiceRunner
from shared.settings import SERVICE_NAMES, Settings
from shared.tracing import setup_tracing

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


def credentials_announced(
    settings: Settings, tokens: TokenService, demo: Sequence[tuple[Person, str | None]]
) -> list[str]:
    """What `yuqing up` prints for the person at the terminal: the demo passwords made and,
    in development, an administrator's token. A production start prints no credential into
    its logs: its tokens are minted with `yuqing token` by whoever holds the key."""
    lines = [f"YUQING_PASSWORD={person.id}:{password}" for person, password in demo if password]
    if settings.environment == "development":
        token = tokens.issue("admin", "county", [Role.ADMIN], name="development admin")
        lines.append(f"YUQING_TOKEN={token}")
    return lines


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
            for line in credentials_announced(settings, ctx.tokens, demo):
                print(line, flush=True)
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
    # One process of the distributed shape is named after its service in the collector.
    setup_tracing("yuqing" if len(names) > 1 else f"yuqing-{names[0]}")
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
    except PolicyError as exc:
        # A malformed plan or policy file is the operator's to mend: what and where, no trace.
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 2
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


def _key(args: argparse.Namespace) -> int:
    """Partner API keys: `create` prints a new key once and keeps only its hash; `revoke`
    and `list` work on the key ids."""
    settings = Settings()
    keys = ApiKeys(settings.api_keys_file)
    if args.key_command == "create":
        directory = Directory.load(settings.directory_path)
        if directory.unit(args.unit) is None:
            known = ", ".join(u.id for u in directory.units)
            print(f"error: unknown unit {args.unit!r}; units: {known}", file=sys.stderr)
            return 2
        key_id, key = keys.create(args.partner, args.unit, args.name)
        print(key)
        print(
            f"key id {key_id}: partner {args.partner} of {args.unit}; send it as the "
            f"{API_KEY_HEADER} header. It is shown only now: {settings.api_keys_file} keeps "
            f"its hash (yuqing key revoke {key_id})",
            file=sys.stderr,
        )
        return 0
    if args.key_command == "revoke":
        revoked = keys.revoke(args.key_id)
        if revoked is None:
            print(f"error: no API key {args.key_id} in {settings.api_keys_file}", file=sys.stderr)
            return 2
        state = "revoked" if revoked else "was already revoked"
        print(f"{args.key_id} {state} in {settings.api_keys_file}")
        return 0
    for key_id, record in sorted(keys.records().items()):
        state = f"revoked {record['revoked_at']}" if record["revoked_at"] else "active"
        print(f"{key_id}  {record['client_id']}  {record['unit']}  {record['created_at']}  {state}")
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


def parse_since(text: str, tz: str) -> datetime:
    """'2026-11-01' (local midnight in YUQING_TIMEZONE) or an ISO time with its offset."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), dt_time(0), ZoneInfo(tz))
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r} is not a date (2026-11-01) or an ISO time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=ZoneInfo(tz))


def _local(value: str | None, tz: ZoneInfo) -> str:
    if value is None:
        return "-"
    return datetime.fromisoformat(value).astimezone(tz).strftime("%m-%d %H:%M")


def plan_difference_table(answer: dict[str, Any], tz: ZoneInfo) -> str:
    """The what-if's answer as a table: one line per incident, then one per duty (the
    event it opens on, its deadline beside the recorded one, when it was met, the outcome),
    then the recorded duties the candidate drops and its duties the record gives no event
    to open on, with why."""
    header = (
        f"{'incident':<38} {'recorded plan':<26} {'level':<6} {'category':<22} "
        f"{'duty':<24} {'opens on':<10} {'deadline':<11} {'recorded':<11} {'met at':<11} "
        f"{'outcome':<8} change"
    )
    lines = [
        f"plan {answer['plan']} {answer['version']} against incidents graded since "
        f"{answer['since']}",
        header,
        "-" * len(header),
    ]
    for incident in answer["incidents"]:
        level = f"{incident['recorded_level']}->{incident['level']}"
        category = f"{incident['recorded_category']}->{incident['category']}"
        mark = "*" if incident["differs"] else " "
        lines.append(
            f"{mark}{incident['incident_id']:<37} {incident['recorded_plan'] or '-':<26} "
            f"{level:<6} {category:<22}"
        )
        for duty in incident["duties"]:
            lines.append(
                f"{'':<38} {'':<26} {'':<6} {'':<22} {duty['kind']:<24} "
                f"{duty.get('opens_on', 'graded'):<10} "
                f"{_local(duty['deadline'], tz):<11} {_local(duty['recorded_deadline'], tz):<11} "
                f"{_local(duty['met_at'], tz):<11} {duty['outcome']:<8} {duty['change']}"
            )
        for kind in incident["dropped"]:
            lines.append(
                f"{'':<38} {'':<26} {'':<6} {'':<22} {kind:<24} {'':<10} {'-':<11} "
                f"{'(recorded)':<11} {'':<11} {'':<8} dropped"
            )
        for duty in incident.get("not_opened", []):
            lines.append(
                f"{'':<38} {'':<26} {'':<6} {'':<22} {duty['kind']:<24} "
                f"{duty['opens_on']:<10} {'-':<11} {'':<11} {'':<11} {'':<8} "
                f"not opened: {duty['note']}"
            )
    differing = sum(1 for i in answer["incidents"] if i["differs"])
    missed = sum(1 for i in answer["incidents"] if i["would_miss"])
    lines.append(
        f"{len(answer['incidents'])} incidents, {differing} would differ (*), "
        f"{missed} with duties late or missed under {answer['plan']}"
    )
    return "\n".join(lines)


def _plan_try(args: argparse.Namespace) -> int:
    """Ask the running grading service what a candidate plan would have done: it replays
    its own record (nothing is written) and answers per incident what would differ."""
    settings = Settings()
    pack = Path(args.pack)  # a name, or the path of a pack in YUQING_PLANS_DIR
    name = pack.resolve().name if len(pack.parts) > 1 or pack.is_dir() else args.pack
    if name != args.pack and pack.resolve().parent != settings.plans_dir.resolve():
        print(
            f"error: {args.pack} is not a pack of {settings.plans_dir} (YUQING_PLANS_DIR): "
            "the grading service tries only those",
            file=sys.stderr,
        )
        return 2
    try:
        since = parse_since(args.since, settings.timezone)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ctx = Context.from_settings(settings)
    token = ctx.tokens.issue("cli-plan-try", "county", [Role.ANALYST], name="yuqing plan try")
    url = (args.url or settings.base_url).rstrip("/") + "/grading/v1/plan/try"
    body = {"plan": name, "since": since.isoformat(), "limit": args.limit}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as http:
        try:
            answer = http.post(url, json=body)
        except httpx.HTTPError as exc:
            print(f"error: grading at {url} is not reachable: {exc}", file=sys.stderr)
            return 2
    if answer.status_code != 200:
        print(f"error: {answer.status_code} {answer.text}", file=sys.stderr)
        return 1
    print(plan_difference_table(answer.json(), ZoneInfo(settings.timezone)))
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
    key = commands.add_parser("key", help="partner API keys, kept only as hashes")
    key_commands = key.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="make a key (printed once) for a partner")
    create.add_argument("--partner", required=True, help="the partner client's id")
    create.add_argument("--unit", required=True, help="its unit, e.g. county")
    create.add_argument("--name", default=None, help="display name, e.g. 县网信办")
    key_revoke = key_commands.add_parser("revoke", help="revoke a key by its id")
    key_revoke.add_argument("key_id", help="the key id `key create` printed")
    key_commands.add_parser("list", help="the keys: id, partner, unit, created, state")
    passwd = commands.add_parser(
        "passwd", help="set a person's console password (read twice from the terminal, or stdin)"
    )
    passwd.add_argument("person", help="the person's id in the directory, e.g. office-li")
    replay = commands.add_parser(
        "replay", help="rebuild the archive's read models from its log, then swap them in"
    )
    replay.add_argument("--url", default=None, help="the system's base URL (default: settings)")
    replay.add_argument("--poll", type=float, default=1.0, help="seconds between progress lines")
    plan = commands.add_parser("plan", help="plan packs (config/plans/)")
    plan_commands = plan.add_subparsers(dest="plan_command", required=True)
    plan_try = plan_commands.add_parser(
        "try",
        help="what-if: past incidents replayed through a candidate pack, per incident what "
        "would differ (the live system is unchanged)",
    )
    plan_try.add_argument("pack", help="a pack's name under YUQING_PLANS_DIR, e.g. school")
    plan_try.add_argument("--since", required=True, help="2026-11-01, or an ISO time")
    plan_try.add_argument("--limit", type=int, default=100, help="incidents at most")
    plan_try.add_argument("--url", default=None, help="the system's base URL (default: settings)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "up":
        return _run(SERVICE_NAMES, announce=True)
    if args.command == "serve":
        return _run([args.service], announce=False)
    if args.command == "replay":
        return _replay(args)
    if args.command == "plan":
        return _plan_try(args)
    if args.command == "passwd":
        return _passwd(args)
    if args.command == "key":
        return _key(args)
    return _token(args)


if __name__ == "__main__":
    sys.exit(main())
