"""The web console in Debian's headless Chromium, driven by Playwright (never a downloaded
browser): the office signs in, sees a level-1 incident and its countdowns, opens it and
fulfils a duty; a page is acknowledged from the link its notification carries; the approval
inbox; the forms (a report, a statement, a grade override, resolution, dismissal, the
review) with their checks and the API's field errors; and one level-1 incident walked from
filing to review by its people; at 1440 px and at 375 px, with a screenshot of each page.
"""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import openpyxl
import pytest

from shared.identity import Role
from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env, wait_for
from tests.e2e.test_walking_skeleton import report, token_for
from tests.service.notification_receivers import HttpReceiver

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
BUILT = Path(__file__).resolve().parents[2] / "console" / "dist" / "index.html"
SHOTS = Path(__file__).resolve().parent / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (/usr/bin/chromium): `apt-get install -y "
        "chromium` (.ci/run does it); no browser is ever downloaded",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


def passwords(system: RunningSystem) -> dict[str, str]:
    lines = [line for line in system.output if line.startswith("YUQING_PASSWORD=")]
    return dict(line.split("=", 1)[1].split(":", 1) for line in lines)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    assert BUILT.exists(), "the console is not built: run `make console` (npm ci, npm run build)"
    SHOTS.mkdir(exist_ok=True)
    # On a loaded machine (two cores shared with the system under test) a page can take
    # longer than Playwright's default 5 seconds to settle: a wrong page still fails.
    sync_api.expect.set_options(timeout=15_000)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def sign_in(page: sync_api.Page, system: RunningSystem, person: str, password: str) -> None:
    page.goto(system.base_url + "/")
    page.get_by_label("用户名").fill(person)
    page.get_by_label("密码", exact=True).fill(password)
    page.get_by_role("button", name="登录").click()


def level_1_incident(system: RunningSystem, title: str) -> tuple[str, list[dict[str, str]]]:
    body = report(
        title=title,
        url=f"https://people.example.cn/n1/2026/1201/c1-{time.time_ns()}.html",
        excerpt=f"{title}：家长要求公开调查结果。",
    )
    with system.client() as api:
        incident_id = api.post("/intake/v1/reports", json=body).json()["incident_id"]
        owed = wait_for(
            lambda: api.get(
                "/notifications/v1/obligations", params={"incident_id": incident_id}
            ).json()["obligations"],
            lambda rows: len(rows) >= 2,
            what="the level-1 duties opened",
        )
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
            lambda v: v.get("level") == 1 and len(v.get("obligations", [])) == len(owed),
            what="the graded incident with its duties in the archive",
        )
    return incident_id, sorted(owed, key=lambda o: o["deadline"])


