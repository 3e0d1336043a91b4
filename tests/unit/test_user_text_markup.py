"""User text in the documents and messages the system makes: the case report loads nothing
from elsewhere, and the group robots never read a title as a mention or a tag."""

from __future__ import annotations

import re

import pytest

from services.archive.domain.cases import case_record
from services.notification.channels import Outgoing, robot_body
from services.notification.delivery import ChannelType, Message
from tests.unit.test_archive_review import archived_view, report_renderer

REMOTE = (
    "![现场照片](https://evil.example/p.png) "
    '<img src="https://evil.example/a.png"> '
    "[通报](https://news.example/1)"
)


def test_the_case_report_loads_no_remote_content() -> None:
    case = case_record(archived_view(lessons=f"见 {REMOTE}"))
    assert case is not None

    html = report_renderer().html(case)
    markdown = report_renderer().markdown(case)

    assert "<img" not in html  # neither the Markdown image nor the raw tag
    assert re.search(r"<[^>]*\ssrc=", html) is None  # no tag loads anything
    assert "evil.example" not in "".join(re.findall(r"<a [^>]*>", html))  # nor links there
    # What was written is shown as written, its addresses there to read.
    assert "![现场照片](https://evil.example/p.png)" in html
    assert "&lt;img src=&quot;https://evil.example/a.png&quot;&gt;" in html
    assert "[通报](https://news.example/1)" in html
    # The Markdown document as well: no viewer of it loads or links what people wrote.
    assert "<img" not in markdown
    assert "\\!\\[现场照片\\](https://evil.example/p.png)" in markdown
    assert '&lt;img src="https://evil.example/a.png"&gt;' in markdown
    # And the document itself forbids every load, served or saved.
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp is not None
    assert csp.group(1).startswith("default-src 'none'")
    assert "http" not in csp.group(1)


def outgoing(title: str, address: str = "13800000001") -> Outgoing:
    return Outgoing(
        notification_id="n1",
        incident_id="inc-1",
        obligation_id="ob-1",
        recipient="office-li",
        address=address,
        message=Message(
            subject=f"【一级舆情】{title}", body=f"事件：{title}\n请于30分钟内电话快报。"
        ),
        incident_url="http://yuqing.example/i/inc-1",
        ack_url="http://yuqing.example/ack/n1",
    )


HOSTILE = '网传<at user_id="all"></at>食堂问题<@all><font color="red">紧急</font>'


@pytest.mark.parametrize("kind", [ChannelType.WECOM, ChannelType.DINGTALK, ChannelType.FEISHU])
def test_a_robot_message_shows_a_title_as_text_never_as_its_markup(kind: ChannelType) -> None:
    body = robot_body(
        kind, outgoing(HOSTILE, address="ou_zhang" if kind is ChannelType.FEISHU else "138")
    )

    text = body["content"]["text"] if kind is ChannelType.FEISHU else body["text"]["content"]
    shown = text.removeprefix('<at user_id="ou_zhang"></at> ')
    assert "<" not in shown
    assert ">" not in shown
    assert (
        '网传＜at user_id="all"＞＜/at＞食堂问题＜@all＞＜font color="red"＞紧急＜/font＞' in shown
    )
    assert "请于30分钟内电话快报。" in shown


def test_each_robot_mentions_only_the_recipient_by_its_own_field() -> None:
    wecom = robot_body(ChannelType.WECOM, outgoing(HOSTILE, "13800000001"))
    dingtalk = robot_body(ChannelType.DINGTALK, outgoing(HOSTILE, "13800000001"))
    feishu = robot_body(ChannelType.FEISHU, outgoing(HOSTILE, 'ou_zhang"></at><at user_id="all'))

    assert wecom["text"]["mentioned_mobile_list"] == ["13800000001"]
    assert dingtalk["at"] == {"atMobiles": ["13800000001"], "isAtAll": False}
    assert feishu["content"]["text"].count("<at ") == 1
    assert feishu["content"]["text"].startswith(
        '<at user_id="ou_zhang＞＜/at＞＜at user_id=all"></at> '
    )
