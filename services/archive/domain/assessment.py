"""The assessment (考评, seed 003 篇三 第二十八条) per unit and per person, computed from
folded incident views only, and the office's findings that feed it.

What counts (`RecordKind`), each with the incident and the facts behind it:
- a duty (报送义务) met on time (`on_time`) or late (`late`, 迟报) counts for the person who
  fulfilled it (ObligationFulfilled.fulfilled_by), and for each unit the incident concerns;
- a duty missed (`missed`, 漏报) counts for each unit the incident concerns, under its owner
  role, and for the people holding that role in that unit, else in the nearest unit above
  it that has any (`holders`: a school's duty owned by the county office counts against it);
  still open (`open`, with `overdue` once its deadline passed) or closed (`closed`) only for
  the unit;
- a fulfilment the office marked untrue (`untrue`, 谎报) replaces its on-time or late
  record: it counts against the person who fulfilled it and their unit;
- `concealed` (瞒报), by rule: a unit's own first report of an incident filed more than
  `AssessmentRules.concealed_after_minutes` after the incident was known from another filer
  (another unit, the county, a partner's referral merged in) counts against that unit and
  the person who filed it;
- a release without clearance (`uncleared_release`, 未经批准擅自对外发布) counts against the
  person and the unit the office recorded;
- a commendation (`commendation`, 表扬) is listed for the person (and not their unit) or
  for the unit it names.

A record counts in the period its moment falls in: a duty by when it was counted from
(as `accountability`), a concealed report by when it was filed, a release by when it went
out, a commendation by when it was recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from services.archive.domain.cases import outcome, overdue
from services.archive.domain.views import IncidentView, ObligationView
from shared.directory import Directory
from shared.errors import Conflict
from shared.events import Envelope, FulfilmentMarkedUntrue, ObligationState
from shared.models import FrozenModel

RecordKind = Literal[
    "on_time",
    "late",
    "missed",
    "open",
    "closed",
    "untrue",
    "concealed",
    "uncleared_release",
    "commendation",
]


class AssessmentRules(FrozenModel):
    """The assessment's rules as the plan (or the deployment) sets them, in assessment.yaml."""

    # 瞒报: a unit's own first report this long after the incident was known elsewhere.
    concealed_after_minutes: float = Field(default=60, gt=0, le=7 * 24 * 60)

    @property
    def concealed_after_seconds(self) -> float:
        return self.concealed_after_minutes * 60


# --------------------------------------------------------------------------- the office's findings


class NotFulfilled(Conflict):
    """Only a fulfilled duty can be found untrue."""

    code = "not_fulfilled"


class AlreadyMarkedUntrue(Conflict):
    code = "already_marked_untrue"


def assessment_stream(incident_id: str) -> str:
    """The archive's own stream of the office's findings on one incident."""
    return f"assessment-{incident_id}"


@dataclass(frozen=True)
class AssessmentLog:
    """What the stream holds: which fulfilments were already marked untrue."""

    version: int
    untrue: frozenset[str]


def evolve(current: AssessmentLog | None, event: Envelope) -> AssessmentLog:
    untrue = current.untrue if current is not None else frozenset()
    if isinstance(event.payload, FulfilmentMarkedUntrue):
        untrue = untrue | {event.payload.obligation_id}
    return AssessmentLog(version=event.stream_version, untrue=untrue)


def decide_untrue(
    obligation: ObligationView, log: AssessmentLog | None, reason: str, marked_by: str
) -> FulfilmentMarkedUntrue:
    """The finding that `obligation`'s fulfilment was untrue, once per fulfilment."""
    if obligation.state is not ObligationState.FULFILLED or obligation.fulfilled_by is None:
        raise NotFulfilled(
            f"duty {obligation.obligation_id} is {obligation.state.value}; only a fulfilled "
            "duty can be found untrue",
            {"state": obligation.state.value},
        )
    marked = log is not None and obligation.obligation_id in log.untrue
    if obligation.untrue is not None or marked:
        raise AlreadyMarkedUntrue(
            f"the fulfilment of duty {obligation.obligation_id} was already marked untrue"
        )
    return FulfilmentMarkedUntrue(
        obligation_id=obligation.obligation_id,
        fulfilled_by=obligation.fulfilled_by,
        reason=reason,
        marked_by=marked_by,
    )


# --------------------------------------------------------------------------- the accounts