def no_sideways_scroll(page: sync_api.Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_the_office_signs_in_sees_the_countdown_and_fulfils_a_duty(
    system: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    office = passwords(system)["office-li"]
    incident_id, owed = level_1_incident(system, "实验小学食堂食材过期引发家长质疑（控制台）")
    first = owed[0]

    desktop = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = desktop.new_page()
    sign_in(page, system, "office-li", office)
    expect(page).to_have_url(f"{system.base_url}/dashboard")
    expect(page.get_by_text("李主任（领导小组办公室）")).to_be_visible()

    row = page.locator(f"li.incident[data-incident='{incident_id}']")
    expect(row).to_be_visible()
    expect(row.get_by_text("一级")).to_be_visible()

    # The soonest duty's countdown agrees with the deadline the API states, and ticks.
    timer = page.locator(f"li.obligation[data-obligation='{first['obligation_id']}'] [role=timer]")
    expect(timer).to_contain_text("剩余")
    shown = int(timer.get_attribute("data-seconds-left") or "0")
    deadline = datetime.fromisoformat(first["deadline"].replace("Z", "+00:00")).timestamp()
    assert abs((deadline - time.time()) - shown) <= 2, (shown, first["deadline"])
    page.wait_for_function(
        "([el, s]) => Number(el.dataset.secondsLeft) < s", arg=[timer.element_handle(), shown]
    )
    page.screenshot(path=str(SHOTS / "dashboard-1440.png"), full_page=True)

    # Filed elsewhere, it comes onto the open dashboard by itself (the change stream).
    page.evaluate("window.notReloaded = true")
    later, _ = level_1_incident(system, "第二中学周边道路积水引发家长关注（控制台）")
    expect(page.locator(f"li.incident[data-incident='{later}']")).to_be_visible(timeout=20_000)
    assert page.evaluate("window.notReloaded === true")

    row.get_by_role("link").click()
    expect(page).to_have_url(f"{system.base_url}/incidents/{incident_id}")
    expect(page.get_by_role("heading", name="定级记录")).to_be_visible()
    expect(page.get_by_text("存证链完整")).to_be_visible()
    expect(page.get_by_text("处置时间线")).to_be_visible()

    duty = page.locator(f"li.obligation[data-obligation='{first['obligation_id']}']")
    duty.get_by_role("button", name="登记报送").click()
    page.get_by_label("文号或备注（选填）").fill("电话已报县委值班室")
    page.get_by_role("button", name="确认已报送").click()
    expect(duty.get_by_text("已报送")).to_be_visible()
    expect(duty.get_by_role("button", name="登记报送")).to_have_count(0)
    with system.client() as api:
        done = api.get("/notifications/v1/obligations", params={"incident_id": incident_id}).json()[
            "obligations"
        ]
    met = next(o for o in done if o["obligation_id"] == first["obligation_id"])
    assert met["state"] == "fulfilled"
    page.screenshot(path=str(SHOTS / "incident-1440.png"), full_page=True)

    # As of the first step (the incident opened, not graded): no duties yet, nothing to do.
    slider = page.get_by_role("slider")
    slider.focus()
    slider.press("Home")
    expect(page.get_by_text("只读")).to_be_visible()
    expect(page.get_by_text("暂无报送义务")).to_be_visible()
    expect(page.get_by_role("button", name="登记报送")).to_have_count(0)
    page.screenshot(path=str(SHOTS / "incident-as-of-1440.png"), full_page=True)
    page.get_by_role("button", name="回到当前").click()
    expect(duty.get_by_text("已报送")).to_be_visible()

    # The session ends: the next page goes to sign-in, not to a blank or a JSON error.
    desktop.clear_cookies()
    page.goto(f"{system.base_url}/incidents/{incident_id}")
    expect(page.get_by_role("button", name="登录")).to_be_visible()
    desktop.close()

    phone = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    page = phone.new_page()
    sign_in(page, system, "office-li", office)
    expect(page.locator(f"li.incident[data-incident='{incident_id}']")).to_be_visible()
    assert no_sideways_scroll(page), "the dashboard scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "dashboard-375.png"), full_page=True)
    page.goto(f"{system.base_url}/incidents/{incident_id}")
    expect(page.get_by_text("存证链完整")).to_be_visible()
    assert no_sideways_scroll(page), "the incident page scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "incident-375.png"), full_page=True)
    phone.close()


SHORT_POLICY = """\
version: e2e-console
alert_roles: [leader]
levels:
  1:
    - {kind: phone_quick_report, title: 一级舆情手机快报, owner_role: office,
       recipients: [leader], within: 40s}
    - {kind: written_quick_report, title: 一级舆情纸质快报, owner_role: office,
       recipients: [leader], within: 60m}
"""


@pytest.fixture(scope="module")
def short_deadlines(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """The system with a level-1 phone report due in 40 seconds, whose incident view embeds
    only two reports."""
    tmp = tmp_path_factory.mktemp("console-short")
    policy = tmp / "obligations.yaml"
    policy.write_text(SHORT_POLICY, encoding="utf-8")
    run = uuid.uuid4().hex[:8]
    running = RunningSystem(
        system_env(
            tmp / "data",
            KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
            MONGODB_URL=infra.mongo,
            YUQING_DB_PREFIX=f"console{run}",
            YUQING_TOPIC_PREFIX=f"console{run}.",
            YUQING_OUTBOX_POLL_SECONDS="0.2",
            YUQING_OBLIGATIONS_POLICY_PATH=str(policy),
            # The incident view embeds two reports: the rest are read by page.
            YUQING_ARCHIVE_EMBEDDED_REPORTS="2",
        )
    )
    yield running
    running.stop()


def test_a_countdown_turns_red_when_its_deadline_passes_without_a_reload(
    short_deadlines: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    system = short_deadlines
    incident_id, owed = level_1_incident(system, "实验小学门口交通事故视频传播（控制台）")
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = context.new_page()
    sign_in(page, system, "office-li", passwords(system)["office-li"])
    expect(page).to_have_url(f"{system.base_url}/dashboard")
    page.goto(f"{system.base_url}/incidents/{incident_id}")
    timer = page.locator(
        f"li.obligation[data-obligation='{owed[0]['obligation_id']}'] [role=timer]"
    )
    expect(timer).to_contain_text("剩余")
    expect(timer).not_to_have_class(re.compile("overdue"))
    page.evaluate("window.notReloaded = true")
    expect(timer).to_have_class(re.compile("overdue"), timeout=60_000)
    expect(timer).to_contain_text("已超时")
    assert page.evaluate("window.notReloaded === true")
    page.screenshot(path=str(SHOTS / "incident-overdue-1440.png"), full_page=True)
    context.close()


def test_refusals_and_failures_read_as_clear_chinese_messages(
    system: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    incident_id, owed = level_1_incident(system, "实验小学校车超载视频引发关注（控制台）")
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = context.new_page()
    sign_in(page, system, "monitor-chen", passwords(system)["monitor-chen"])
    expect(page).to_have_url(f"{system.base_url}/dashboard")
    page.goto(f"{system.base_url}/incidents/{incident_id}")

    # A monitor may see the duty but not file it: the service's 403, explained.
    duty = page.locator(f"li.obligation[data-obligation='{owed[0]['obligation_id']}']")
    duty.get_by_role("button", name="登记报送").click()
    page.get_by_role("button", name="确认已报送").click()
    expect(page.get_by_role("dialog").get_by_text("您没有权限").first).to_be_visible()
    page.screenshot(path=str(SHOTS / "incident-forbidden-1440.png"))
    with system.client() as api:
        still = api.get("/notifications/v1/obligations", params={"incident_id": incident_id})
    assert {o["state"] for o in still.json()["obligations"]} == {"open"}

    # The archive failing: the page says what failed and that nothing was lost.
    page.route(
        "**/archive/v1/incidents/*",
        lambda route: route.fulfill(
            status=503,
            content_type="application/json",
            body='{"error": {"code": "unavailable", "message": "database", "details": null}}',
        ),
    )
    page.reload()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("加载事件失败")
    expect(alert).to_contain_text("没有丢失")
    page.screenshot(path=str(SHOTS / "incident-unavailable-1440.png"))
    context.close()


def test_wrong_passwords_lock_the_account_and_the_page_says_so(
    system: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    right = passwords(system)["head-liu"]
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = context.new_page()
    sign_in(page, system, "head-liu", "not-the-password")
    expect(page.get_by_role("alert")).to_contain_text("用户名或密码不正确")
    with httpx.Client(base_url=system.base_url) as http:
        for _ in range(4):
            wrong = http.post("/auth/v1/login", json={"username": "head-liu", "password": "x"})
            assert wrong.status_code in (401, 429)
        assert wrong.status_code == 429  # the fifth wrong one locks
    sign_in(page, system, "head-liu", right)
    expect(page.get_by_role("alert")).to_contain_text("账户已暂时锁定")
    page.screenshot(path=str(SHOTS / "login-locked-1440.png"), full_page=True)
    context.close()


def test_a_session_cookie_needs_the_csrf_header_to_change_anything(system: RunningSystem) -> None:
    with httpx.Client(base_url=system.base_url) as http:
        signed_in = http.post(
            "/auth/v1/login",
            json={"username": "office-li", "password": passwords(system)["office-li"]},
        )
        assert signed_in.status_code == 200, signed_in.text
        assert "httponly" in signed_in.headers["set-cookie"].lower()
        assert "samesite=strict" in signed_in.headers["set-cookie"].lower()
        assert http.get("/archive/v1/incidents").status_code == 200  # the cookie is enough to read
        fulfil = "/notifications/v1/obligations/no-such-duty/fulfil"
        refused = http.post(fulfil, json={})
        assert refused.status_code == 403
        assert refused.json()["error"]["details"] == {"csrf": "missing or wrong"}
        csrf = http.cookies["yuqing_csrf"]
        assert http.post(fulfil, json={}, headers={"X-CSRF-Token": csrf}).status_code == 404


# --- acknowledging a page from its link ------------------------------------------------

PAGING_POLICY = """\
version: e2e-console-paging
alert_roles: [leader]
levels:
  1:
    - {{kind: phone_quick_report, title: 一级舆情手机快报, owner_role: office,
       recipients: [leader], within: 60m}}
    - {{kind: written_quick_report, title: 一级舆情纸质快报, owner_role: office,
       recipients: [leader], within: 60m}}
delivery:
  channels:
    webhook: {{type: webhook, url: "{url}", secret_env: YUQING_E2E_WEBHOOK_SECRET}}
  kinds:
    default: [webhook]
  retry: {{attempts: 3, first: 1s, cap: 2s}}
  ack_window: 30s
  renotify: 1
"""


@pytest.fixture(scope="module")
def paging(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningSystem, HttpReceiver]]:
    """The system paging the leader by a signed webhook; a page nobody acknowledges within
    30 seconds is sent again."""
    tmp = tmp_path_factory.mktemp("console-paging")
    with HttpReceiver().running() as receiver:
        policy = tmp / "obligations.yaml"
        policy.write_text(PAGING_POLICY.format(url=receiver.url), encoding="utf-8")
        run = uuid.uuid4().hex[:8]
        running = RunningSystem(
            system_env(
                tmp / "data",
                KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
                MONGODB_URL=infra.mongo,
                YUQING_DB_PREFIX=f"paging{run}",
                YUQING_TOPIC_PREFIX=f"paging{run}.",
                YUQING_OUTBOX_POLL_SECONDS="0.2",
                YUQING_OBLIGATIONS_POLICY_PATH=str(policy),
                YUQING_E2E_WEBHOOK_SECRET="e2e-console-webhook-secret",
            )
        )
        yield running, receiver
        running.stop()


def pages_about(receiver: HttpReceiver, incident_id: str) -> list[dict[str, Any]]:
    return [r.json() for r in list(receiver.requests) if r.json()["incident_id"] == incident_id]


def link(text: str, label: str) -> str:
    """The address on the line `label：<url>` of a notification's text, as it was sent."""
    found = re.search(rf"^{label}：(\S+)$", text, re.MULTILINE)
    assert found, f"no {label} link in: {text}"
    return found.group(1)


def test_a_page_is_acknowledged_from_its_link_after_sign_in_and_is_not_chased(
    paging: tuple[RunningSystem, HttpReceiver], browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    system, receiver = paging
    incident_id, owed = level_1_incident(system, "实验小学午餐出现异物视频传播（控制台）")
    written = next(o for o in owed if o["kind"] == "written_quick_report")
    phone = next(o for o in owed if o["kind"] == "phone_quick_report")
    sent = wait_for(
        lambda: pages_about(receiver, incident_id),
        lambda got: {p["obligation_id"] for p in got} >= {written["obligation_id"]},
        timeout=30,
        what="the leader paged about the written quick report",
    )
    message = next(p for p in sent if p["obligation_id"] == written["obligation_id"])
    assert message["recipient"] == "leader-zhang"
    ack_link = link(message["text"], "确认收到")
    detail_link = link(message["text"], "事件详情")
    # The links are console pages at the public base URL, not API routes.
    assert ack_link == message["ack_url"] == f"{system.base_url}/ack/{message['notification_id']}"
    assert detail_link == message["incident_url"] == f"{system.base_url}/incidents/{incident_id}"

    context = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.goto(ack_link)  # opened from the phone, signed out: sign in first, then back here
    page.get_by_label("用户名").fill("leader-zhang")
    page.get_by_label("密码", exact=True).fill(passwords(system)["leader-zhang"])
    page.get_by_role("button", name="登录").click()
    expect(page).to_have_url(ack_link)
    card = page.locator(f"[data-notification='{message['notification_id']}']")
    expect(card.get_by_role("link", name="实验小学午餐出现异物视频传播（控制台）")).to_be_visible()
    expect(card.get_by_text("一级舆情", exact=True)).to_be_visible()
    expect(card.locator(".asked")).to_have_text("一级舆情纸质快报")
    expect(card.get_by_text("已发送，待确认")).to_be_visible()
    assert no_sideways_scroll(page), "the acknowledgement page scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "ack-375.png"), full_page=True)

    # Opening the page (and signing in) acknowledged nothing: only the button does.
    read = f"/notifications/v1/notifications/{message['notification_id']}"
    with system.client() as api:
        assert api.get(read).json()["state"] == "sent"
    card.get_by_role("button", name="确认收到").click()
    expect(card.get_by_text("本通知已于")).to_be_visible()
    expect(card.get_by_role("button", name="确认收到")).to_have_count(0)
    page.screenshot(path=str(SHOTS / "ack-done-375.png"), full_page=True)
    with system.client() as api:
        shown = api.get(read).json()
        assert shown["state"] == "acknowledged"
        assert shown["acknowledged_at"]

    # The detail link opens the incident page.
    page.goto(detail_link)
    expect(page.get_by_role("heading", name="定级记录")).to_be_visible()
    expect(page.get_by_text("实验小学午餐出现异物视频传播（控制台）").first).to_be_visible()
    context.close()

    # The other page, not acknowledged, is sent again once its window passes; the
    # acknowledged one is not (both were due at the same instant, and their renotices go
    # out together, before either is on the record the archive shows).
    def renotices(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for p in got if p["subject"].startswith("【再次提醒")]

    wait_for(
        lambda: pages_about(receiver, incident_id),
        lambda got: any(p["obligation_id"] == phone["obligation_id"] for p in renotices(got)),
        timeout=90,
        what="the unacknowledged page sent again",
    )
    with system.client() as api:
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}/timeline").json()["events"],
            lambda events: sum(e["event_type"] == "NotificationSent" for e in events) >= 3,
            timeout=30,
            what="the renotice on the record",
        )
        assert api.get(read).json()["state"] == "acknowledged"
    chased = [
        p
        for p in pages_about(receiver, incident_id)
        if p["obligation_id"] == written["obligation_id"]
    ]
    assert [p["notification_id"] for p in chased] == [message["notification_id"]], chased


# --- the approval inbox ----------------------------------------------------------------


def sign_in_here(page: sync_api.Page, system: RunningSystem, person: str) -> None:
    """Sign in on the page the browser is on (the sign-in page it was sent to)."""
    page.get_by_label("用户名").fill(person)
    page.get_by_label("密码", exact=True).fill(passwords(system)[person])
    page.get_by_role("button", name="登录").click()


def test_the_inbox_shows_whose_step_it_is_and_approvals_and_rejections_are_made_there(
    system: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    title = "实验小学校服收费问题引发家长议论（控制台审批）"
    incident_id, _ = level_1_incident(system, title)
    writer = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    draft = {
        "kind": "online_reply",
        "title": "关于校服收费问题的情况说明",
        "body": "经核实，校服费用为自愿征订。",
        "facts": [{"label": "征订人数", "value": "300"}],
        "outlets": ["学校官网"],
    }
    with system.client(writer) as api:
        statement_id = api.post(
            f"/statements/v1/incidents/{incident_id}/statements", json=draft
        ).json()["statement_id"]
        content = {k: v for k, v in draft.items() if k != "kind"}
        revised = {**content, "body": "经核实，校服费用为自愿征订，学校未强制收费。"}
        assert api.put(f"/statements/v1/statements/{statement_id}", json=revised).is_success
        submitted = wait_for(
            lambda: api.post(f"/statements/v1/statements/{statement_id}/submit"),
            lambda r: r.status_code == 200,
            what="the statement submitted on the graded incident",
        )
        assert submitted.json()["state"] == "in_review"

    office = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = office.new_page()
    sign_in(page, system, "office-li", passwords(system)["office-li"])
    page.get_by_role("navigation", name="主导航").get_by_role("link", name="审批待办").click()
    card = page.locator(f"[data-statement='{statement_id}']")
    expect(card.get_by_role("heading", name="关于校服收费问题的情况说明")).to_be_visible()
    expect(card.get_by_role("link", name=title)).to_be_visible()
    expect(card.get_by_text("第 1 版 → 第 2 版的改动")).to_be_visible()
    expect(card.get_by_text("+经核实，校服费用为自愿征订，学校未强制收费。")).to_be_visible()
    expect(card.get_by_label("审批流程")).to_contain_text("领导小组办公室")
    page.screenshot(path=str(SHOTS / "inbox-1440.png"), full_page=True)

    # Rejecting needs a reason: checked before anything is sent.
    card.get_by_role("button", name="退回").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="确认退回").click()
    expect(dialog.get_by_text("退回时须写明理由")).to_be_visible()
    with system.client() as api:
        assert api.get(f"/statements/v1/statements/{statement_id}").json()["state"] == "in_review"
    page.screenshot(path=str(SHOTS / "inbox-reject-empty-1440.png"), animations="disabled")
    dialog.get_by_label("退回理由（必填）").fill("请补充收费标准的文件依据。")
    dialog.get_by_role("button", name="确认退回").click()
    expect(card).to_have_count(0)
    with system.client() as api:
        shown = api.get(f"/statements/v1/statements/{statement_id}").json()
    assert shown["state"] == "rejected"
    assert shown["rejections"][-1]["comment"] == "请补充收费标准的文件依据。"
    assert shown["rejections"][-1]["approver"] == "office-li"

    # The author sees the rejection and its comment.
    author = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    mine = author.new_page()
    mine.goto(f"{system.base_url}/inbox")
    sign_in_here(mine, system, "spokesperson-sun")
    expect(mine).to_have_url(f"{system.base_url}/inbox")
    row = mine.locator(f"li.mine[data-statement='{statement_id}']")
    expect(row.get_by_text("已退回")).to_be_visible()
    expect(row.get_by_role("note")).to_contain_text("请补充收费标准的文件依据。")
    assert no_sideways_scroll(mine), "the inbox scrolls sideways at 375 px"
    mine.screenshot(path=str(SHOTS / "inbox-rejected-375.png"), full_page=True)
    author.close()

    # Revised and submitted again, the office approves, then the propaganda department.
    with system.client(writer) as api:
        again = {**revised, "body": revised["body"] + "收费标准依据县发改委文件。"}
        assert api.put(f"/statements/v1/statements/{statement_id}", json=again).is_success
        assert api.post(f"/statements/v1/statements/{statement_id}/submit").is_success
    page.reload()
    card.get_by_role("button", name="同意").click()
    page.get_by_role("dialog").get_by_label("审批意见（选填）").fill("同意，报专班审定。")
    page.get_by_role("dialog").get_by_role("button", name="确认同意").click()
    expect(card).to_have_count(0)
    office.close()

    task_force = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = task_force.new_page()
    page.goto(f"{system.base_url}/inbox")
    sign_in_here(page, system, "propaganda-wang")
    card = page.locator(f"[data-statement='{statement_id}']")
    expect(card.get_by_label("审批流程")).to_contain_text("已同意")
    card.get_by_role("button", name="同意").click()
    page.get_by_role("dialog").get_by_role("button", name="确认同意").click()
    expect(card).to_have_count(0)
    task_force.close()
    with system.client() as api:
        cleared = api.get(f"/statements/v1/statements/{statement_id}").json()
    assert cleared["state"] == "approved"
    assert [s["approved_by"] for s in cleared["chain"]] == ["office-li", "propaganda-wang"]


def test_the_dashboards_waiting_statements_follow_approvals_made_elsewhere_live(
    system: RunningSystem, browser: sync_api.Browser
) -> None:
    """The propaganda department's dashboard, left open: the office's approval (another
    person, elsewhere) brings the statement into its list, and its own approval made from
    another device while the stream was down takes it out again once the stream is back,
    without a reload."""
    expect = sync_api.expect
    title = "实验小学午休管理问题引发讨论（实时待审）"
    incident_id, _ = level_1_incident(system, title)
    writer = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    draft = {
        "kind": "online_reply",
        "title": "关于午休管理的情况说明",
        "body": "经核实，学校已调整午休安排。",
        "outlets": ["学校官网"],
    }
    with system.client(writer) as api:
        statement_id = api.post(
            f"/statements/v1/incidents/{incident_id}/statements", json=draft
        ).json()["statement_id"]
        wait_for(
            lambda: api.post(f"/statements/v1/statements/{statement_id}/submit"),
            lambda r: r.status_code == 200,
            what="the statement submitted on the graded incident",
        )

    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = context.new_page()
    sign_in(page, system, "propaganda-wang", passwords(system)["propaganda-wang"])
    expect(page.get_by_text("● 实时更新中")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    waiting = page.get_by_role("list", name="待我审批的口径")
    row = waiting.locator(f"li[data-statement='{statement_id}']")
    expect(page.get_by_text("正在读取审批待办…")).to_have_count(0)
    expect(row).to_have_count(0)  # the office's step comes first

    office = token_for(system, "office-li", "county", Role.OFFICE)
    with system.client(office) as api:
        approved = api.post(
            f"/statements/v1/statements/{statement_id}/approve", json={"comment": "同意。"}
        )
        assert approved.status_code == 200, approved.text
    expect(row).to_be_visible(timeout=20_000)
    expect(row.get_by_role("link", name="关于午休管理的情况说明")).to_be_visible()
    page.screenshot(path=str(SHOTS / "dashboard-waiting-1440.png"), full_page=True)

    # The stream down (the dashboard opened again while the connection fails), approved
    # from the department's phone meanwhile: once the stream is back, the list drops it.
    page.route("**/events/v1/stream**", lambda route: route.abort())
    nav = page.get_by_role("navigation", name="主导航")
    nav.get_by_role("link", name="案例库").click()
    expect(page.get_by_role("heading", name="案例库")).to_be_visible()
    nav.get_by_role("link", name="态势总览").click()
    expect(page.get_by_text("○ 实时连接中断，正在重连…")).to_be_visible()
    expect(row).to_be_visible()
    own = token_for(system, "propaganda-wang", "county", Role.PROPAGANDA)
    with system.client(own) as api:
        cleared = api.post(f"/statements/v1/statements/{statement_id}/approve", json={})
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["state"] == "approved"
    page.unroute("**/events/v1/stream**")
    expect(page.get_by_text("● 实时更新中")).to_be_visible(timeout=20_000)
    expect(row).to_have_count(0, timeout=20_000)
    expect(page.get_by_text("当前没有等待您审批的稿件。")).to_be_visible()
    assert page.evaluate("window.notReloaded === true")
    page.set_viewport_size({"width": 375, "height": 812})
    assert no_sideways_scroll(page), "the dashboard scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "dashboard-waiting-none-375.png"), full_page=True)
    context.close()


# --- the forms -------------------------------------------------------------------------


def choose(page: sync_api.Page, label: str, option: str) -> None:
    """Pick `option` of the select labelled `label` (Element Plus renders its own list),
    opened from the keyboard."""
    box = page.get_by_role("combobox", name=label)
    box.focus()
    box.press("Enter")
    listbox = page.locator(f"#{box.get_attribute('aria-controls')}")
    listbox.get_by_role("option", name=option, exact=True).click()
    # The list closes once chosen; the option, hidden then, says it is the one selected.
    chosen = listbox.get_by_role("option", name=option, exact=True, include_hidden=True)
    sync_api.expect(chosen).to_have_attribute("aria-selected", "true")


def field(page: sync_api.Page, key: str) -> sync_api.Locator:
    """The form item of the field `key` (its API name), with its label, input and error."""
    return page.locator(f".field-{re.sub(r'[^A-Za-z0-9]', '-', key)}")


def test_reports_statements_grades_resolution_and_review_are_made_with_the_console_forms(
    system: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    run = uuid.uuid4().hex[:8]
    title = f"网传实验小学食堂使用过期牛奶（控制台表单{run}）"
    desktop = {"viewport": {"width": 1440, "height": 900}, "locale": "zh-CN"}

    # A monitor files a report; what is missing is said at each field, nothing is sent.
    monitor = browser.new_context(**desktop, timezone_id="Asia/Shanghai")
    page = monitor.new_page()
    sign_in(page, system, "monitor-chen", passwords(system)["monitor-chen"])
    page.get_by_role("navigation", name="主导航").get_by_role("link", name="报送舆情").click()
    expect(page.get_by_role("heading", name="报送舆情")).to_be_visible()
    page.get_by_role("button", name="报送").click()
    # Taken to the first field to fix.
    expect(page.get_by_role("combobox", name="来源类型")).to_be_focused()
    expect(field(page, "source_name")).to_contain_text("此项必填")
    expect(field(page, "url")).to_contain_text("此项必填")
    expect(field(page, "media_tier")).to_contain_text("请选择")
    expect(field(page, "unit_ids")).not_to_contain_text("请选择")  # the monitor's own unit
    page.screenshot(path=str(SHOTS / "file-empty-1440.png"), full_page=True)

    choose(page, "来源类型", "微博")
    page.get_by_label("来源名称").fill("新浪微博")
    choose(page, "媒体层级", "中央媒体")
    page.get_by_label("网址").fill("weibo.example/1")
    page.get_by_label("标题").fill(title)
    page.get_by_label("摘要").fill("有网友发帖称学校食堂使用过期牛奶。")
    page.get_by_label("浏览量").fill("20000000000")
    page.get_by_role("button", name="报送").click()
    expect(field(page, "url")).to_contain_text("网址须以 http:// 或 https:// 开头")
    page.get_by_label("网址").fill(f"https://weibo.example/{run}")
    # The API refuses the reach beyond the intake policy's bound: shown at the field.
    page.get_by_role("button", name="报送").click()
    expect(field(page, "reach.views")).to_contain_text("不能大于 10000000000")
    expect(page.get_by_role("alert")).to_contain_text("请按提示修改")
    page.screenshot(path=str(SHOTS / "file-refused-1440.png"), full_page=True)
    with system.client() as api:
        listed = api.get("/archive/v1/incidents", params={"limit": 100}).json()["items"]
        assert title not in [i["title"] for i in listed]
    page.get_by_label("浏览量").fill("5000")
    page.get_by_role("button", name="报送").click()
    expect(page).to_have_url(re.compile(r"/incidents/inc-"))
    incident_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=20_000)
    monitor.close()
    with system.client() as api:
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
            lambda v: v.get("level") == 1,
            timeout=20,
            what="the filed report graded level 1",
        )

    # The spokesperson drafts and submits a statement.
    writer = browser.new_context(**desktop)
    page = writer.new_page()
    page.goto(f"{system.base_url}/incidents/{incident_id}")
    sign_in_here(page, system, "spokesperson-sun")
    page.get_by_role("button", name="起草口径").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("标题").fill("关于网传食堂使用过期牛奶的情况说明")
    dialog.get_by_role("button", name="保存并提交审批").click()
    expect(field(dialog, "body")).to_contain_text("此项必填")
    dialog.get_by_label("正文").fill("经查，涉事牛奶在保质期内，网传情况不实。")
    dialog.get_by_role("button", name="添加一项数据").click()
    dialog.get_by_label("第 1 项数据名称").fill("涉事牛奶批次")
    dialog.get_by_label("第 1 项数据数值").fill("1")
    dialog.get_by_label("拟发布渠道").fill("学校官网、官方微博")
    page.screenshot(
        path=str(SHOTS / "statement-form-1440.png"), full_page=True, animations="disabled"
    )
    dialog.get_by_role("button", name="保存并提交审批").click()
    row = page.locator("li.statement").filter(has_text="关于网传食堂使用过期牛奶的情况说明")
    expect(row.get_by_text("审核中").first).to_be_visible(timeout=20_000)
    writer.close()
    with system.client() as api:
        (statement,) = api.get(f"/statements/v1/incidents/{incident_id}/statements").json()
        shown = api.get(f"/statements/v1/statements/{statement['statement_id']}").json()
    assert shown["state"] == "in_review"
    assert shown["versions"][-1]["facts"] == [{"label": "涉事牛奶批次", "value": "1"}]
    assert shown["versions"][-1]["outlets"] == ["学校官网", "官方微博"]

    # The leader lowers the grade, with the reason the form asks for.
    leader = browser.new_context(**desktop)
    page = leader.new_page()
    page.goto(f"{system.base_url}/incidents/{incident_id}")
    sign_in_here(page, system, "leader-zhang")
    page.get_by_role("button", name="调整定级").click()
    dialog = page.get_by_role("dialog")
    choose(page, "级别", "二级")
    dialog.get_by_role("button", name="确认调整").click()
    expect(field(dialog, "reason")).to_contain_text("此项必填")
    dialog.get_by_label("调整理由").fill("经核实影响范围有限，调整为二级。")
    dialog.get_by_role("button", name="确认调整").click()
    expect(dialog).to_have_count(0)
    expect(page.get_by_text("人工调整：一级 → 二级")).to_be_visible(timeout=20_000)
    with system.client() as api:
        grade = api.get(f"/grading/v1/incidents/{incident_id}/grade").json()
    assert grade["level"] == 2

    # The leader resolves it, then writes the review.
    page.get_by_role("button", name="办结").click()
    page.get_by_role("dialog").get_by_label("办结说明（舆情平息的情况）").fill(
        "情况说明发布后舆情平息。"
    )
    page.get_by_role("dialog").get_by_role("button", name="确认办结").click()
    expect(page.get_by_role("button", name="撰写总结评估")).to_be_visible(timeout=20_000)
    page.get_by_role("button", name="撰写总结评估").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("事件起因").fill("家长误将临期牛奶当作过期牛奶。")
    dialog.get_by_label("处置经过").fill("监测发现后一小时内核实并发布说明。")
    dialog.get_by_role("button", name="提交总结评估").click()
    expect(field(dialog, "lessons")).to_contain_text("此项必填")
    dialog.get_by_label("经验教训").fill("食材公示应包含保质期信息。")
    dialog.get_by_role("button", name="提交总结评估").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    review = page.locator(".review")
    expect(review.get_by_role("heading", name="总结评估")).to_be_visible(timeout=20_000)
    expect(review.get_by_text("食材公示应包含保质期信息。")).to_be_visible()
    expect(page.get_by_role("button", name="撰写总结评估")).to_have_count(0)
    page.screenshot(path=str(SHOTS / "incident-reviewed-1440.png"), full_page=True)
    with system.client() as api:
        view = api.get(f"/archive/v1/incidents/{incident_id}").json()
    assert view["status"] in ("resolved", "archived")
    assert view["review"]["lessons"] == "食材公示应包含保质期信息。"

    # Another report is a pseudo-incident: the office dismisses it, with the reason.
    with system.client() as api:
        other = api.post(
            "/intake/v1/reports",
            json=report(
                title=f"网传第二中学停课（控制台{run}）",
                url=f"https://forum.example/{run}",
                media_tier="self_media",
                excerpt="网传第二中学明日停课。",
                unit_ids=["school-b"],
            ),
        ).json()["incident_id"]
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{other}").status_code,
            lambda code: code == 200,
            what="the other incident in the archive",
        )
    leader.close()
    office = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    page = office.new_page()
    page.goto(f"{system.base_url}/incidents/{other}")
    sign_in_here(page, system, "office-li")
    page.get_by_role("button", name="排除为伪舆情").click()
    page.get_by_role("dialog").get_by_label("排除理由").fill("经核实为旧闻翻炒，学校正常上课。")
    assert no_sideways_scroll(page), "the dismiss dialog scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "dismiss-375.png"), animations="disabled")
    page.get_by_role("dialog").get_by_role("button", name="确认排除").click()
    expect(page.get_by_text("已排除（伪舆情）").first).to_be_visible(timeout=20_000)
    office.close()
    with system.client() as api:
        assert api.get(f"/archive/v1/incidents/{other}").json()["status"] == "dismissed"


# --- the walk: one level-1 incident from filing to review, in the console only ---------


def test_a_level_1_incident_is_walked_from_filing_to_review_in_the_console_by_its_people(
    paging: tuple[RunningSystem, HttpReceiver], browser: sync_api.Browser
) -> None:
    """Each person in a browser of their own: the monitor files, the leader acknowledges the
    page from its link, the office watches the countdown and fulfils the phone report, the
    spokesperson drafts, the office and the propaganda department clear it (the level-1
    chain), the spokesperson publishes, the office resolves and writes the review."""
    expect = sync_api.expect
    system, receiver = paging
    run = uuid.uuid4().hex[:8]
    title = f"实验小学学生午休时间被压缩引发家长热议（全程{run}）"
    phone = {"viewport": {"width": 375, "height": 812}, "is_mobile": True, "has_touch": True}
    desktop = {"viewport": {"width": 1440, "height": 900}}

    def person(who: str, size: dict[str, Any], start: str = "/") -> sync_api.Page:
        page = browser.new_context(**size, locale="zh-CN", timezone_id="Asia/Shanghai").new_page()
        page.goto(system.base_url + start)
        sign_in_here(page, system, who)
        return page

    # The monitor files it from a phone.
    monitor = person("monitor-chen", phone, "/file")
    expect(monitor.get_by_role("heading", name="报送舆情")).to_be_visible()
    choose(monitor, "来源类型", "新闻网站")
    monitor.get_by_label("来源名称").fill("人民网")
    choose(monitor, "媒体层级", "中央媒体")
    monitor.get_by_label("网址").fill(f"https://people.example.cn/n1/{run}.html")
    monitor.get_by_label("标题").fill(title)
    monitor.get_by_label("摘要").fill("多名家长反映学校压缩学生午休时间。")
    monitor.get_by_label("浏览量").fill("150000")
    assert no_sideways_scroll(monitor), "the report form scrolls sideways at 375 px"
    monitor.screenshot(path=str(SHOTS / "walk-1-file-375.png"), full_page=True)
    monitor.get_by_role("button", name="报送").click()
    expect(monitor).to_have_url(re.compile(r"/incidents/inc-"))
    incident_id = monitor.url.rsplit("/", 1)[1]
    expect(monitor.get_by_role("heading", name=title)).to_be_visible(timeout=20_000)
    monitor.context.close()

    # The leader is paged and acknowledges from the link, on a phone.
    sent = wait_for(
        lambda: pages_about(receiver, incident_id),
        lambda got: any(p["subject"].startswith("【一级舆情】") for p in got),
        timeout=30,
        what="the leader paged about the level-1 duties",
    )
    message = next(p for p in sent if p["subject"].startswith("【一级舆情】"))
    leader = browser.new_context(**phone, locale="zh-CN").new_page()
    leader.goto(link(message["text"], "确认收到"))
    sign_in_here(leader, system, "leader-zhang")
    card = leader.locator(f"[data-notification='{message['notification_id']}']")
    card.get_by_role("button", name="确认收到").click()
    expect(card.get_by_text("本通知已于")).to_be_visible()
    leader.screenshot(path=str(SHOTS / "walk-2-ack-375.png"), full_page=True)
    leader.context.close()

    # The office sees the countdown the API states and fulfils the phone report.
    with system.client() as api:
        owed = api.get("/notifications/v1/obligations", params={"incident_id": incident_id})
        duty = next(o for o in owed.json()["obligations"] if o["kind"] == "phone_quick_report")
    office = person("office-li", desktop)
    timer = office.locator(f"li.obligation[data-obligation='{duty['obligation_id']}'] [role=timer]")
    expect(timer).to_contain_text("剩余")
    shown = int(timer.get_attribute("data-seconds-left") or "0")
    deadline = datetime.fromisoformat(duty["deadline"].replace("Z", "+00:00")).timestamp()
    assert abs((deadline - time.time()) - shown) <= 2, (shown, duty["deadline"])
    office.screenshot(path=str(SHOTS / "walk-3-dashboard-1440.png"), full_page=True)
    office.locator(f"li.incident[data-incident='{incident_id}']").get_by_role("link").click()
    row = office.locator(f"li.obligation[data-obligation='{duty['obligation_id']}']")
    row.get_by_role("button", name="登记报送").click()
    office.get_by_label("文号或备注（选填）").fill("已电话报县委值班室")
    office.get_by_role("button", name="确认已报送").click()
    expect(row.get_by_text("已报送").first).to_be_visible()

    # The spokesperson drafts the reply and submits it.
    writer = person("spokesperson-sun", desktop, f"/incidents/{incident_id}")
    writer.get_by_role("button", name="起草口径").click()
    dialog = writer.get_by_role("dialog")
    dialog.get_by_label("标题").fill("关于学生午休时间安排的说明")
    dialog.get_by_label("正文").fill("学校已恢复原午休时间安排，并向家长说明情况。")
    dialog.get_by_label("拟发布渠道").fill("学校官网")
    dialog.get_by_role("button", name="保存并提交审批").click()
    expect(dialog).to_have_count(0)

    # The level-1 chain: the office, then the propaganda department, from their inboxes.
    def clear(page: sync_api.Page) -> None:
        page.goto(f"{system.base_url}/inbox")
        card = page.locator(".statement").filter(has_text="关于学生午休时间安排的说明")
        card.get_by_role("button", name="同意").click()
        page.get_by_role("dialog").get_by_role("button", name="确认同意").click()
        expect(card).to_have_count(0)

    clear(office)
    propaganda = person("propaganda-wang", desktop, "/inbox")
    expect(propaganda.get_by_role("heading", name="关于学生午休时间安排的说明")).to_be_visible()
    propaganda.screenshot(path=str(SHOTS / "walk-4-inbox-1440.png"), full_page=True)
    clear(propaganda)
    propaganda.context.close()

    # The spokesperson publishes it: it is the incident's official line.
    with system.client() as api:
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json()["statements"],
            lambda found: [s["state"] for s in found] == ["approved"],
            timeout=20,
            what="the approved statement in the archive",
        )
    writer.reload()
    writer.get_by_role("button", name="登记发布").click()
    writer.get_by_role("dialog").get_by_label("发布网址或文号").fill(
        f"https://school.example/{run}"
    )
    writer.get_by_role("dialog").get_by_role("button", name="确认已发布").click()
    expect(writer.locator("li.statement").get_by_text("已发布").first).to_be_visible(timeout=20_000)
    writer.screenshot(path=str(SHOTS / "walk-5-published-1440.png"), full_page=True)
    writer.context.close()

    # The office resolves it and writes the review.
    office.goto(f"{system.base_url}/incidents/{incident_id}")
    office.get_by_role("button", name="办结").click()
    office.get_by_role("dialog").get_by_label("办结说明（舆情平息的情况）").fill(
        "说明发布后家长认可。"
    )
    office.get_by_role("dialog").get_by_role("button", name="确认办结").click()
    office.get_by_role("button", name="撰写总结评估").click(timeout=20_000)
    dialog = office.get_by_role("dialog")
    dialog.get_by_label("事件起因").fill("学校调整作息未提前告知家长。")
    dialog.get_by_label("处置经过").fill("半小时内电话报告，当日发布说明。")
    dialog.get_by_label("经验教训").fill("作息调整应提前公示并听取家长意见。")
    dialog.get_by_role("button", name="提交总结评估").click()
    expect(office.locator(".review").get_by_text("作息调整应提前公示")).to_be_visible(
        timeout=20_000
    )
    office.screenshot(path=str(SHOTS / "walk-6-reviewed-1440.png"), full_page=True)
    office.context.close()

    with system.client() as api:
        view = api.get(f"/archive/v1/incidents/{incident_id}").json()
        line = api.get(f"/statements/v1/incidents/{incident_id}/official-line").json()
        note = api.get(f"/notifications/v1/notifications/{message['notification_id']}").json()
    assert view["status"] in ("resolved", "archived")
    assert view["case_id"]
    assert view["review"]["lessons"] == "作息调整应提前公示并听取家长意见。"
    met = next(o for o in view["obligations"] if o["obligation_id"] == duty["obligation_id"])
    assert (met["state"], met["fulfilled_by"]) == ("fulfilled", "office-li")
    assert line["url"] == f"https://school.example/{run}"
    assert [s["approved_by"] for s in line["cleared_by"]] == ["office-li", "propaganda-wang"]
    assert note["state"] == "acknowledged"


# --- the dashboard's escalations and misses, the case library, reports by page ---------


def matter_report(title: str, site: str, **overrides: Any) -> dict[str, Any]:
    """A report of the matter `title` as seen on `site` (its own URL), with a small reach:
    its media tier decides its level."""
    return report(
        title=title,
        url=f"https://{site}.example.cn/t/{time.time_ns()}",
        excerpt=f"{title}：有网友发帖反映，相关部门尚未回应。",
        reach={"views": 800, "reposts": 12, "comments": 30, "likes": 40},
        **overrides,
    )


def test_the_dashboard_lists_an_escalation_and_a_missed_deadline_as_they_happen(
    short_deadlines: RunningSystem, browser: sync_api.Browser
) -> None:
    """A provincial report (level 2, no duties in this policy), then a central one of the
    same matter: grading escalates it to level 1, whose phone report is due in 40 seconds
    and is missed. The open dashboard lists both, newest first, without a reload."""
    expect = sync_api.expect
    system = short_deadlines
    run = uuid.uuid4().hex[:6]
    title = f"县城主干道井盖缺失致电动车摔倒（升级{run}）"
    context = browser.new_context(
        viewport={"width": 1440, "height": 900}, locale="zh-CN", timezone_id="Asia/Shanghai"
    )
    page = context.new_page()
    sign_in(page, system, "office-li", passwords(system)["office-li"])
    expect(page).to_have_url(f"{system.base_url}/dashboard")
    page.evaluate("window.notReloaded = true")

    with system.client() as api:
        first = matter_report(title, "provincial", media_tier="provincial", source_name="省报")
        incident_id = api.post("/intake/v1/reports", json=first).json()["incident_id"]
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
            lambda v: v.get("level") == 2,
            timeout=20,
            what="the provincial report graded level 2",
        )
        central = matter_report(title, "people", media_tier="central", source_name="人民网")
        assert api.post("/intake/v1/reports", json=central).json()["incident_id"] == incident_id
        grade = wait_for(
            lambda: api.get(f"/grading/v1/incidents/{incident_id}/grade").json(),
            lambda g: g.get("level") == 1,
            timeout=20,
            what="the incident escalated to level 1",
        )
    reason = grade["history"][-1]["reason"]

    escalated = page.locator(f"li.alert-row[data-kind='escalated'][data-incident='{incident_id}']")
    expect(escalated).to_be_visible(timeout=20_000)
    expect(escalated.get_by_text("升级", exact=True)).to_be_visible()
    expect(escalated.get_by_role("link", name=title)).to_be_visible()
    expect(escalated).to_contain_text("二级 → 一级")
    expect(escalated).to_contain_text(f"原因：{reason}")

    # Nobody files the phone report: 40 seconds on, the miss comes onto the same page.
    missed = page.locator(f"li.alert-row[data-kind='missed'][data-incident='{incident_id}']")
    expect(missed).to_be_visible(timeout=90_000)
    expect(missed.get_by_text("超时未报", exact=True)).to_be_visible()
    expect(missed).to_contain_text("一级舆情手机快报")
    expect(missed).to_contain_text("责任：领导小组办公室")
    rows = page.locator(f"li.alert-row[data-incident='{incident_id}']")
    assert rows.first.get_attribute("data-kind") == "missed"  # the newest first
    assert page.evaluate("window.notReloaded === true")
    with system.client() as api:
        shown = api.get("/archive/v1/alerts").json()["items"]
    mine = [
        (a["kind"], a["from_level"], a["to_level"])
        for a in shown
        if a["incident_id"] == incident_id
    ]
    assert mine == [("missed", None, 1), ("escalated", 2, 1)]
    page.locator(".alerts").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "dashboard-alerts-1440.png"), full_page=True)
    context.close()

    # A statement submitted on it waits for the office: the office's dashboard lists it.
    writer = token_for(system, "spokesperson-sun", "school-a", Role.SPOKESPERSON)
    with system.client(writer) as api:
        draft = {
            "kind": "online_reply",
            "title": f"关于井盖缺失的情况说明（{run}）",
            "body": "已补装。",
        }
        made = api.post(f"/statements/v1/incidents/{incident_id}/statements", json=draft)
        assert made.status_code == 201, made.text
        statement_id = made.json()["statement_id"]
        submitted = api.post(f"/statements/v1/statements/{statement_id}/submit")
        assert submitted.status_code == 200, submitted.text

    phone = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    page = phone.new_page()
    sign_in(page, system, "office-li", passwords(system)["office-li"])
    expect(page.locator(f"li.alert-row[data-incident='{incident_id}']")).to_have_count(2)
    waiting = page.locator(f"li.waiting-row[data-statement='{statement_id}']")
    expect(waiting.get_by_role("link", name=draft["title"])).to_be_visible()
    expect(waiting.get_by_role("link", name=title)).to_be_visible()
    expect(waiting).to_contain_text("待审批：领导小组办公室")
    assert no_sideways_scroll(page), "the dashboard scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "dashboard-alerts-375.png"), full_page=True)
    phone.close()


