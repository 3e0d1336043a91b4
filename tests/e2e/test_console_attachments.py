"""Attachments in the console, in Debian's headless Chromium (Playwright, never a
downloaded browser): a monitor attaches a screenshot to a report from the incident page,
sees it listed with its name, type, size and SHA-256, downloads it through the session
cookie and gets the very bytes whose hash the archive logged; a file of a type the API
does not take is refused next to the chooser in Chinese. At 1440 px and at 375 px, with
a screenshot of each."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import RunningSystem, wait_for
from tests.e2e.test_console import (
    ARGS,
    BUILT,
    CHROMIUM,
    SHOTS,
    no_sideways_scroll,
    passwords,
    sign_in,
)
from tests.e2e.test_walking_skeleton import report
from tests.unit.test_intake_attachments import png

pytestmark = pytest.mark.e2e

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def filed_incident(system: RunningSystem, title: str) -> tuple[str, str]:
    body = report(
        title=title,
        url=f"https://bbs.example.cn/thread/{time.time_ns()}",
        media_tier="county",
        reach={"views": 300},
    )
    with system.client() as api:
        answer = api.post("/intake/v1/reports", json=body).json()
        wait_for(
            lambda: api.get(f"/archive/v1/incidents/{answer['incident_id']}").status_code,
            lambda status: status == 200,
            what="the incident in the archive",
        )
    return answer["incident_id"], answer["report_id"]


def test_a_monitor_attaches_a_screenshot_and_downloads_what_the_log_vouches_for(
    system: RunningSystem, tmp_path: Path
) -> None:
    assert BUILT.exists(), "the console is not built: run `make console`"
    SHOTS.mkdir(exist_ok=True)
    expect = sync_api.expect
    expect.set_options(timeout=15_000)
    incident_id, report_id = filed_incident(system, "网传实验小学东门积水严重（附件）")
    image = png(16, 16)
    screenshot = tmp_path / "现场截图.png"
    screenshot.write_bytes(image)
    text = tmp_path / "说明.png"  # named like a picture; its bytes say otherwise
    text.write_text("这不是图片", encoding="utf-8")

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(
            viewport={"width": 1440, "height": 900}, locale="zh-CN", accept_downloads=True
        )
        page = context.new_page()
        sign_in(page, system, "monitor-chen", passwords(system)["monitor-chen"])
        expect(page).to_have_url(f"{system.base_url}/dashboard")
        page.goto(f"{system.base_url}/incidents/{incident_id}")
        row = page.locator(f"[data-report='{report_id}']")
        expect(row.get_by_text("添加附件")).to_be_visible()

        row.locator("input[type=file]").set_input_files(str(text))
        expect(row.get_by_role("alert")).to_contain_text("文件类型不支持")

        row.locator("input[type=file]").set_input_files(str(screenshot))
        listed = row.locator(".file")
        expect(listed).to_have_count(1)
        expect(listed).to_contain_text("现场截图.png")
        expect(listed).to_contain_text("PNG 图片")
        expect(row.get_by_role("alert")).to_have_count(0)

        # The archive's log lists it with the sha256 of the bytes sent.
        with system.client() as api:
            view = wait_for(
                lambda: api.get(f"/archive/v1/incidents/{incident_id}").json(),
                lambda v: len(v.get("attachments", [])) == 1,
                what="the attachment in the archive's view",
            )
            assert api.get(f"/archive/v1/incidents/{incident_id}/verify").json()["ok"] is True
        [logged] = view["attachments"]
        assert logged["sha256"] == hashlib.sha256(image).hexdigest()
        expect(listed).to_contain_text(f"SHA-256 {logged['sha256'][:12]}")

        with page.expect_download() as download:
            listed.get_by_role("link", name="现场截图.png").click()
        got = Path(download.value.path()).read_bytes()
        assert hashlib.sha256(got).hexdigest() == logged["sha256"]
        assert download.value.suggested_filename == "现场截图.png"
        page.screenshot(path=str(SHOTS / "incident-attachments-1440.png"), full_page=True)

        phone = browser.new_context(
            viewport={"width": 375, "height": 812}, locale="zh-CN", is_mobile=True
        )
        small = phone.new_page()
        sign_in(small, system, "monitor-chen", passwords(system)["monitor-chen"])
        expect(small).to_have_url(f"{system.base_url}/dashboard")
        small.goto(f"{system.base_url}/incidents/{incident_id}")
        expect(small.locator(f"[data-report='{report_id}'] .file")).to_contain_text("现场截图.png")
        assert no_sideways_scroll(small)
        small.screenshot(path=str(SHOTS / "incident-attachments-375.png"), full_page=True)
        browser.close()
