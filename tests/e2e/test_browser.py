"""The chat page in a real headless Chromium, against a real chathub server process.

Debian's /usr/bin/chromium, driven by Playwright's Python package (no browser download:
`playwright install` is never needed). Skipped, with the reason, only when one of the two is
missing; .ci/run installs both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

CHROMIUM = os.environ.get("CHATHUB_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(os.environ.get("CHATHUB_TEST_SCREENSHOT", "/tmp/chathub-page.png"))
# As root, in a sandbox with no network: no sandbox, no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000
NETWORK_NOISE = re.compile(r"Failed to load resource|WebSocket connection to .* failed")

if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
expect = sync_api.expect

from tests.helpers.server import ServerProcess, start_server  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Pages:
    """New pages in separate browser contexts (separate users); fails the test on JS errors."""

    def __init__(self, browser: sync_api.Browser) -> None:
        self.browser = browser
        self.contexts: list[sync_api.BrowserContext] = []
        self.errors: list[str] = []

    def new(self) -> sync_api.Page:
        ctx = self.browser.new_context(viewport={"width": 900, "height": 640})
        ctx.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)
        return page

    def _console(self, msg: sync_api.ConsoleMessage) -> None:
        # Chromium itself logs failed requests and refused WebSockets; those are tested
        # through what the page shows. Anything else logged as an error is a bug.
        if msg.type == "error" and not NETWORK_NOISE.search(msg.text):
            self.errors.append(f"console error: {msg.text}")

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(browser: sync_api.Browser) -> Iterator[Pages]:
    expect.set_options(timeout=TIMEOUT_MS)
    p = Pages(browser)
    try:
        yield p
    finally:
        p.close()
    assert not p.errors, "the page logged errors:\n" + "\n".join(p.errors)


def _server(tmp_path_factory: pytest.TempPathFactory, *, dev: bool) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("dev-server" if dev else "server"), dev=dev)
    try:
        yield srv
    finally:
        rc = srv.stop()
    assert rc == 0, f"server exited with {rc}:\n{srv.output()}"
    assert "Traceback" not in srv.output(), srv.output()


@pytest.fixture(scope="module")
def dev_web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server in dev mode (no JWT secret: the page gets tokens from /dev/token)."""
    yield from _server(tmp_path_factory, dev=True)


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a JWT secret: tokens come from ServerProcess.token()."""
    yield from _server(tmp_path_factory, dev=False)


# ------------------------------------------------------------------------------ helpers --
def url(srv, **query) -> str:
    return f"{srv.http_url}/" + (f"?{urlencode(query)}" if query else "")


def wait_joined(page: sync_api.Page, user_id: int, room: str) -> None:
    expect(page.locator("#conn-state")).to_have_text("connected")
    expect(page.locator("#whoami")).to_contain_text(f"user {user_id}")
    expect(page.locator("#room-name")).to_have_text(f"in #{room}")
    expect(page.locator("#send")).to_be_enabled()


def join_via_ui(page: sync_api.Page, room: str) -> None:
    expect(page.locator("#join")).to_be_enabled()
    page.fill("#room", room)
    page.click("#join")


def send(page: sync_api.Page, text: str, *, enter: bool = False) -> None:
    page.fill("#text", text)
    if enter:
        page.press("#text", "Enter")
    else:
        page.click("#send")
    # Our own message is shown once the server's reply (with its seq) arrives.
    expect(page.locator("#messages .msg.mine").filter(has_text=text)).to_have_count(1)
    expect(page.locator("#text")).to_have_value("")


def message_texts(page: sync_api.Page) -> list[str]:
    return page.locator("#messages .msg .text").all_text_contents()


def assert_well_ordered(page: sync_api.Page) -> list[int]:
    seqs = [int(s) for s in page.eval_on_selector_all("#messages .msg", "ns => ns.map(n => n.dataset.seq)")]
    assert seqs == sorted(seqs), f"messages not in seq order: {seqs}"
    assert len(seqs) == len(set(seqs)), f"duplicate seqs: {seqs}"
    return seqs


# -------------------------------------------------------------------------------- tests --
def test_two_users_chat_in_dev_mode(dev_web_server: ServerProcess, pages: Pages) -> None:
    # Page 1 auto-connects and joins from the URL, page 2 goes through the form.
    p1 = pages.new()
    p1.goto(url(dev_web_server, user=101, room="general"))
    wait_joined(p1, 101, "general")
    expect(p1.locator("#user-field")).to_be_visible()
    expect(p1.locator("#token-field")).to_be_hidden()

    p2 = pages.new()
    p2.goto(url(dev_web_server))
    expect(p2.locator("#user")).to_have_value(re.compile(r"^\d+$"))  # prefilled random id
    p2.fill("#user", "202")
    p2.click("#connect")
    expect(p2.locator("#conn-state")).to_have_text("connected")
    expect(p2.locator("#room")).to_have_value("general")  # the default room
    p2.click("#join")
    wait_joined(p2, 202, "general")

    send(p1, "hello from 101", enter=True)
    expect(p2.locator("#messages .msg").filter(has_text="hello from 101")).to_have_count(1)
    send(p2, "hi 101, 202 here")
    expect(p1.locator("#messages .msg").filter(has_text="hi 101, 202 here")).to_have_count(1)

    # User text is text, never markup.
    evil = '<img src=x onerror="window.pwned=1"><b>bold?</b>'
    send(p2, evil)
    evil_on_p1 = p1.locator("#messages .msg").filter(has_text="bold?")
    expect(evil_on_p1).to_have_count(1)
    expect(evil_on_p1.locator(".text")).to_have_text(evil)
    assert p1.locator("#messages img, #messages b").count() == 0
    assert p1.evaluate("window.pwned") is None

    # Same messages, same seqs, same order on both pages.
    for page in (p1, p2):
        expect(page.locator("#messages .msg")).to_have_count(3)
        assert message_texts(page) == ["hello from 101", "hi 101, 202 here", evil]
    seqs = assert_well_ordered(p1)
    assert assert_well_ordered(p2) == seqs
    sender = p1.locator("#messages .msg").first.locator(".from")
    expect(sender).to_contain_text("101")
    expect(p2.locator("#messages .msg").first.locator(".from")).to_contain_text("user 101")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    p2.screenshot(path=str(SCREENSHOT))

    # After a reload, page 1 gets everything back from history, without duplicates.
    p1.reload()
    wait_joined(p1, 101, "general")
    expect(p1.locator("#messages .msg")).to_have_count(3)
    assert message_texts(p1) == ["hello from 101", "hi 101, 202 here", evil]
    assert assert_well_ordered(p1) == seqs
    expect(p1.locator("#messages .msg.mine")).to_have_count(1)

    # Live messages keep flowing to the reloaded page.
    send(p2, "welcome back")
    expect(p1.locator("#messages .msg").filter(has_text="welcome back")).to_have_count(1)
    assert_well_ordered(p1)


def test_token_login_without_dev_mode(web_server: ServerProcess, pages: Pages) -> None:
    alice, bob = web_server.token(7), web_server.token(8)

    p1 = pages.new()
    p1.goto(url(web_server, token=alice, room="lobby"))
    wait_joined(p1, 7, "lobby")
    expect(p1.locator("#token-field")).to_be_visible()
    expect(p1.locator("#user-field")).to_be_hidden()

    p2 = pages.new()
    p2.goto(url(web_server))
    expect(p2.locator("#token-field")).to_be_visible()
    expect(p2.locator("#user-field")).to_be_hidden()
    p2.fill("#token", bob)
    p2.click("#connect")
    join_via_ui(p2, "lobby")
    wait_joined(p2, 8, "lobby")

    send(p1, "token login works")
    expect(p2.locator("#messages .msg").filter(has_text="token login works")).to_have_count(1)
    send(p2, "confirmed", enter=True)
    expect(p1.locator("#messages .msg").filter(has_text="confirmed")).to_have_count(1)

    p1.reload()
    wait_joined(p1, 7, "lobby")
    expect(p1.locator("#messages .msg")).to_have_count(2)
    assert message_texts(p1) == ["token login works", "confirmed"]
    assert_well_ordered(p1)


def test_bad_token_is_reported(web_server: ServerProcess, pages: Pages) -> None:
    page = pages.new()
    page.goto(url(web_server, token="not-a-jwt", room="general"))
    expect(page.locator("#conn-state")).to_have_text("disconnected")
    expect(page.locator("#status")).to_contain_text("Not authorized")
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#join")).to_be_disabled()


def test_dev_token_endpoint_absent_without_dev_mode(web_server: ServerProcess, pages: Pages) -> None:
    page = pages.new()
    response = page.request.get(f"{web_server.http_url}/dev/token?user=1&tenant=0")
    assert response.status == 404
    info = page.request.get(f"{web_server.http_url}/info").json()
    assert info["dev_mode"] is False
