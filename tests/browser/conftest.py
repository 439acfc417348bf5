"""Fixtures of the browser tests: a headless Chromium page and a page server of another origin.

One Chromium per test module (it takes about a second to start); each test gets the page
fresh, and leaves a screenshot of it in ``build/test-output/<test name>.png``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.browser.helpers import (
    CHROMEDRIVER,
    CHROMIUM,
    Browser,
    PageServer,
    page_server,
    start_chromium,
)
from tests.conftest import StartRelay


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    """The module's Chromium (started before its tests' trio runs: blocking is fine here)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: `make test` installs them "
            "(apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def browser(
    chromium: WebDriver, start_relay: StartRelay, request: pytest.FixtureRequest
) -> AsyncIterator[Browser]:
    """The page, for this test; a screenshot of it is saved when the test ends.

    Depends on ``start_relay`` so that it is torn down first: the page leaves (closing its
    connections) before the test's relays stop, instead of reconnecting to them meanwhile.
    """
    page = Browser(chromium)
    try:
        yield page
    finally:
        await page.screenshot(request.node.name)
        await page.leave()


@pytest.fixture
def pages() -> Iterator[PageServer]:
    """A server of test pages on an origin of its own, for this test."""
    with page_server() as server:
        yield server