def test_the_incident_page_reads_more_reports_by_page(
    short_deadlines: RunningSystem, browser: sync_api.Browser
) -> None:
    expect = sync_api.expect
    system = short_deadlines
    run = uuid.uuid4().hex[:6]
    title = f"城区老旧小区停水三日无人回应（分页{run}）"
    sites = ["tieba", "weibo", "douyin", "toutiao", "kuaishou"]
    with system.client() as api:
        incident_id = api.post("/intake/v1/reports", json=matter_report(title, sites[0])).json()[
            "incident_id"
        ]
        for site in sites[1:]:
            attached = api.post("/intake/v1/reports", json=matter_report(title, site)).json()
            assert attached["incident_id"] == incident_id
        view = wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
            lambda v: v.get("report_count") == len(sites),
            timeout=20,
            what="every report in the archive",
        )
        assert len(view["reports"]) == 2  # what the view embeds here
        every = api.get(f"/archive/v1/incidents/{incident_id}/reports").json()["items"]

    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = context.new_page()
    page.goto(f"{system.base_url}/incidents/{incident_id}")
    sign_in_here(page, system, "office-li")
    listed = page.get_by_role("list", name="舆情信息").locator("li.report")
    expect(listed).to_have_count(2)
    expect(page.get_by_text("已显示 2 条，共 5 条")).to_be_visible()
    page.screenshot(path=str(SHOTS / "incident-reports-first-page-1440.png"), full_page=True)
    page.get_by_role("button", name="更多报告").click()
    expect(listed).to_have_count(len(sites))
    expect(page.get_by_role("button", name="更多报告")).to_have_count(0)
    shown = [listed.nth(i).get_attribute("data-report") for i in range(len(sites))]
    assert shown == [r["report_id"] for r in every]  # oldest first, each once
    page.screenshot(path=str(SHOTS / "incident-reports-paged-1440.png"), full_page=True)
    context.close()