class AssessmentRecord(BaseModel):
    """One fact behind a count."""

    kind: RecordKind
    # The duty's, the release's or the commendation's id; a concealed report's report id.
    record_id: str
    incident_id: str
    incident_title: str | None
    at: datetime  # the moment it counts by (see the module's docstring)
    unit_id: str | None = None
    person_id: str | None = None  # who it counts for (or against)
    holders: list[str] = []  # a missed duty: who held its owner role in the unit
    obligation_id: str | None = None
    title: str | None = None  # the duty's title, the release's channel
    owner_role: str | None = None
    deadline: datetime | None = None
    fulfilled_at: datetime | None = None
    overdue: bool = False  # an open duty past its deadline
    # Concealed: when the incident was known elsewhere and from whom, and the delay.
    known_at: datetime | None = None
    known_from: str | None = None
    delay_seconds: float | None = None
    reason: str | None = None  # the finding's, the commendation's; a release's content
    recorded_by: str | None = None

    def key(self) -> tuple[str, str, str]:
        """The same fact counted once per person, whichever units it also counts for."""
        return (self.kind, self.incident_id, self.record_id)


class AssessmentCounts(BaseModel):
    on_time: int = 0
    late: int = 0  # 迟报
    missed: int = 0  # 漏报
    open: int = 0
    overdue: int = 0  # of the open ones, those past their deadline
    closed: int = 0
    concealed: int = 0  # 瞒报
    untrue: int = 0  # 谎报
    uncleared_release: int = 0  # 未经审核发布
    commendation: int = 0  # 表扬

    def add(self, record: AssessmentRecord) -> None:
        setattr(self, record.kind, getattr(self, record.kind) + 1)
        self.overdue += record.overdue


class UnitAssessment(BaseModel):
    unit_id: str
    unit_name: str
    counts: AssessmentCounts
    records: list[AssessmentRecord]


class PersonAssessment(BaseModel):
    person_id: str
    name: str
    unit_id: str | None  # the directory's; None for someone it does not list
    counts: AssessmentCounts
    records: list[AssessmentRecord]


class Assessment(BaseModel):
    period_from: datetime
    period_to: datetime
    concealed_after_minutes: float
    units: list[UnitAssessment]
    people: list[PersonAssessment]


@dataclass
class _Ledger:
    directory: Directory
    units: set[str] | None
    by_unit: dict[str, list[AssessmentRecord]]
    by_person: dict[str, list[AssessmentRecord]]

    def person_unit(self, person_id: str | None) -> str | None:
        found = self.directory.person(person_id) if person_id else None
        return found.unit if found is not None else None

    def add(self, record: AssessmentRecord, people: Iterable[str] = ()) -> None:
        if record.unit_id is not None:
            if self.units is not None and record.unit_id not in self.units:
                return
            self.by_unit.setdefault(record.unit_id, []).append(record)
        for person in people:
            rows = self.by_person.setdefault(person, [])
            if all(r.key() != record.key() for r in rows):
                rows.append(record)


def holders(directory: Directory, role: str, unit_id: str) -> list[str]:
    """Who answers for a duty of `role` in `unit_id`: its holders there, else in the nearest
    unit above that has any (a school's incident owed by the county office is the county
    office's; the same people its pages reached)."""
    for unit in directory.upward(unit_id):
        found = sorted(
            p.id for p in directory.people if p.unit == unit and role in {r.value for r in p.roles}
        )
        if found:
            return found
    return []


def _duty(
    ledger: _Ledger, view: IncidentView, o: ObligationView, units: list[str], now: datetime
) -> None:
    result = outcome(o)
    base = {
        "record_id": o.obligation_id,
        "incident_id": view.incident_id,
        "incident_title": view.title,
        "at": o.counted_from,
        "obligation_id": o.obligation_id,
        "title": o.title,
        "owner_role": o.owner_role,
        "deadline": o.deadline,
        "fulfilled_at": o.fulfilled_at,
    }
    if o.untrue is not None and result in ("on_time", "late"):
        # Counted for the fulfiller's own unit (else the incident's units), not as met.
        fulfiller = o.untrue.fulfilled_by
        own = ledger.person_unit(fulfiller)
        for unit in [own] if own is not None else units:
            ledger.add(
                AssessmentRecord(
                    kind="untrue",
                    unit_id=unit,
                    person_id=fulfiller,
                    reason=o.untrue.reason,
                    recorded_by=o.untrue.marked_by,
                    **base,
                ),
                [fulfiller],
            )
        return
    for unit in units:
        people: list[str] = []
        record = AssessmentRecord(kind=result, unit_id=unit, overdue=overdue(o, now), **base)
        if result in ("on_time", "late") and o.fulfilled_by is not None:
            record.person_id = o.fulfilled_by
            people = [o.fulfilled_by]
        elif result == "missed":
            record.holders = people = holders(ledger.directory, o.owner_role, unit)
        ledger.add(record, people)


