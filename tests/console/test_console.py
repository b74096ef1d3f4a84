"""The web console in a real headless browser (Debian's chromium driven by Playwright), against a
real engine with workers on the official SDKs (Python ``shop_worker.py``; Node for the worker that
connects while the page is open).

One engine, one console and one browser serve the whole module; each test opens a page by its
address and waits for what it must show (Playwright's ``expect`` polls, no sleeps). With
``III_SCREENSHOTS=1`` each page's screenshot is written to ``docs/`` (the README shows them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from conftest import _missing
from helpers import NODE_WORKER, ROOT

try:
    from playwright import sync_api as playwright_api
except ImportError:  # installed by scripts/bootstrap.sh; the page fixture says what is missing
    playwright_api = None  # type: ignore[assignment]
expect: Any = playwright_api.expect if playwright_api is not None else None

pytestmark = pytest.mark.interop

CHROMIUM = os.environ.get("III_CHROMIUM") or "/usr/bin/chromium"
#: Debian's chromium headless, offline: no first-run, sync, update or background requests.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHOP_WORKER = Path(__file__).with_name("shop_worker.py")
SCREENSHOTS = ROOT / "docs" if os.environ.get("III_SCREENSHOTS") else None
ENGINE_CONFIG = """\
workers:
  - name: hello-worker
    worker_path: HELLO_WORKER
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: 0}
  - name: iii-http
    config: {host: 127.0.0.1, port: 0}
  - name: iii-stream
    config: {host: 127.0.0.1, port: 0}
  - name: iii-queue
    config:
      queue_configs:
        mail: {max_retries: 1, backoff_ms: 10}
"""


class Process:
    """A subprocess whose output lines are collected by a thread; killed by pid at teardown."""

    def __init__(self, *cmd: str, env: Optional[dict[str, Optional[str]]] = None) -> None:
        merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={name: value for name, value in merged.items() if value is not None},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], Any], timeout: float = 20) -> Any:
        """The first truthy ``predicate(line)`` of a line seen before or within ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    found = predicate(line)
                    if found:
                        return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None and seen == len(self.lines):
                    raise AssertionError(f"no matching line in {timeout}s: {self.lines[-20:]}")
                self._changed.wait(left)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


class Stack:
    """The engine, the shop worker and the console, with the console's URL."""

    def __init__(self) -> None:
        self.processes: list[Process] = []

    def launch(self, directory: Path, official_python: str) -> None:
        (directory / "config.yaml").write_text(ENGINE_CONFIG.replace("HELLO_WORKER", str(ROOT / "examples/demo/hello-worker")))
        self.env = {"III_LOGS_DIR": str(directory / "logs")}  # the manager's worker output
        engine = self.start(sys.executable, "-m", "iii", "-c", str(directory / "config.yaml"), env=self.env)
        self.worker_url = engine.wait_for(lambda line: _search(r"iii engine \S+ listening on (ws://\S+)", line))
        http_url = engine.wait_for(lambda line: _search(r"iii-http listening on (http://\S+)", line))
        stream_url = engine.wait_for(lambda line: _search(r"iii-stream listening on (ws://\S+)", line))
        port = lambda url: url.rsplit(":", 1)[1].strip("/")  # noqa: E731
        self.shop = self.worker(official_python, str(SHOP_WORKER))
        self.console = self.start(
            sys.executable, "-m", "iii", "console", "--port", "0", "--bridge-port", port(self.worker_url),
            "--engine-port", port(http_url), "--ws-port", port(stream_url), env=self.env,
        )
        self.url = self.console.wait_for(lambda line: _search(r"Console available at (http://\S+)", line))
        self.shop.wait_for(lambda line: '"ready"' in line)

    def start(self, *cmd: str, env: Optional[dict[str, Optional[str]]] = None) -> Process:
        process = Process(*cmd, env=env)
        self.processes.append(process)
        return process

    def worker(self, *cmd: str) -> Process:
        # An official SDK's worker must import the official `iii`, never this checkout's.
        return self.start(*cmd, env={"III_URL": self.worker_url, "PYTHONPATH": None})

    def call(self, function_id: str, payload: Any = None) -> Any:
        """A call through the console's own endpoint (what the page does)."""
        request = urllib.request.Request(
            self.url + "/api/call", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"function_id": function_id, "payload": payload or {}}).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
        assert answer["ok"], answer
        return answer["result"]

    def has(self, function_id: str) -> bool:
        listed = self.call("engine::functions::list", {"include_internal": True})["functions"]
        return any(f["function_id"] == function_id for f in listed)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _search(pattern: str, line: str) -> Optional[str]:
    match = re.search(pattern, line)
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def stack(official_python: str) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory() as directory:
        running = Stack()
        try:
            running.launch(Path(directory), official_python)
            yield running
        finally:
            running.close()


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator[Any]:
    if playwright_api is None:
        _missing("the playwright package (scripts/bootstrap.sh installs it)")
    if not Path(CHROMIUM).exists():
        _missing(f"chromium at {CHROMIUM} (apt-get install chromium)")
    expect.set_options(timeout=15_000)
    with playwright_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1000, "height": 620},
        )
        errors: list[str] = []
        tab = context.pages[0] if context.pages else context.new_page()
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)  # CSP, 404s
        tab.set_default_timeout(15_000)
        try:
            yield tab
        finally:
            context.close()
        assert errors == [], errors


