"""
The demo page and the JS client in a real headless Chromium (Debian's chromium and
chromedriver, driven by selenium), against real servers and Redis.

Screenshots are kept in artifacts/ (BROADCAST_ARTIFACTS to put them elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, ROOT, Server

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.redis]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("BROADCAST_ARTIFACTS", ROOT / "artifacts"))
HOSTILE = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>"


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium; fails (never skips) when it is not installed."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1100,800",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]:  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition(driver)
        except WebDriverException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            screenshot(driver, f"timeout-{what.replace(' ', '-')}")
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def state(driver) -> str:
    return driver.find_element(By.ID, "state").get_attribute("data-state")


def feed(driver) -> list[dict]:
    """The feed as shown: newest first, each item's id, type and payload text."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#feed li')).map(li => ({"
        "id: li.dataset.id ? Number(li.dataset.id) : null,"
        "type: li.querySelector('.type').textContent,"
        "payload: li.querySelector('.payload').textContent}))"
    )


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def publish(site, type_: str, payload) -> int:
    """Publish with `manage.py broadcast` (another process, over Redis); the new id."""
    out = site.manage("broadcast", type_, json.dumps(payload)).stdout
    return int(re.search(r"Sent broadcast id=(\d+)", out).group(1))


def open_page(browser, server) -> None:
    browser.get(server.http + "/")
    wait_for(browser, lambda d: state(d) == "open", what="the socket to open")


def test_the_page_shows_a_broadcast_published_after_it_loaded(browser, redis_site, start_server):
    server = start_server(redis_site)
    open_page(browser, server)
    msg_id = publish(redis_site, "news", {"text": "deploy at 18:00"})
    items = wait_for(browser, lambda d: [i for i in feed(d) if i["id"] == msg_id], what="item")
    assert items == [{"id": msg_id, "type": "news", "payload": '{"text":"deploy at 18:00"}'}]
    wait_for(
        browser,
        lambda d: d.find_element(By.ID, "live-total").text == "1",
        what="the live total",
    )
    assert screenshot(browser, "live-page").stat().st_size > 0


def test_a_payload_with_html_is_shown_as_text(browser, redis_site, start_server):
    server = start_server(redis_site)
    open_page(browser, server)
    msg_id = publish(redis_site, "alert", {"html": HOSTILE})
    wait_for(browser, lambda d: any(i["id"] == msg_id for i in feed(d)), what="item")
    shown = next(i for i in feed(browser) if i["id"] == msg_id)
    assert shown["payload"] == json.dumps({"html": HOSTILE}, separators=(",", ":"))
    assert browser.find_elements(By.CSS_SELECTOR, "#feed script, #feed img") == []
    assert browser.execute_script("return window.__xss === undefined")
    # The same payload rendered by the server on the next page load: escaped too.
    browser.refresh()
    wait_for(browser, lambda d: state(d) == "open", what="the socket to open")
    assert browser.find_elements(By.CSS_SELECTOR, "#feed script, #feed img") == []
    assert browser.execute_script("return window.__xss === undefined")
    screenshot(browser, "escaped-payload")


@pytest.mark.slow
def test_the_client_reconnects_and_resumes_after_a_server_restart(
    browser, redis_site, start_server
):
    server = start_server(redis_site)
    open_page(browser, server)
    before = publish(redis_site, "news", {"n": 1})
    wait_for(browser, lambda d: any(i["id"] == before for i in feed(d)), what="first item")

    server.stop()
    wait_for(browser, lambda d: state(d) in {"closed", "connecting"}, what="the drop")
    missed = publish(redis_site, "news", {"n": 2})  # nobody is connected to receive it
    restarted = Server(redis_site, port=server.port).start()
    try:
        wait_for(browser, lambda d: state(d) == "open", timeout=30, what="the reconnect")
        after = publish(redis_site, "news", {"n": 3})
        wait_for(browser, lambda d: any(i["id"] == after for i in feed(d)), what="live item")
        ids = [item["id"] for item in feed(browser)]
        assert ids[:3] == [after, missed, before]  # newest first, the missed one resumed
        assert len(ids) == len(set(ids))  # nothing twice
        assert browser.execute_script("return window.hubClient.lastId") == after
        screenshot(browser, "after-restart")
    finally:
        restarted.stop()


def test_the_backoff_is_exponential_with_full_jitter_and_capped(browser, redis_site, start_server):
    server = start_server(redis_site)
    browser.get(server.http + "/")
    delays = browser.execute_script(
        "const d = BroadcastClient.backoffDelay;"
        "return [0, 1, 2, 3, 10, 20].map(n => [d(n, 500, 8000, () => 0.999999),"
        " d(n, 500, 8000, () => 0)]);"
    )
    assert [high for high, _ in delays] == [499, 999, 1999, 3999, 7999, 7999]
    assert {low for _, low in delays} == {0}


def test_a_client_beyond_the_servers_history_gets_a_reset_and_goes_on(
    browser, redis_site, start_server
):
    server = start_server(redis_site)
    open_page(browser, server)
    browser.execute_script(
        "window.resets = []; window.seen = [];"
        "window.stale = new BroadcastClient('/ws/broadcast/', {lastId: 10 ** 9,"
        " onReset: (info) => window.resets.push(info),"
        " onMessage: (m) => window.seen.push(m.id)});"
    )
    resets = wait_for(browser, lambda d: d.execute_script("return window.resets"), what="reset")
    assert resets[0]["from"] == 10**9
    msg_id = publish(redis_site, "news", {"after": "reset"})
    wait_for(browser, lambda d: d.execute_script("return window.seen").count(msg_id) == 1)
    assert browser.execute_script("return window.stale.lastId") == msg_id


def login(browser, server) -> None:
    browser.get(server.http + "/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(ADMIN_USER)
    browser.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, lambda d: "Log out" in d.page_source, what="the login")


def test_a_staff_user_publishes_from_the_admin_and_the_live_page_shows_it(
    browser, site, start_server
):
    # The embedded default (in-memory layer, one process): the admin publishes
    # inside the server process that the page is connected to.
    server = start_server(site)
    login(browser, server)
    open_page(browser, server)
    live_page = browser.current_window_handle
    compose = browser.find_element(By.ID, "compose").get_attribute("href")

    browser.switch_to.new_window("tab")
    browser.get(compose)
    browser.find_element(By.NAME, "type").send_keys("announcement")
    browser.find_element(By.NAME, "payload").send_keys('{"text": "from the admin"}')
    browser.find_element(By.NAME, "_save").click()
    wait_for(browser, lambda d: "was added successfully" in d.page_source, what="the save")

    browser.switch_to.window(live_page)
    wait_for(
        browser,
        lambda d: any(i["payload"] == '{"text":"from the admin"}' for i in feed(d)),
        what="the admin's broadcast on the page",
    )

    browser.get(server.http + "/admin/broadcast/hubprocess/")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "svg.hub-chart"), what="charts")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.hub-chart")) == 2
    recent = browser.find_element(By.ID, "hub-recent-broadcasts").text
    assert "announcement" in recent and "sent" in recent
    screenshot(browser, "admin-dashboard")