def _concealed(
    ledger: _Ledger, view: IncidentView, units: list[str], rules: AssessmentRules
) -> list[tuple[AssessmentRecord, str]]:
    """Each unit whose own first report came too long after the incident was known."""
    found: list[tuple[AssessmentRecord, str]] = []
    filings = [(f, ledger.person_unit(f.filed_by) or f.unit_id) for f in view.first_filings]
    for unit in units:
        own = [f for f, of in filings if of == unit]
        others = [f for f, of in filings if of != unit]
        if not own or not others:
            continue
        first = min(own, key=lambda f: (f.received_at, f.filed_by))
        known = min(others, key=lambda f: (f.known_at, f.filed_by))
        delay = (first.received_at - known.known_at).total_seconds()
        if delay <= rules.concealed_after_seconds:
            continue
        record = AssessmentRecord(
            kind="concealed",
            record_id=first.report_id,
            incident_id=view.incident_id,
            incident_title=view.title,
            at=first.received_at,
            unit_id=unit,
            person_id=first.filed_by,
            known_at=known.known_at,
            known_from=known.filed_by,
            delay_seconds=delay,
        )
        found.append((record, first.filed_by))
    return found


def assess(
    views: Iterable[IncidentView],
    start: datetime,
    end: datetime,
    units: set[str] | None,
    now: datetime,
    rules: AssessmentRules,
    directory: Directory,
) -> Assessment:
    """Every count of the period [start, end), per unit (only `units` when given) and per
    person, each with the records behind it."""
    ledger = _Ledger(directory, units, {}, {})
    for view in views:
        concerned = list(view.unit_ids)
        for o in view.obligations:
            if start <= o.counted_from < end:
                _duty(ledger, view, o, concerned, now)
        for record, filer in _concealed(ledger, view, concerned, rules):
            if start <= record.at < end:
                ledger.add(record, [filer])
        for release in view.uncleared_releases:
            if start <= release.released_at < end:
                ledger.add(
                    AssessmentRecord(
                        kind="uncleared_release",
                        record_id=release.release_id,
                        incident_id=view.incident_id,
                        incident_title=view.title,
                        at=release.released_at,
                        unit_id=release.unit_id,
                        person_id=release.released_by,
                        title=release.channel,
                        reason=release.content,
                        recorded_by=release.recorded_by,
                    ),
                    [release.released_by],
                )
        for praise in view.commendations:
            if start <= praise.recorded_at < end:
                record = AssessmentRecord(
                    kind="commendation",
                    record_id=praise.commendation_id,
                    incident_id=view.incident_id,
                    incident_title=view.title,
                    at=praise.recorded_at,
                    unit_id=praise.unit_id if praise.person_id is None else None,
                    person_id=praise.person_id,
                    reason=praise.reason,
                    recorded_by=praise.recorded_by,
                )
                if praise.person_id is None:
                    ledger.add(record)
                elif units is None or praise.unit_id in units:
                    ledger.add(record, [praise.person_id])

    def counted(records: list[AssessmentRecord]) -> AssessmentCounts:
        counts = AssessmentCounts()
        for record in records:
            counts.add(record)
        return counts

    def ordered(records: list[AssessmentRecord]) -> list[AssessmentRecord]:
        return sorted(records, key=lambda r: (r.at, r.incident_id, r.kind, r.obligation_id or ""))

    people = []
    for person_id, records in sorted(ledger.by_person.items()):
        person = directory.person(person_id)
        people.append(
            PersonAssessment(
                person_id=person_id,
                name=person.name if person is not None else person_id,
                unit_id=person.unit if person is not None else None,
                counts=counted(records),
                records=ordered(records),
            )
        )
    return Assessment(
        period_from=start,
        period_to=end,
        concealed_after_minutes=rules.concealed_after_minutes,
        units=[
            UnitAssessment(
                unit_id=unit,
                unit_name=directory.unit_name(unit),
                counts=counted(records),
                records=ordered(records),
            )
            for unit, records in sorted(ledger.by_unit.items())
        ],
        people=people,
    )