def open_page(page: Any, stack: Stack, route: str) -> None:
    page.goto(f"{stack.url}/#/{route}")
    expect(page.locator("#connection")).to_have_text("engine connected")


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOTS is not None:
        page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"))


def test_workers_page_lists_workers_and_opens_one(page, stack):
    open_page(page, stack, "workers")
    row = page.locator('tr[data-worker="shop"]')
    expect(row).to_contain_text("python")
    expect(row).to_contain_text("available")
    expect(page.locator('tr[data-worker="iii-queue"]')).to_contain_text("engine")
    row.get_by_role("button", name="shop").click()
    detail = page.locator("#worker-detail")
    expect(detail).to_contain_text("Takes orders")
    expect(detail.locator("#worker-functions")).to_contain_text("shop::order")
    expect(detail).to_contain_text("Recent log lines")
    screenshot(page, "workers")
    # A worker the engine supervises: its process output, as `iii worker logs` shows it.
    page.locator('tr[data-worker="hello-worker"]').get_by_role("button", name="hello-worker").click()
    expect(detail.locator("pre.worker-stdout")).to_contain_text("hello-worker is up")


def test_invoking_a_function_from_its_schema_form_shows_the_result(page, stack):
    open_page(page, stack, "functions?fn=shop::order")
    expect(page.locator("#function-detail h2").first).to_have_text("shop::order")
    page.locator("#arg-item").fill("tea")
    page.locator("#arg-qty").fill("3")
    expect(page.locator("#invoke-body")).to_have_value(re.compile(r'"qty": 3'))
    page.locator("#invoke").click()
    expect(page.locator("#invoke-result")).to_contain_text("Success")
    assert json.loads(page.locator("#invoke-output").inner_text()) == {"item": "tea", "qty": 3, "total": 6}
    screenshot(page, "functions")
    # A failing call shows the error and its code.
    page.locator("#invoke-body").fill("{}")
    page.locator("#invoke").click()
    expect(page.locator("#invoke-result")).to_contain_text("Error")
    expect(page.locator("#invoke-output")).to_contain_text("item")


def test_triggers_page_shows_routes_and_cron_jobs(page, stack):
    open_page(page, stack, "triggers")
    routes = page.locator("#http-routes")
    expect(routes).to_contain_text("/orders")
    expect(routes).to_contain_text("POST")
    expect(routes).to_contain_text("shop::order")
    cron = page.locator("#cron-jobs")
    expect(cron).to_contain_text("0 0 * * * *")
    expect(cron).to_contain_text("shop::tick")
    expect(cron).not_to_contain_text("invalid")
    expect(page.locator("#trigger-types")).to_contain_text("durable:subscriber")
    screenshot(page, "triggers")