def archived_case(
    system: RunningSystem, title: str, lessons: str, *, fulfil: bool = False, **grade: Any
) -> str:
    """An incident filed, (re)graded, resolved and reviewed through the API: a case (its
    first duty met on time first when `fulfil`)."""
    with system.client() as api:
        incident_id = api.post(
            "/intake/v1/reports", json=matter_report(title, "people", media_tier="central")
        ).json()["incident_id"]
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
            lambda v: v.get("level") == 1 and len(v.get("obligations", [])) >= 2,
            timeout=20,
            what="the report graded, with its duties",
        )
        if fulfil:
            duties = api.get(f"/archive/v1/incidents/{incident_id}").json()["obligations"]
            first = min(duties, key=lambda o: o["deadline"])
            met = api.post(
                f"/notifications/v1/obligations/{first['obligation_id']}/fulfil", json={}
            )
            assert met.status_code == 200, met.text
            wait_for(
                lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
                lambda v: any(o.get("fulfilled_at") for o in v["obligations"]),
                timeout=20,
                what="the duty met in the archive",
            )
        if grade:
            lowered = api.post(
                f"/grading/v1/incidents/{incident_id}/override",
                json={**grade, "reason": "经核实影响有限"},
            )
            assert lowered.status_code == 200, lowered.text
            wait_for(
                lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
                lambda v: v.get("level") == grade["level"],
                timeout=20,
                what="the grade overridden in the archive",
            )
        resolved = api.post(
            f"/intake/v1/incidents/{incident_id}/resolve", json={"reason": "已平息"}
        )
        assert resolved.status_code == 200, resolved.text
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
            lambda v: v.get("status") == "resolved",
            timeout=20,
            what="the incident resolved in the archive",
        )
        review = {"cause": "信息发布不及时。", "handling": "当日核实并回应。", "lessons": lessons}
        accepted = api.post(f"/archive/v1/incidents/{incident_id}/review", json=review)
        assert accepted.status_code == 202, accepted.text
        case_id = str(accepted.json()["case_id"])
        wait_for(
            lambda: api.get(f"/archive/v1/cases/{case_id}").status_code,
            lambda code: code == 200,
            timeout=20,
            what="the case in the library",
        )
    return case_id


