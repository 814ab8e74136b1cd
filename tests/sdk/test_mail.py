"""Invitation mails (`SMTP_*`) delivered to a real SMTP server (aiosmtpd) the test runs on loopback."""

from __future__ import annotations

import email
import socket
import time
from email.message import Message

import pytest
from aiosmtpd.controller import Controller

from accounts import Caller, new_user
from conftest import run_server
from support import unique


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []
        self.stopped = False  # a stopped aiosmtpd controller cannot start again

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def wait_for(self, recipient: str, timeout: float = 30) -> tuple[str, Message]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mail_from, rcpt_tos, message in self.messages:
                if recipient in rcpt_tos:
                    return mail_from, message
            time.sleep(0.1)
        raise AssertionError(f"no mail to {recipient} within {timeout} s; got {[m[1] for m in self.messages]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller
    finally:
        if not inbox.stopped:
            controller.stop()


@pytest.fixture(scope="module")
def mail_server(request, smtp):
    _, controller = smtp
    failed = lambda: bool(request.session.testsfailed)  # noqa: E731
    env = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(controller.port),
        "SMTP_SECURE": "false",
        "SMTP_EMAIL_FROM": "Daytona Tests <invites@daytona.test>",
        "DASHBOARD_URL": "https://daytona.test/dashboard",
    }
    with run_server(failed, env) as srv:
        yield srv


def test_invitation_is_mailed_to_the_invitee(mail_server, smtp):
    inbox, _ = smtp
    admin = Caller(mail_server.api_url, mail_server.api_key)
    owner = new_user(admin, "owner")
    org_name = unique("mailed-org")
    org = owner.api.ok("POST", "/organizations", {"name": org_name, "defaultRegionId": "us"}, status=201)
    invitee = f"{unique('invitee')}@example.com"
    invitation = owner.api.ok(
        "POST", f"/organizations/{org['id']}/invitations", {"email": invitee, "role": "member"}, status=201
    )

    mail_from, message = inbox.wait_for(invitee)
    assert mail_from == "invites@daytona.test"
    assert message["To"] == invitee and "invites@daytona.test" in message["From"]
    assert org_name in message["Subject"]
    body = message.get_payload(decode=True).decode()
    assert invitation["id"] in body and org_name in body and owner.email in body
    assert "https://daytona.test/dashboard" in body and "as member" in body


def test_an_unreachable_mail_server_does_not_fail_the_invitation(mail_server, smtp):
    inbox, controller = smtp
    admin = Caller(mail_server.api_url, mail_server.api_key)
    owner = new_user(admin, "owner")
    org = owner.api.ok("POST", "/organizations", {"name": unique("org"), "defaultRegionId": "us"}, status=201)
    # Last in the module: the mail server goes away for good.
    controller.stop()
    inbox.stopped = True
    invitee = f"{unique('unmailed')}@example.com"
    owner.api.ok("POST", f"/organizations/{org['id']}/invitations", {"email": invitee}, status=201)
    # The invitee still finds it through the API.
    listed = owner.api.ok("GET", f"/organizations/{org['id']}/invitations")
    assert invitee in [i["email"] for i in listed]
    deadline = time.monotonic() + 30
    while "invitation mail not sent" not in mail_server.log_path.read_text():
        assert time.monotonic() < deadline, "the failed delivery was not logged"
        time.sleep(0.2)
