"""The console's sign-in, session cookie, CSRF check and page serving, on fakes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.cli import composition_root, main
from shared.console import PasswordBook
from shared.directory import Directory
from shared.gateway import Gateway
from shared.settings import CONFIG_DIR
from tests.fakes.harness import fake_service, fake_settings


def directory() -> Directory:
    return Directory.load(CONFIG_DIR / "directory.yaml")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_five_wrong_passwords_lock_the_account_for_the_configured_time(tmp_path: Path) -> None:
    clock = Clock()
    book = PasswordBook(
        tmp_path / "passwords.json", directory(), lockout=timedelta(minutes=15), clock=clock
    )
    book.set("office-li", "correct horse battery")
    assert "correct horse" not in (tmp_path / "passwords.json").read_text()
    assert book.check("office-li", "correct horse battery").person is not None

    for attempt in range(1, 6):
        result = book.check("office-li", "wrong")
        assert result.person is None
        assert (result.locked_until is not None) == (attempt == 5)
    locked = book.check("office-li", "correct horse battery")
    assert locked.person is None
    assert locked.locked_until == datetime(2026, 12, 1, 8, 15, tzinfo=UTC)

    clock.now += timedelta(minutes=15, seconds=1)
    assert book.check("office-li", "correct horse battery").person is not None
    # A success starts the count again.
    for _ in range(4):
        book.check("office-li", "wrong")
    assert book.check("office-li", "correct horse battery").person is not None
    assert book.check("nobody", "anything").person is None


def test_demo_passwords_are_fresh_at_each_start_but_keep_those_set_by_hand(
    tmp_path: Path,
) -> None:
    book = PasswordBook(tmp_path / "passwords.json", directory())
    book.set("head-liu", "set by hand, kept")
    first = dict((p.id, pw) for p, pw in book.ensure_demo_passwords())
    assert first["head-liu"] is None
    assert "partner-wxb" not in first  # a partner's client uses the API, not the console
    assert first["office-li"]
    second = dict((p.id, pw) for p, pw in book.ensure_demo_passwords())
    assert second["office-li"] != first["office-li"]
    assert book.check("office-li", second["office-li"] or "").person is not None
    assert book.check("office-li", first["office-li"] or "").person is None
    assert book.check("head-liu", "set by hand, kept").person is not None


def test_yuqing_passwd_sets_a_password_read_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("YUQING_DATA_DIR", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["passwd", "office-li"]) == 0
    book = PasswordBook(tmp_path / "passwords.json", directory())
    assert book.check("office-li", "a long enough password").person is not None

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["passwd", "office-li"]) == 1
    assert main(["passwd", "nobody"]) == 2
    assert "unknown person" in capsys.readouterr().err


async def test_the_session_cookie_signs_requests_in_and_changes_need_the_csrf_header(
    tmp_path: Path,
) -> None:
    settings = fake_settings(tmp_path, console_dir=tmp_path / "dist")
    async with fake_service(
        "notification", composition_root("notification"), settings=settings
    ) as s:
        gateway = Gateway([s.runner], settings)
        PasswordBook.from_settings(settings, s.ctx.directory).set("office-li", "the office pw")
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as web:
            assert (await web.get("/auth/v1/me")).status_code == 401
            wrong = await web.post(
                "/auth/v1/login", json={"username": "office-li", "password": "nope"}
            )
            assert wrong.status_code == 401
            assert wrong.json()["error"]["code"] == "bad_credentials"
            assert "yuqing_session" not in web.cookies

            login = await web.post(
                "/auth/v1/login", json={"username": "office-li", "password": "the office pw"}
            )
            assert login.status_code == 200, login.text
            session_cookie = next(
                c for c in login.headers.get_list("set-cookie") if c.startswith("yuqing_session=")
            )
            assert "HttpOnly" in session_cookie
            assert "SameSite=strict" in session_cookie
            me = (await web.get("/auth/v1/me")).json()
            assert (me["id"], me["unit"], me["roles"]) == ("office-li", "county", ["office"])

            # The service itself accepts the cookie; what changes something needs the header.
            assert (await web.get("/notifications/v1/obligations")).status_code == 200
            fulfil = "/notifications/v1/obligations/no-such/fulfil"
            refused = await web.post(fulfil, json={})
            assert refused.status_code == 403
            assert refused.json()["error"]["details"] == {"csrf": "missing or wrong"}
            forged = await web.post(fulfil, json={}, headers={"X-CSRF-Token": "guess"})
            assert forged.status_code == 403
            csrf = {"X-CSRF-Token": web.cookies["yuqing_csrf"]}
            assert (await web.post(fulfil, json={}, headers=csrf)).status_code == 404

            assert (await web.post("/auth/v1/logout")).status_code == 403
            assert (await web.post("/auth/v1/logout", headers=csrf)).status_code == 204
            assert (await web.get("/auth/v1/me")).status_code == 401

        # A bearer token needs no CSRF header: no browser sends it by itself.
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as partner:
            bearer = s.token("office-li", "county", "office")
            answer = await partner.post(fulfil, json={}, headers=bearer)
            assert answer.status_code == 404


async def test_the_console_is_served_at_the_root_and_the_json_index_at_api(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    settings = fake_settings(tmp_path, console_dir=dist)
    async with fake_service("archive", composition_root("archive"), settings=settings) as s:
        gateway = Gateway([s.runner], settings)
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as web:
            unbuilt = await web.get("/")
            assert unbuilt.status_code == 503
            assert "make console" in unbuilt.text

            (dist / "assets").mkdir(parents=True)
            (dist / "index.html").write_text("<!doctype html><title>舆情处置平台</title>")
            (dist / "assets" / "app.js").write_text("console.log(1)")
            for page in ("/", "/dashboard", "/incidents/inc-1"):
                answer = await web.get(page)
                assert answer.status_code == 200, page
                assert "舆情处置平台" in answer.text
                assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
            assert (await web.get("/assets/app.js")).text == "console.log(1)"
            assert (await web.get("/assets/missing.js")).status_code == 404
            (tmp_path / "outside.txt").write_text("NOT FOR THE WEB")
            for sneaky in ("/%2e%2e/outside.txt", "/assets/..%2f..%2foutside.txt"):
                assert "NOT FOR THE WEB" not in (await web.get(sneaky)).text, sneaky

            index = await web.get("/api")
            assert json.loads(index.text)["services"][0]["service"] == "archive"
            unknown = await web.get("/auth/v1/nothing-here")
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "not_found"