def test_the_case_library_filters_charts_and_exports_what_it_shows(
    system: RunningSystem, browser: sync_api.Browser, tmp_path: Path
) -> None:
    expect = sync_api.expect
    run = uuid.uuid4().hex[:6]
    marker = f"案例库{run}"
    first = archived_case(
        system,
        f"实验小学周边商贩占道经营引发投诉（{marker}）",
        f"加强巡查。{marker}",
        fulfil=True,
    )
    second = archived_case(
        system,
        f"网传县城中学提前放寒假（{marker}）",
        f"及时辟谣。{marker}",
        level=2,
        category="rumor",
    )

    context = browser.new_context(
        viewport={"width": 1440, "height": 900},
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
        accept_downloads=True,
    )
    page = context.new_page()
    sign_in(page, system, "office-li", passwords(system)["office-li"])
    page.get_by_role("navigation", name="主导航").get_by_role("link", name="案例库").click()
    expect(page.get_by_role("heading", name="案例库")).to_be_visible()
    page.get_by_label("关键词").fill(marker)
    page.get_by_label("关键词").press("Enter")
    cases = page.locator("li.case")
    expect(cases).to_have_count(2)
    expect(page.get_by_role("heading", name="案例（共 2 件）")).to_be_visible()
    assert cases.first.get_attribute("data-case") == second  # the newest archived first

    # The charts (ECharts, drawn as SVG) count what the filters find; each has its summary
    # in words as its label and a data table with every figure.
    charts = page.get_by_role("region", name="案例统计")
    per_day = charts.get_by_role("figure", name=re.compile("^每日立案"))
    expect(per_day).to_have_attribute("aria-label", "每日立案（按级别）：一级 1 件，二级 1 件")
    expect(per_day.locator(".canvas svg")).to_have_count(1)
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    expect(per_day.locator("tbody tr")).to_have_count(1)  # both opened today
    expect(per_day.locator("tbody tr").first.locator("th, td")).to_have_text([today, "1", "1", "2"])
    by_category = charts.get_by_role("figure", name=re.compile("^按类别"))
    expect(by_category).to_have_attribute("aria-label", re.compile("谣言 1 件"))
    expect(by_category.locator(".canvas svg")).to_have_count(1)
    on_time = charts.get_by_role("figure", name=re.compile("^按单位按时率"))
    expect(on_time.locator("thead th")).to_have_text(
        ["单位", "案例", "按时", "迟报", "超时未报", "按时率", "首报用时中位数"]
    )
    # The first case's phone report met on time; none of the rest met yet (no miss either).
    expect(on_time).to_have_attribute("aria-label", re.compile("实验小学 100%"))
    expect(on_time.locator(".canvas svg")).to_have_count(1)
    first_report = charts.get_by_role("figure", name=re.compile("^首报用时"))
    expect(first_report.locator("tbody tr")).to_have_count(6)
    expect(first_report.locator("tbody tr").first).to_have_text(re.compile("15 分钟内\\s*1"))
    expect(first_report.locator("tbody tr").last).to_have_text(re.compile("未报送\\s*1"))
    by_level = per_day
    page.screenshot(path=str(SHOTS / "cases-1440.png"), full_page=True)

    # Narrowed to level 1: the list, the charts and the export follow.
    choose(page, "级别", "一级")
    expect(cases).to_have_count(1)
    assert cases.first.get_attribute("data-case") == first
    expect(by_level).to_have_attribute("aria-label", "每日立案（按级别）：一级 1 件")
    with page.expect_download() as got:
        page.get_by_role("button", name="导出 CSV").click()
    download = got.value
    assert download.suggested_filename.startswith("案例库-")
    assert download.suggested_filename.endswith(".csv")
    saved = tmp_path / "cases.csv"
    download.save_as(saved)
    raw = saved.read_bytes()
    assert raw.startswith("\ufeff".encode())
    table = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [(r["案例编号"], r["级别"], r["类别"]) for r in table] == [(first, "一级", "询问")]
    assert table[0]["涉及单位"] == "实验小学"
    assert marker in table[0]["经验教训"]

    with page.expect_download() as got:
        page.get_by_role("button", name="导出 Excel").click()
    workbook = tmp_path / "cases.xlsx"
    got.value.save_as(workbook)
    sheet = openpyxl.load_workbook(workbook).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("案例编号", "事件编号", "标题")
    assert [r[0] for r in rows[1:]] == [first]

    # Another unit, or a period before these cases: nothing found, and the charts say so.
    choose(page, "单位", "第二中学")
    expect(page.get_by_text("没有符合条件的案例。")).to_be_visible()
    expect(by_level).to_have_attribute("aria-label", "每日立案（按级别）：无")
    expect(by_level.get_by_text("无数据")).to_be_visible()
    page.get_by_role("button", name="清除筛选").click()
    page.get_by_label("关键词").fill(marker)
    page.get_by_label("关键词").press("Enter")
    expect(cases).to_have_count(2)
    page.get_by_label("立案日期至").fill("2020-01-01")
    page.get_by_label("立案日期至").press("Enter")
    expect(page.get_by_text("没有符合条件的案例。")).to_be_visible()
    page.screenshot(path=str(SHOTS / "cases-none-1440.png"), full_page=True)
    context.close()

    # Another unit's staff do not see these cases, in the list or in an export.
    school_b = token_for(system, "head-zhou", "school-b", Role.DEPT_HEAD)
    with system.client(school_b) as api:
        listed = api.get("/archive/v1/cases", params={"q": marker}).json()["items"]
        exported = api.get("/archive/v1/cases/export", params={"q": marker}).content
    assert listed == []
    assert marker not in exported.decode("utf-8-sig")

    phone = browser.new_context(
        viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True, has_touch=True
    )
    page = phone.new_page()
    page.goto(f"{system.base_url}/cases")
    sign_in_here(page, system, "office-li")
    page.get_by_label("关键词").fill(marker)
    page.get_by_label("关键词").press("Enter")
    expect(page.locator("li.case")).to_have_count(2)
    expect(page.locator("[data-chart='per-day'] .canvas svg")).to_have_count(1)
    assert no_sideways_scroll(page), "the case library scrolls sideways at 375 px"
    page.screenshot(path=str(SHOTS / "cases-375.png"), full_page=True)
    phone.close()
