"""The local Function URL's page rule: which requests get the classify page, and what that page may load."""

from __future__ import annotations

import re

import pytest

from pomona.local.function_url import PAGE_POLICY, wants_page
from pomona.local.page import classify_page

CHROME_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize(
    ("method", "target", "accept", "expected"),
    [
        pytest.param("GET", "/", CHROME_ACCEPT, True, id="browser-opens-root"),
        pytest.param("GET", "/?from=bookmark", CHROME_ACCEPT, True, id="browser-with-query"),
        pytest.param("GET", "/", "", False, id="urllib-get"),
        pytest.param("GET", "/", "*/*", False, id="curl-get"),
        pytest.param("GET", "/other", CHROME_ACCEPT, False, id="browser-other-path"),
        pytest.param("POST", "/?file=a.jpg", CHROME_ACCEPT, False, id="the-pages-own-post"),
    ],
)
def test_only_a_browser_opening_the_root_gets_the_page(
    method: str, target: str, accept: str, expected: bool
) -> None:
    assert wants_page(method, target, accept) is expected


def test_the_page_is_self_contained_and_never_writes_handler_text_as_html() -> None:
    html = classify_page().decode()

    assert html.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no external assets
    assert not re.search(r"<link|@import", html)
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", html)  # text only
    assert "fetch(`/?file=${encodeURIComponent(file.name)}`" in html  # the app's call, to this server
    assert {"default-src 'none'", "connect-src 'self'"} <= set(PAGE_POLICY.split("; "))