def test_redriving_a_dead_letter_puts_it_back_in_its_queue(page, stack):
    open_page(page, stack, "queues")
    row = page.locator('tr[data-queue="mail"]')
    expect(row).to_be_visible()
    row.get_by_role("button", name="mail").click()
    letter = page.locator("#dead-letter-list li")
    expect(letter).to_have_count(1)
    expect(letter).to_contain_text("mail server down")
    screenshot(page, "queues")
    stack.call("shop::heal")
    letter.get_by_role("button", name="Redrive").click()
    expect(page.locator("#dead-letters")).to_contain_text("No dead letters")
    stack.shop.wait_for(lambda line: '"mailed": {"to": "bob"}' in line)
    expect(row.locator("td").nth(5)).to_have_text("0")  # dead letters
    expect(row.locator("td").nth(6)).to_have_text("1")  # delivered
    # A dead letter nobody wants: discard it.
    stack.call("engine::queue::enqueue", {"queue": "mail", "function_id": "shop::mail", "data": {"to": "nobody"}})
    expect(letter).to_contain_text("no such mailbox")
    letter.get_by_role("button", name="Discard").click()
    letter.get_by_role("button", name="Yes").click()
    expect(page.locator("#dead-letters")).to_contain_text("No dead letters")
    expect(row.locator("td").nth(5)).to_have_text("0")  # dead letters
    expect(row.locator("td").nth(6)).to_have_text("1")  # delivered: still only bob's
    # A durable topic's subscriber queue: listed once it holds dead letters; redrive them all.
    subscriber = page.locator('tr[data-queue="receipts::shop::archive"]')
    expect(subscriber).to_contain_text("topic subscriber")
    subscriber.get_by_role("button").click()
    expect(page.locator("#dead-letter-list li")).to_contain_text("archive offline")
    page.get_by_role("button", name="Redrive all").click()
    page.locator("#dead-letters").get_by_role("button", name="Yes").click()
    expect(page.locator("#queue-message")).to_have_text("Redrove 1 messages to receipts::shop::archive.")
    expect(subscriber.locator("td").nth(6)).to_have_text("1")  # delivered


def test_state_page_edits_a_value(page, stack):
    open_page(page, stack, "state")
    page.locator("#scopes").get_by_role("button", name="carts").click()
    page.locator("#keys").get_by_role("button", name="alice").click()
    editor = page.locator("#value-editor")
    expect(editor).to_have_value(re.compile(r'"items": 2'))
    screenshot(page, "state")
    editor.fill('{"items": 5}')
    page.locator("#save-value").click()
    expect(page.locator("#editor-result")).to_have_text("Saved.")
    assert stack.call("state::get", {"scope": "carts", "key": "alice"}) == {"items": 5}
    # A write made elsewhere shows up without a reload (the state trigger's notice).
    stack.call("state::set", {"scope": "carts", "key": "carol", "value": {"items": 1}})
    expect(page.locator('tr[data-state-key="carol"]')).to_be_visible()


def test_streams_page_shows_a_group_and_its_changes(page, stack):
    open_page(page, stack, "streams")
    page.locator("#streams").get_by_role("button", name="today").click()
    expect(page.locator('tr[data-item="o-1"]')).to_contain_text("tea")
    expect(page.locator("#stream-events")).to_contain_text("sync")  # the page has joined the group
    stack.call("stream::set", {"stream_name": "orders", "group_id": "today", "item_id": "o-2", "data": {"item": "cake"}})
    expect(page.locator('tr[data-item="o-2"]')).to_contain_text("cake")
    expect(page.locator("#stream-events")).to_contain_text("o-2")
    screenshot(page, "streams")
    page.locator("#stream-items").get_by_role("button", name="o-1").click()
    page.locator("#value-editor").fill('{"item": "green tea"}')
    page.locator("#save-value").click()
    expect(page.locator("#editor-result")).to_have_text("Saved.")
    assert stack.call("stream::get", {"stream_name": "orders", "group_id": "today", "item_id": "o-1"}) == {"item": "green tea"}
    expect(page.locator('tr[data-item="o-1"]')).to_contain_text("green tea")


