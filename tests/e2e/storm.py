"""A storm: the whole system started on one plan pack, driven through its HTTP API only, and
restarted on the same databases under libfaketime so that its deadlines pass (a real outage
of hours or days: the deadline watch records each passed deadline once at its true time).

`yuqing up` with Debian's libfaketime preloaded (LD_PRELOAD, FAKETIME=+N seconds: what
`faketime -f +Ns` does) and DONT_FAKE_MONOTONIC=1: the realtime clock moves, the monotonic
one does not (asyncio's timers stay sane). Each storm prints what it injected and what it
checked; skipped where libfaketime is not installed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from shared.auth import TokenService
from shared.embedded import free_port
from shared.settings import CONFIG_DIR
from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env, wait_for
from tests.service.notification_receivers import HttpReceiver

# A duty's deadline from the instant it counts from, as a storm's article table states it.
Rule = Callable[[datetime], datetime]


def within(delta: timedelta) -> Rule:
    return lambda start: start + delta


# A duty as the pack's articles state it: the article, its deadline rule, the roles its
# pages reach, and the role that files it.
Duty = tuple[str, Rule, list[str], str]


@dataclass(frozen=True)
class Articles:
    """A storm's table of the pack's articles: each duty kind's `Duty`, who holds each role
    a page reaches (config/directory.yaml), and the tag each level's pages start with."""

    duties: dict[str, Duty]
    holders: dict[str, str]
    tags: dict[int, str]


def report_body(run: str, key: str, **fields: Any) -> dict[str, Any]:
    """A 人民网 report about 实验小学 (central, seen five minutes after it was published),
    its URL unique to the storm's run and `key`; `fields` (a storm's title and excerpt
    among them) set or change any field."""
    report: dict[str, Any] = {
        "source_type": "news",
        "source_name": "人民网",
        "media_tier": "central",
        "url": f"https://people.example.cn/{run}/{key}.html",
        "author": "记者 李明",
        "published_at": "2026-11-21T08:00:00+08:00",
        "observed_at": "2026-11-21T08:05:00+08:00",
        "reach": {"views": 5000, "reposts": 40, "comments": 80, "likes": 100},
        "unit_ids": ["school-a"],
    }
    report.update(fields)
    return report


PLANS = CONFIG_DIR / "plans"
LOCAL = ZoneInfo("Asia/Shanghai")  # YUQING_TIMEZONE's default: the packs' same-day rules

# Who holds which role where (config/directory.yaml): the people a storm acts as.
PEOPLE: dict[str, tuple[str, str]] = {
    "leader": ("leader-zhang", "county"),
    "office": ("office-li", "county"),
    "propaganda": ("propaganda-wang", "county"),
    "analyst": ("analyst-zhao", "county"),
    "monitor": ("monitor-chen", "school-a"),
    "dept_head": ("head-liu", "school-a"),
    "spokesperson": ("spokesperson-sun", "school-a"),
}


def libfaketime() -> str:
    """Debian's libfaketime (package `faketime`), or the test is skipped."""
    for found in sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")):
        return str(found)
    pytest.skip("libfaketime (Debian `faketime`) is not installed")


