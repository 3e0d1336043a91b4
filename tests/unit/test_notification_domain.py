"""Obligations and their deadlines, with time given explicitly (no clock, no sleeping)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.notification.delivery import NotificationPolicy
from services.notification.domain import (
    AlreadyFulfilled,
    Ledger,
    ObligationAlreadyClosed,
    ObligationPolicy,
    stream_id,
)
from shared.api import status_of
from shared.errors import Conflict, Invalid
from shared.events import (
    Actor,
    Category,
    DeadlineMissed,
    Envelope,
    EventPayload,
    Level,
    ObligationClosed,
    ObligationFulfilled,
    ObligationOpened,
    ObligationState,
)
from shared.policy import PolicyError, load_policy
from shared.settings import CONFIG_DIR

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The shipped file: its duties, and the delivery section the domain does not see.
POLICY = load_policy(CONFIG_DIR / "obligations.yaml", NotificationPolicy)
GRADED = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def record(ledger: Ledger, payloads: Sequence[EventPayload]) -> Ledger:
    for payload in payloads:
        ledger = ledger.apply(
            Envelope.new(
                payload,
                incident_id=ledger.incident_id,
                stream_id=stream_id(ledger.incident_id),
                stream_version=ledger.version + 1,
                actor=Actor.system("test"),
            )
        )
    return ledger


def graded(
    ledger: Ledger,
    level: Level,
    category: Category = "hype",
    at: datetime = GRADED,
    upwards: bool = True,
) -> list[ObligationOpened]:
    return ledger.open_for_grade(
        POLICY,
        level=level,
        category=category,
        graded_at=at,
        tz=SHANGHAI,
        include_level_duties=upwards,
    )


def deadlines(opened: list[ObligationOpened]) -> dict[str, timedelta]:
    return {o.kind: o.deadline - o.counted_from for o in opened}


def test_level_one_owes_the_phone_report_in_30_minutes_and_the_written_one_in_an_hour() -> None:
    opened = graded(Ledger("i1"), 1)

    assert deadlines(opened) == {
        "phone_quick_report": timedelta(minutes=30),
        "written_quick_report": timedelta(minutes=60),
        "tracking_update": timedelta(hours=24),
    }
    assert {o.title for o in opened} == {
        "一级舆情手机快报（半小时内报上级主要领导）",
        "一级舆情纸质快报（一小时内送达上级主要领导）",
        "一级舆情动态跟踪（每24小时报送事态进展）",
    }
    assert all(o.recipients == ("leader",) and o.alert_roles == ("leader",) for o in opened)


def test_level_two_owes_the_bulletin_in_4_hours_and_level_three_direct_handling_in_24() -> None:
    assert deadlines(graded(Ledger("i2"), 2)) == {"online_opinion_bulletin": timedelta(hours=4)}
    assert deadlines(graded(Ledger("i3"), 3)) == {"direct_handling": timedelta(hours=24)}


def test_an_inquiry_is_answered_the_same_local_day_in_shanghai() -> None:
    # 22:30 UTC on the 20th is 06:30 on the 21st in Shanghai: due 23:59 on the 21st local.
    at = datetime(2026, 11, 20, 22, 30, tzinfo=UTC)
    opened = graded(Ledger("i4"), 3, "inquiry", at=at)

    reply = next(o for o in opened if o.kind == "same_day_reply")
    assert reply.deadline.astimezone(SHANGHAI) == datetime(2026, 11, 21, 23, 59, tzinfo=SHANGHAI)
    assert {o.kind for o in opened} == {"direct_handling", "same_day_reply"}


def test_an_inquiry_graded_after_the_evening_cut_off_rolls_to_noon_next_day() -> None:
    at = datetime(2026, 11, 21, 21, 15, tzinfo=SHANGHAI)
    (reply,) = [o for o in graded(Ledger("i5"), 3, "inquiry", at=at) if o.kind == "same_day_reply"]

    assert reply.deadline.astimezone(SHANGHAI) == datetime(2026, 11, 22, 12, 0, tzinfo=SHANGHAI)


def test_escalation_opens_the_new_levels_duties_and_keeps_met_ones_met() -> None:
    ledger = record(Ledger("i6"), graded(Ledger("i6"), 3))
    (direct,) = ledger.obligations.values()
    ledger = record(
        ledger,
        [
            ledger.fulfil(
                direct.obligation_id,
                by="head-liu",
                at=GRADED + timedelta(hours=1),
                reference="直办-001",
            )
        ],
    )

    escalated_at = GRADED + timedelta(hours=2)
    opened = graded(ledger, 1, at=escalated_at)
    ledger = record(ledger, opened)

    assert {o.kind for o in opened} == {
        "phone_quick_report",
        "written_quick_report",
        "tracking_update",
    }
    assert all(o.counted_from == escalated_at for o in opened)  # counted from the new grading
    assert ledger.get(direct.obligation_id).state is ObligationState.FULFILLED
    # Grading again at the same level owes nothing new.
    assert graded(ledger, 1, at=escalated_at + timedelta(minutes=5)) == []


def test_a_downward_override_opens_no_level_duties_but_a_new_category_still_counts() -> None:
    ledger = record(Ledger("i7"), graded(Ledger("i7"), 2))

    opened = graded(ledger, 3, "inquiry", upwards=False)

    assert [o.kind for o in opened] == ["same_day_reply"]


def test_resolving_closes_what_is_pending_but_a_missed_duty_stays_missed() -> None:
    ledger = record(Ledger("i8"), graded(Ledger("i8"), 1))
    by_kind = {o.kind: o for o in ledger.obligations.values()}
    phone = by_kind["phone_quick_report"]
    missed = ledger.missed_by(phone.obligation_id, GRADED + timedelta(minutes=31))
    assert missed is not None
    ledger = record(ledger, [missed])

    closed = ledger.close_owed("事件已办结")
    ledger = record(ledger, closed)

    assert {c.obligation_id for c in closed} == {
        by_kind["written_quick_report"].obligation_id,
        by_kind["tracking_update"].obligation_id,
    }
    assert ledger.get(phone.obligation_id).state is ObligationState.MISSED
    assert ledger.get(by_kind["written_quick_report"].obligation_id).state is ObligationState.CLOSED
    with pytest.raises(ObligationAlreadyClosed, match="已关闭") as err:
        ledger.fulfil(closed[0].obligation_id, by="office-li", at=GRADED, reference=None)
    assert isinstance(err.value, Conflict)
    assert (status_of(err.value), err.value.code) == (409, "obligation_closed")


def test_a_deadline_is_missed_only_once_it_has_passed_and_only_once() -> None:
    ledger = record(Ledger("i9"), graded(Ledger("i9"), 2))
    (bulletin,) = ledger.obligations.values()

    assert (
        ledger.missed_by(bulletin.obligation_id, bulletin.deadline - timedelta(seconds=1)) is None
    )
    missed = ledger.missed_by(bulletin.obligation_id, bulletin.deadline + timedelta(hours=5))
    assert isinstance(missed, DeadlineMissed)
    assert missed.deadline == bulletin.deadline  # the true deadline, not when it was noticed
    ledger = record(ledger, [missed])
    assert ledger.missed_by(bulletin.obligation_id, bulletin.deadline + timedelta(hours=6)) is None


def test_fulfilling_twice_conflicts_and_late_fulfilment_is_flagged() -> None:
    ledger = record(Ledger("i10"), graded(Ledger("i10"), 2))
    (bulletin,) = ledger.obligations.values()

    done = ledger.fulfil(
        bulletin.obligation_id,
        by="office-li",
        at=bulletin.deadline + timedelta(minutes=1),
        reference="网上舆情第3期",
    )
    ledger = record(ledger, [done])

    assert isinstance(done, ObligationFulfilled)
    assert done.late
    with pytest.raises(AlreadyFulfilled, match="不能重复报送") as err:
        ledger.fulfil(bulletin.obligation_id, by="office-li", at=GRADED, reference=None)
    assert isinstance(err.value, Conflict)
    assert (status_of(err.value), err.value.code) == (409, "already_fulfilled")


def test_a_missed_duty_filed_with_an_earlier_time_is_still_late() -> None:
    ledger = record(Ledger("i12"), graded(Ledger("i12"), 2))
    (bulletin,) = ledger.obligations.values()
    missed = ledger.missed_by(bulletin.obligation_id, bulletin.deadline + timedelta(hours=1))
    assert missed is not None
    ledger = record(ledger, [missed])

    done = ledger.fulfil(
        bulletin.obligation_id,
        by="office-li",
        at=bulletin.deadline - timedelta(hours=1),
        reference=None,
    )

    assert done.late


def test_a_duty_cannot_be_met_before_it_was_owed() -> None:
    ledger = record(Ledger("i13"), graded(Ledger("i13"), 2))
    (bulletin,) = ledger.obligations.values()

    with pytest.raises(Invalid, match="起算时间") as err:
        ledger.fulfil(
            bulletin.obligation_id,
            by="office-li",
            at=bulletin.counted_from - timedelta(seconds=1),
            reference=None,
        )

    assert status_of(err.value) == 422
    assert err.value.details[0]["field"] == "fulfilled_at"
    assert err.value.details[0]["type"] == "before_counted_from"
    on_the_dot = ledger.fulfil(
        bulletin.obligation_id, by="office-li", at=bulletin.counted_from, reference=None
    )
    assert not on_the_dot.late


def test_a_reopened_incident_owes_its_duties_again_from_the_reopening() -> None:
    ledger = record(Ledger("i14"), graded(Ledger("i14"), 1))
    by_kind = {o.kind: o for o in ledger.obligations.values()}
    phone, written = by_kind["phone_quick_report"], by_kind["written_quick_report"]
    ledger = record(
        ledger,
        [
            ledger.fulfil(
                phone.obligation_id,
                by="office-li",
                at=GRADED + timedelta(minutes=10),
                reference=None,
            )
        ],
    )
    missed = ledger.missed_by(written.obligation_id, written.deadline)
    assert missed is not None
    ledger = record(ledger, [missed])
    closed: list[ObligationClosed] = ledger.close_owed("事件已办结")
    ledger = record(ledger, closed)
    reopened_at = GRADED + timedelta(days=2)

    opened = ledger.open_for_reopen(
        POLICY, level=1, category="hype", reopened_at=reopened_at, tz=SHANGHAI
    )

    # The missed written report is still owed, so it is not opened a second time.
    assert deadlines(opened) == {
        "phone_quick_report": timedelta(minutes=30),
        "tracking_update": timedelta(hours=24),
    }
    assert all(o.counted_from == reopened_at for o in opened)
    ledger = record(ledger, opened)
    again = ledger.open_for_reopen(
        POLICY, level=1, category="hype", reopened_at=reopened_at, tz=SHANGHAI
    )
    assert again == []
    assert (
        Ledger("i15").open_for_reopen(
            POLICY, level=None, category=None, reopened_at=reopened_at, tz=SHANGHAI
        )
        == []
    )


def test_closing_an_incident_with_nothing_pending_records_nothing() -> None:
    ledger = record(Ledger("i11"), graded(Ledger("i11"), 2))
    (bulletin,) = ledger.obligations.values()
    ledger = record(
        ledger, [ledger.fulfil(bulletin.obligation_id, by="office-li", at=GRADED, reference=None)]
    )

    assert ledger.close_owed("事件已办结") == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("within: 30x", "levels.1.0.within"),
        ('same_day: {due: "12:00", cutoff: "21:00", rollover_to: "12:00"}', "cutoff"),
        (
            "within: 30m\n      same_day: {due: '23:59', cutoff: '21:00', rollover_to: '12:00'}",
            "exactly one",
        ),
        ("within: 30m\n      owner_role: nobody", "owner_role"),
    ],
)
def test_a_bad_policy_entry_is_named_at_load(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "obligations.yaml"
    owner = "" if "owner_role" in entry else "      owner_role: office\n"
    path.write_text(
        "version: t\nalert_roles: [leader]\nlevels:\n  1:\n"
        "    - kind: phone_quick_report\n      title: 手机快报\n"
        f"{owner}      recipients: [leader]\n      {entry}\n",
        encoding="utf-8",
    )

    with pytest.raises(PolicyError, match=message) as err:
        load_policy(path, ObligationPolicy)
    assert str(path) in str(err.value)


def test_an_unquoted_clock_time_is_refused_rather_than_read_as_a_number(tmp_path: Path) -> None:
    path = tmp_path / "obligations.yaml"
    path.write_text(
        "version: t\nalert_roles: [leader]\nlevels: {}\ncategories:\n  inquiry:\n"
        "    - {kind: same_day_reply, title: 当日回复, owner_role: spokesperson,\n"
        "       recipients: [dept_head], same_day: {due: 23:59, cutoff: '21:00',"
        " rollover_to: '12:00'}}\n",
        encoding="utf-8",
    )

    with pytest.raises(PolicyError, match=r"categories\.inquiry\.0\.same_day\.due.*in quotes"):
        load_policy(path, ObligationPolicy)


def test_the_same_kind_twice_in_a_policy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obligations.yaml"
    rule = "{kind: bulletin, title: 通报, owner_role: office, recipients: [leader], within: 4h}"
    path.write_text(
        f"version: t\nalert_roles: [leader]\nlevels:\n  2: [{rule}]\n  3: [{rule}]\n",
        encoding="utf-8",
    )

    with pytest.raises(PolicyError, match=r"'bulletin' appears in levels\.2 and levels\.3"):
        load_policy(path, ObligationPolicy)


# --------------------------------------------------------------------------- 动态跟踪


def test_a_tracking_round_met_or_missed_opens_the_next_counted_from_its_deadline() -> None:
    ledger = record(Ledger("inc-t"), graded(Ledger("inc-t"), 1))
    (first,) = [o for o in ledger.obligations.values() if o.kind == "tracking_update"]
    assert first.deadline == GRADED + timedelta(hours=24)

    # Met early, at hour 5: the next is still due at hour 48, the policy's rhythm.
    ledger = record(
        ledger,
        [
            ledger.fulfil(
                first.obligation_id, by="office-li", at=GRADED + timedelta(hours=5), reference=None
            )
        ],
    )
    second = ledger.next_round(first.obligation_id, POLICY)
    assert second is not None
    assert second.deadline == GRADED + timedelta(hours=48)
    ledger = record(ledger, [second])

    # Missed: the round after it is due 24 hours after the missed deadline.
    missed = ledger.missed_by(second.obligation_id, GRADED + timedelta(hours=49))
    assert missed is not None
    ledger = record(ledger, [missed])
    third = ledger.next_round(second.obligation_id, POLICY)
    assert third is not None
    assert third.deadline == GRADED + timedelta(hours=72)
    ledger = record(ledger, [third])

    # Filing the missed round late does not open a fourth beside the third already owed.
    assert ledger.next_round(second.obligation_id, POLICY) is None


def test_a_one_off_duty_has_no_next_round() -> None:
    ledger = record(Ledger("inc-u"), graded(Ledger("inc-u"), 1))
    phone = next(o for o in ledger.obligations.values() if o.kind == "phone_quick_report")
    assert ledger.next_round(phone.obligation_id, POLICY) is None
