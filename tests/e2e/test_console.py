"""The web console in Debian's headless Chromium, driven by Playwright (never a downloaded
browser): the office signs in, sees a level-1 incident and its countdowns, opens it and
fulfils a duty; at 1440 px and at 375 px, with a screenshot of each page.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env, wait_for
from tests.e2e.test_walking_skeleton import report

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
    """The system with a level-1 phone report due in 40 seconds."""
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