def at(text: str) -> datetime:
    """An instant as the API tells it, to the millisecond (MongoDB keeps no finer)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def same_day(instant: datetime, due: str, cutoff: str, rollover_to: str) -> datetime:
    """The same-day rule: due that local day at `due`; from `cutoff` on, next day at
    `rollover_to` (both in the packs' local time)."""
    local = instant.astimezone(LOCAL)

    def on(day: datetime, hhmm: str) -> datetime:
        hour, minute = (int(part) for part in hhmm.split(":"))
        return day.replace(hour=hour, minute=minute, second=0, microsecond=0)

    if local >= on(local, cutoff):
        return on(local + timedelta(days=1), rollover_to).astimezone(UTC)
    return on(local, due).astimezone(UTC)


class Storm:
    """One pack's system, its clock offset, and the people acting on it."""

    def __init__(
        self, name: str, infra: Infra, tmp_path: Path, pack: str, receiver: HttpReceiver
    ) -> None:
        self.name = name
        self.pack = pack
        run = uuid.uuid4().hex[:8]
        # Every page goes to the people's webhook contact (their id): who was told, and what.
        self.receiver = receiver
        self.env = system_env(
            tmp_path / "data",
            KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
            MONGODB_URL=infra.mongo,
            YUQING_DB_PREFIX=f"st{run}",
            YUQING_TOPIC_PREFIX=f"st{run}.",
            YUQING_OUTBOX_POLL_SECONDS="0.2",
            YUQING_DEADLINE_POLL_SECONDS="0.5",
            YUQING_PLAN=str(PLANS / pack),
            DONT_FAKE_MONOTONIC="1",
            YUQING_WEBHOOK_URL=receiver.url,
            YUQING_WEBHOOK_SECRET="storm-webhook-secret",
        )
        self.run = run
        self.offset: timedelta = timedelta(0)
        self.system: RunningSystem | None = None
        # Minted at real time, valid across every offset a storm uses (at most 30 days).
        self._tokens = TokenService(self.env["YUQING_SECRET"], "yuqing", timedelta(days=29))
        self.checked = 0
        self.started = time.monotonic()

    # -- the process ---------------------------------------------------------------------
    def start(self, offset: timedelta = timedelta(0)) -> None:
        """Start (or restart, after a stop) on the same databases, `offset` ahead of now."""
        self.stop()
        self.offset = offset
        env = dict(self.env)
        if offset:
            # libfaketime preloaded as `faketime -f +Ns` does, without the wrapper (its named
            # semaphore, left by an earlier wrapper of the same pid, can stop the start).
            env.update(LD_PRELOAD=libfaketime(), FAKETIME=f"+{int(offset.total_seconds())}")
        self.say(f"start yuqing up{' under faketime +' + str(offset) if offset else ''}")
        # A port of its own each time: the last one may have gone to another socket meanwhile.
        env["YUQING_HTTP_PORT"] = str(free_port())
        self.system = RunningSystem(env)

    def stop(self) -> None:
        if self.system is not None:
            self.say("stop yuqing up (an outage begins)")
            self.system.stop()
            self.system = None

    def now(self) -> datetime:
        """The system's clock (real time plus the offset)."""
        return datetime.now(UTC) + self.offset

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- people --------------------------------------------------------------------------
    def token(self, role: str) -> str:
        person, unit = PEOPLE[role]
        return self._tokens.issue(person, unit, [role], ttl=timedelta(days=29))

    @contextmanager
    def as_(self, role: str) -> Iterator[httpx.Client]:
        assert self.system is not None, "the system is not running"
        with self.system.client(self.token(role)) as api:
            yield api

    @contextmanager
    def admin(self) -> Iterator[httpx.Client]:
        assert self.system is not None, "the system is not running"
        with self.system.client() as api:
            yield api

    # -- telling -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[storm {self.name} {self.elapsed():6.1f}s] {text}", flush=True)

    def check(self, condition: bool, text: str, detail: object = "") -> None:
        assert condition, f"{text}: {detail}"
        self.checked += 1
        self.say(f"  ok  {text}")

    # -- reading -------------------------------------------------------------------------
    def view(self, incident_id: str) -> dict[str, Any]:
        with self.admin() as api:
            response = api.get(f"/archive/v1/incidents/{incident_id}")
        return response.json() if response.status_code == 200 else {}

    def until(
        self,
        incident_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        view: dict[str, Any] = wait_for(
            lambda: self.view(incident_id), predicate, timeout=timeout, what=what
        )
        return view

    def timeline(self, incident_id: str) -> list[dict[str, Any]]:
        with self.admin() as api:
            events: list[dict[str, Any]] = api.get(
                f"/archive/v1/incidents/{incident_id}/timeline"
            ).json()["events"]
        return events

    def events(self, incident_id: str, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.timeline(incident_id) if e["event_type"] == event_type]

    def duties(self, incident_id: str) -> list[dict[str, Any]]:
        """The notification service's duties of the incident (its obligations list)."""
        with self.admin() as api:
            listed: list[dict[str, Any]] = api.get(
                "/notifications/v1/obligations", params={"incident_id": incident_id}
            ).json()["obligations"]
        return listed

    @staticmethod
    def at_level_owing(level: int, kinds: set[str]) -> Callable[[dict[str, Any]], bool]:
        """A view at `level` whose duties are exactly `kinds`."""

        def holds(view: dict[str, Any]) -> bool:
            owed = {d["kind"] for d in view.get("obligations", [])}
            return bool(view.get("level") == level and owed == kinds)

        return holds

    @staticmethod
    def met(kind: str) -> Callable[[dict[str, Any]], bool]:
        """A view whose `kind` duty is fulfilled."""

        def holds(view: dict[str, Any]) -> bool:
            return any(
                d["kind"] == kind and d["state"] == "fulfilled" for d in view.get("obligations", [])
            )

        return holds

    def pages(self, obligation_id: str) -> list[dict[str, Any]]:
        """What reached people about a duty (webhook bodies: recipient, subject, text)."""
        return [
            r.json()
            for r in list(self.receiver.requests)
            if r.json().get("obligation_id") == obligation_id
        ]

    def check_pages(self, duty: dict[str, Any], people: set[str], tag: str, article: str) -> None:
        """The duty's first pages reached exactly `people`, with its level and title (also
        when the duty opened before intake's IncidentOpened reached notification: the grade
        names the incident's units)."""

        def first_pages() -> list[dict[str, Any]]:
            return [p for p in self.pages(duty["obligation_id"]) if "前完成：" in p["subject"]]

        pages: list[dict[str, Any]] = wait_for(
            first_pages, lambda ps: {p["recipient"] for p in ps} >= people, timeout=30, what="pages"
        )
        self.check(
            {p["recipient"] for p in pages} == people
            and all(p["subject"].startswith(tag) and duty["title"] in p["subject"] for p in pages),
            f"{article}: paged to {sorted(people)} as {tag}{duty['title']}",
            pages,
        )

    def check_duties(
        self,
        articles: Articles,
        duties: list[dict[str, Any]],
        start: datetime,
        also: Sequence[str] = (),
    ) -> None:
        """Every duty's deadline, recipients (the article's, and `also` where a rule routes
        more) and owner against the article it comes from, the people its first pages
        reached, and the pack that opened it."""
        for duty in duties:
            article, rule, recipients, owner = articles.duties[duty["kind"]]
            expected = [*recipients, *also]
            people = {articles.holders[r] for r in expected}
            self.check_pages(duty, people, articles.tags[duty["level"]], article)
            self.check(
                at(duty["counted_from"]) == start and at(duty["deadline"]) == rule(start),
                f"{article}: {duty['kind']} due {duty['deadline']} (from {start.isoformat()})",
                duty,
            )
            self.check(
                sorted(duty["recipients"]) == sorted(expected) and duty["owner_role"] == owner,
                f"{article}: recipients {expected}, owned by {owner} ({PEOPLE[owner][0]})",
                duty,
            )
            self.check(
                duty["plan_id"] == self.pack, f"{duty['kind']} opened by the {self.pack} pack", duty
            )

    def miss_alerts(self, obligation_id: str) -> dict[str, dict[str, Any]]:
        """The alerts of a duty's miss (【超时告警…】 pages) by notification, once any came."""
        alerts: dict[str, dict[str, Any]] = wait_for(
            lambda: {
                p["notification_id"]: p
                for p in self.pages(obligation_id)
                if p["subject"].startswith("【超时告警")
            },
            bool,
            timeout=30,
            what="the alert of the miss",
        )
        return alerts

    def check_missed(
        self, articles: Articles, incident_id: str, duty: dict[str, Any], alerted: str
    ) -> None:
        """Missed once, at its true deadline, and `alerted` (a person) alerted once."""
        article = articles.duties[duty["kind"]][0]
        view = self.until(
            incident_id,
            lambda v: any(
                d["obligation_id"] == duty["obligation_id"] and d["state"] == "missed"
                for d in v.get("obligations", [])
            ),
            f"{duty['kind']} missed",
        )
        (missed,) = [d for d in view["obligations"] if d["obligation_id"] == duty["obligation_id"]]
        events = [
            e
            for e in self.events(incident_id, "DeadlineMissed")
            if duty["title"] in e["summary"] and at(e["occurred_at"]) == at(duty["deadline"])
        ]
        self.check(
            at(missed["missed_at"]) == at(duty["deadline"]) and len(events) == 1,
            f"{article}: missed once, at its true deadline {duty['deadline']}",
            (missed, events),
        )
        alerts = self.miss_alerts(duty["obligation_id"])
        self.check(
            [p["recipient"] for p in alerts.values()] == [alerted],
            f"{article}: the miss alerts {alerted} once",
            alerts,
        )

    def report(self, body: dict[str, Any], role: str = "monitor") -> str:
        with self.as_(role) as api:
            filed = api.post("/intake/v1/reports", json=body)
        assert filed.status_code in (200, 201), filed.text
        incident_id = str(filed.json()["incident_id"])
        self.say(f"inject report 「{body['title']}」 ({body['source_name']}) -> {incident_id}")
        return incident_id

    def fulfil(self, obligation_id: str, role: str, reference: str) -> dict[str, Any]:
        with self.as_(role) as api:
            filed = api.post(
                f"/notifications/v1/obligations/{obligation_id}/fulfil",
                json={"reference": reference},
            )
        assert filed.status_code == 200, filed.text
        self.say(f"inject fulfilment of {obligation_id} by {PEOPLE[role][0]} ({reference})")
        body: dict[str, Any] = filed.json()
        return body

    def statement(
        self, incident_id: str, draft: dict[str, Any], chain: list[str], publisher: str
    ) -> dict[str, Any]:
        """Draft, submit, clear by exactly `chain` (roles, in order), publish."""
        with self.as_("spokesperson") as author:
            drafted = wait_for(
                lambda: author.post(
                    f"/statements/v1/incidents/{incident_id}/statements", json=draft
                ),
                lambda r: r.status_code != 404,
                timeout=30,
                what="the statement service knowing the incident",
            )
            assert drafted.status_code == 201, drafted.text
            statement_id = drafted.json()["statement_id"]
            wait_for(
                lambda: author.post(f"/statements/v1/statements/{statement_id}/submit"),
                lambda r: r.status_code == 200,
                timeout=30,
                what="the statement submitted on the graded incident",
            )
            shown = wait_for(
                lambda: author.get(f"/statements/v1/statements/{statement_id}").json(),
                lambda s: [step["role"] for step in s["chain"]] == chain,
                timeout=30,
                what=f"the chain {chain}",
            )
        self.say(f"inject statement {statement_id} 「{draft['title']}」, chain {chain}")
        self.check(
            [step["role"] for step in shown["chain"]] == chain,
            f"statement chain is exactly {chain}",
            shown["chain"],
        )
        with self.as_("spokesperson") as author:
            early = author.post(
                f"/statements/v1/statements/{statement_id}/publish",
                json={"outlet": draft["outlets"][0], "url": f"https://x.example/{statement_id}"},
            )
        self.check(early.status_code >= 400, "it cannot be published before clearance", early.text)
        for role in chain:
            with self.as_(role) as approver:
                approved = approver.post(
                    f"/statements/v1/statements/{statement_id}/approve", json={"comment": "同意"}
                )
            assert approved.status_code == 200, approved.text
            self.say(f"inject approval by {PEOPLE[role][0]} ({role})")
        with self.as_(publisher) as api:
            published = api.post(
                f"/statements/v1/statements/{statement_id}/publish",
                json={"outlet": draft["outlets"][0], "url": f"https://x.example/{statement_id}"},
            )
        assert published.status_code == 200, published.text
        self.say(f"inject publication of {statement_id} by {PEOPLE[publisher][0]}")
        view = self.until(
            incident_id,
            lambda v: any(
                s["statement_id"] == statement_id and s["state"] == "published"
                for s in v.get("statements", [])
            ),
            "the statement published in the archive",
        )
        found: list[dict[str, Any]] = [
            s for s in view["statements"] if s["statement_id"] == statement_id
        ]
        (archived,) = found
        approvers = [(a["role"], a["approver"]) for a in archived.get("approvals", [])]
        self.check(
            approvers == [(role, PEOPLE[role][0]) for role in chain],
            "the archive shows it cleared by exactly that chain, then published",
            approvers,
        )
        return archived
