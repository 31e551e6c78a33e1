"""
The JS client's side of revocable access, in a real headless Chromium against a real
server: it refreshes its connect token in-band before it expires, fetches a new one
and resumes after a 4001, and stops for good on a 4003.
"""
# ruff: noqa: F811

from __future__ import annotations

import json
import time

import pytest

# The browser fixture is test_browser's: imported, it is used as an argument.
from tests.e2e.test_browser import browser, open_page, publish, wait_for  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.redis]


def make_user(site, name: str) -> int:
    out = site.shell(
        "from django.contrib.auth.models import User;"
        f"print(User.objects.create_user({name!r}, password='first').pk)"
    )
    return int(out.strip())


def tokens(site, pk: int, *ttls: int) -> list[str]:
    out = site.shell(
        "from django.contrib.auth.models import User; from broadcast import connect_token;"
        f"user = User.objects.get(pk={pk});"
        f"print('\\n'.join(connect_token(user, ttl=ttl) for ttl in {list(ttls)!r}))"
    )
    return out.split()


def start_client(browser, first: str, provided: list, *, fail_first: bool = False) -> None:
    """window.client, connected with ``first``; its tokenProvider hands out ``provided``."""
    browser.execute_script(
        "window.provided = arguments[1]; window.failFirst = arguments[2];"
        "window.seen = []; window.opens = 0; window.errors = [];"
        "window.client = new BroadcastClient('/ws/broadcast/', {token: arguments[0],"
        " baseDelay: 100, maxDelay: 500,"
        " tokenProvider: () => window.failFirst ? (window.failFirst = false,"
        "   Promise.reject(new Error('token service down'))) : window.provided.shift(),"
        " onMessage: (m) => window.seen.push(m.id),"
        " onStateChange: (s) => { if (s === 'open') window.opens += 1; },"
        " onError: (e) => window.errors.push(e.message)});",
        first, provided, fail_first,
    )  # fmt: skip
    wait_for(browser, lambda d: d.execute_script("return window.opens") == 1, what="open")


def wait_for_close(browser, code: int) -> None:
    def closed_with(driver) -> bool:
        return driver.execute_script("return window.client.lastClose || {}").get("code") == code

    wait_for(browser, closed_with, what=f"the {code}")


def test_the_js_client_refreshes_its_token_in_band_then_stops_when_revoked(
    browser,
    redis_site,
    start_server,
):
    server = start_server(redis_site, "uvicorn")
    open_page(browser, server)
    pk = make_user(redis_site, "js-refresh")
    short, long = tokens(redis_site, pk, 3, 600)
    start_client(browser, short, [long])
    wait_for(
        browser, lambda d: d.execute_script("return window.client.options.token") == long,
        what="the refresh",
    )  # fmt: skip
    time.sleep(2.5)  # past the first token's expiry
    after = publish(redis_site, "news", {"after": "expiry"})
    wait_for(browser, lambda d: after in d.execute_script("return window.seen"), what="delivery")
    assert browser.execute_script("return window.opens") == 1  # the same socket throughout

    redis_site.shell(
        "from django.contrib.auth.models import User;"
        f"user = User.objects.get(pk={pk}); user.set_password('second'); user.save()"
    )
    wait_for_close(browser, 4003)
    time.sleep(1.5)  # well past the backoff: it does not come back
    assert browser.execute_script("return [window.client.state, window.opens]") == ["closed", 1]
    assert "access revoked (4003)" in browser.execute_script("return window.errors")


def test_the_js_client_gets_a_new_token_after_4001_and_resumes_what_it_missed(
    browser,
    redis_site,
    start_server,
):
    server = start_server(redis_site, "daphne")
    open_page(browser, server)
    pk = make_user(redis_site, "js-expiry")
    short, fresh = tokens(redis_site, pk, 2, 600)
    # The in-band refresh fails (the token service is down): the token expires.
    start_client(browser, short, [fresh], fail_first=True)
    wait_for_close(browser, 4001)
    missed = publish(redis_site, "news", {"while": "away"})
    wait_for(browser, lambda d: d.execute_script("return window.opens") == 2, what="reconnect")
    wait_for(browser, lambda d: missed in d.execute_script("return window.seen"), what="resume")
    errors = browser.execute_script("return window.errors")
    assert errors == ["token service down"], json.dumps(errors)
    assert browser.execute_script("return window.client.options.token") == fresh