def test_logs_and_traces_pages_show_what_the_engine_keeps(page, stack):
    if not stack.has("engine::logs::list"):  # an engine without the telemetry module
        for route in ("logs", "traces"):
            open_page(page, stack, route)
            expect(page.locator("main")).to_contain_text("No telemetry")
            screenshot(page, route)
        return
    stack.call("shop::order", {"item": "jam", "qty": 1})  # logs "order placed" in a traced call
    open_page(page, stack, "logs")
    expect(page.locator("#logs")).to_contain_text("order placed")
    page.locator("#log-worker").select_option("shop")
    expect(page.locator("#logs")).to_contain_text("shop::order")  # the function of the span it was logged in
    page.locator("#log-function").fill("shop::mail")
    expect(page.locator("#logs")).not_to_contain_text("order placed")
    page.locator("#log-function").fill("shop::order")
    page.locator("#log-level").select_option("WARN")
    expect(page.locator("#logs")).not_to_contain_text("order placed")
    page.locator("#log-level").select_option("INFO")
    expect(page.locator("#logs")).to_contain_text("order placed")
    expect(page.locator("#log-worker")).to_have_value("shop")
    screenshot(page, "logs")
    open_page(page, stack, "traces")
    page.locator("#trace-function").fill("shop::order")
    page.locator("#traces").get_by_role("button", name="execute shop::order").first.click()
    expect(page.locator("#trace-tree [role=treeitem]").first).to_contain_text("execute shop::order")
    expect(page.locator("#trace-tree")).to_contain_text(" ms")
    expect(page.locator("#span-detail")).to_contain_text('"item": "jam"')  # the call's input, recorded by the SDK
    screenshot(page, "traces")


def test_a_worker_that_connects_appears_without_a_reload(page, stack, node):
    open_page(page, stack, "workers")
    expect(page.locator('tr[data-worker="shop"]')).to_be_visible()
    page.evaluate("window.__still_here = true")
    newcomer = stack.worker(node, str(NODE_WORKER), "newcomer", "--fn", "newcomer::hi=echo", "--stay")
    try:
        row = page.locator('tr[data-worker="newcomer"]')
        expect(row).to_contain_text("node")
        assert page.evaluate("window.__still_here") is True
    finally:
        newcomer.stop()
    expect(row).to_have_count(0)  # and goes when it leaves


def test_the_console_answers_only_its_own_pages(stack):
    def post(headers: dict[str, str], body: bytes = b'{"function_id": "shop::heal"}') -> int:
        request = urllib.request.Request(stack.url + "/api/call", method="POST", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post({"Content-Type": "application/json"}) == 200
    assert post({"Content-Type": "application/json", "Origin": "http://evil.example"}) == 403
    assert post({"Content-Type": "text/plain"}) == 415
    assert post({"Content-Type": "application/json", "Host": "evil.example"}) == 403
    assert post({"Content-Type": "application/json"}, b'{"function": 1}') == 400


def test_pages_fit_a_narrow_window_and_work_from_the_keyboard(page, stack):
    page.set_viewport_size({"width": 400, "height": 700})
    try:
        for route in ("workers", "functions?fn=shop::order", "triggers", "queues", "state?scope=carts", "streams", "logs", "traces"):
            open_page(page, stack, route)
            expect(page.locator("main h1")).to_be_visible()
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, f"{route} is {overflow}px wider than a 400px window"
    finally:
        page.set_viewport_size({"width": 1000, "height": 620})
    open_page(page, stack, "workers")
    expect(page.locator('tr[data-worker="shop"]')).to_be_visible()
    page.locator("body").press("/")
    page.keyboard.type("shop")
    expect(page.locator("#workers-list tbody tr")).to_have_count(1)
    page.keyboard.press("Tab")  # the modules toggle
    page.keyboard.press("Tab")  # the row
    page.keyboard.press("Enter")
    expect(page.locator("#worker-detail")).to_contain_text("Takes orders")
    page.keyboard.press("Escape")
    expect(page.locator("#worker-detail")).not_to_contain_text("Takes orders")


def test_a_second_console_on_the_same_engine_says_so_and_exits(stack):
    second = stack.start(sys.executable, "-m", "iii", "console", "--port", "0", "--bridge-port", stack.worker_url.rsplit(":", 1)[1])
    second.wait_for(lambda line: "another iii console is connected" in line)
    assert second.popen.wait(20) == 1