def published_id(site, *args: str) -> int:
    out = site.manage("broadcast", *args).stdout
    return int(re.search(r"Sent broadcast id=(\d+)", out).group(1))


def test_the_js_client_subscribes_unsubscribes_and_resumes_its_topics(
    browser, redis_site, start_server
):
    server = start_server(redis_site, "uvicorn")
    login(browser, server)  # the session cookie makes the user's own stream grantable
    open_page(browser, server)
    admin_pk = int(
        redis_site.shell(
            f"from django.contrib.auth.models import User;"
            f"print(User.objects.get(username={ADMIN_USER!r}).pk)"
        )
    )
    browser.execute_script(
        "window.got = []; window.answers = [];"
        "window.topical = new BroadcastClient('/ws/broadcast/', {topics: ['t.a'],"
        " onMessage: (m) => window.got.push([m.id, m.topic]),"
        " onSubscribed: (a) => window.answers.push(a)});"
    )
    answers = wait_for(browser, lambda d: d.execute_script("return window.answers"), what="answer")
    assert answers == [{"topics": ["t.a"], "denied": []}]
    browser.execute_script(f"window.topical.subscribe(['t.b', 'user.{admin_pk}', 'user.999999'])")
    wait_for(browser, lambda d: len(d.execute_script("return window.answers")) == 2)
    assert browser.execute_script("return window.answers[1]") == {
        "topics": ["t.b", f"user.{admin_pk}"],
        "denied": ["user.999999"],
    }
    # A denied topic is not asked for again on reconnects.
    assert browser.execute_script("return window.topical.topics") == [
        "t.a",
        "t.b",
        f"user.{admin_pk}",
    ]

    a = published_id(redis_site, "js.topics", "1", "--topic", "t.a")
    published_id(redis_site, "js.topics", "2", "--topic", "t.c")
    b = published_id(redis_site, "js.topics", "3", "--topic", "t.b")
    mine = int(
        redis_site.shell(
            "from django.contrib.auth.models import User\nfrom broadcast import publish_to_user\n"
            f"print(publish_to_user(User.objects.get(pk={admin_pk}), 'dm', 4)['id'])"
        )
    )
    shared = published_id(redis_site, "js.topics", "5")
    expected = [[a, "t.a"], [b, "t.b"], [mine, f"user.{admin_pk}"], [shared, None]]
    wait_for(browser, lambda d: d.execute_script("return window.got") == expected, what="topics")

    browser.execute_script("window.topical.unsubscribe(['t.a'])")
    time.sleep(0.5)
    published_id(redis_site, "js.topics", "6", "--topic", "t.a")

    # Away across a restart: what its topics got meanwhile is resumed, nothing twice.
    server.stop()
    wait_for(browser, lambda d: d.execute_script("return window.topical.state") != "open")
    missed = published_id(redis_site, "js.topics", "7", "--topic", "t.b")
    published_id(redis_site, "js.topics", "8", "--topic", "t.a")
    restarted = Server(redis_site, "uvicorn", port=server.port).start()
    try:
        wait_for(
            browser,
            lambda d: d.execute_script("return window.topical.state") == "open",
            timeout=30,
            what="the reconnect",
        )
        after = published_id(redis_site, "js.topics", "9")
        wait_for(
            browser,
            lambda d: d.execute_script("return window.got").count([after, None]) == 1,
            what="the live broadcast after the resume",
        )
        got = browser.execute_script("return window.got")
        assert got == [*expected, [missed, "t.b"], [after, None]]
        screenshot(browser, "topics-after-restart")

        # The dashboard counts the subscribers of each topic (in another tab, so that
        # the client stays connected).
        browser.switch_to.new_window("tab")
        browser.get(restarted.http + "/admin/broadcast/hubprocess/")
        rows = wait_for(
            browser,
            lambda d: [
                row.text for row in d.find_elements(By.CSS_SELECTOR, "#hub-topics tbody tr")
            ],
            what="the topics table",
        )
        process = f"{socket.gethostname()}:{restarted.process.pid}"
        assert sorted(rows) == sorted([f"t.b 1 {process}: 1", f"user.{admin_pk} 1 {process}: 1"])
        screenshot(browser, "dashboard-topics")
    finally:
        restarted.stop()
