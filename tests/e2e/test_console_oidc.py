"""Sign-in through the bureau's identity provider, in Debian's headless Chromium: the
sign-in page offers it, the browser goes to the provider (a fake one, served over HTTP on
this machine, that signs the person in at once) and comes back signed in on the page it
asked for, with the person's name and roles from the directory.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import uvicorn

from shared.embedded import free_port
from tests.conftest import Infra
from tests.e2e.conftest import RunningSystem, system_env
from tests.e2e.test_console import ARGS, BUILT, CHROMIUM, SHOTS, sync_api
from tests.unit.test_oidc import CLIENT, SECRET, Provider

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    port = free_port()
    found = Provider(issuer=f"http://127.0.0.1:{port}/realms/county")
    server = uvicorn.Server(
        uvicorn.Config(found.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the fake identity provider did not start"
        time.sleep(0.05)
    yield found
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def system(
    infra: Infra, provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    run = uuid.uuid4().hex[:8]
    running = RunningSystem(
        system_env(
            tmp_path_factory.mktemp("oidc") / "data",
            KAFKA_BOOTSTRAP_SERVERS=infra.kafka,
            MONGODB_URL=infra.mongo,
            YUQING_DB_PREFIX=f"oidc{run}",
            YUQING_TOPIC_PREFIX=f"oidc{run}.",
            YUQING_OIDC_ISSUER=provider.issuer,
            YUQING_OIDC_CLIENT_ID=CLIENT,
            YUQING_OIDC_CLIENT_SECRET=SECRET,
            YUQING_OIDC_DISPLAY_NAME="县局统一身份认证",
        )
    )
    yield running
    running.stop()


def test_the_office_signs_in_through_the_identity_provider_and_lands_where_it_asked(
    system: RunningSystem, provider: Provider
) -> None:
    assert BUILT.exists(), "the console is not built: run `make console` (npm ci, npm run build)"
    SHOTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1440, "height": 900}, locale="zh-CN")
            page.goto(system.base_url + "/inbox")  # signed out: sent to sign-in, and back
            button = page.get_by_role("link", name="使用县局统一身份认证登录")
            button.wait_for(timeout=30_000)
            page.screenshot(path=str(SHOTS / "oidc-sign-in.png"), full_page=True)
            button.click()
            page.wait_for_url("**/inbox", timeout=30_000)
            page.get_by_text("李主任").first.wait_for(timeout=30_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(SHOTS / "oidc-signed-in.png"), full_page=True)
            cookies = {c["name"]: c for c in page.context.cookies()}
            session = cookies["yuqing_session"]
            assert session["httpOnly"] is True
            assert session["sameSite"] == "Strict"
            assert "yuqing_oidc" not in cookies  # the flow's state is gone with the flow
            me = page.evaluate("fetch('/auth/v1/me').then(r => r.json())")
            assert me["id"] == "office-li"
            assert "office" in me["roles"]
            assert provider.grants == {}  # the code was exchanged, once
        finally:
            chromium.close()
