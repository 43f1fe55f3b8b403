"""Browser-test fixtures: dash[testing] with Debian's Chromium, headless, never a downloaded one.

``make browser`` installs ``chromium`` and ``chromium-driver`` when they are missing; without
them these tests skip. Headless mode is switched on here (the same as passing ``--headless``).
Screenshots go to ``test-artifacts/screenshots/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")


CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


def browser_available() -> bool:
    return os.path.exists(CHROMIUM) and shutil.which("chromedriver") is not None


def pytest_configure(config):
    # dash[testing]'s --headless flag, set for every run of these tests.
    if hasattr(config.option, "headless"):
        config.option.headless = True


def pytest_setup_options():
    """Chrome options for dash[testing]'s browser (a hook of its pytest plugin)."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    return options


BROWSER_FIXTURES = {"dash_duo", "dash_br", "second_browser"}


def pytest_collection_modifyitems(config, items):
    """Skip the tests that drive a browser when Chromium or chromedriver is missing."""
    if browser_available():
        return
    skip = pytest.mark.skip(
        reason=f"no browser: {CHROMIUM} and chromedriver are needed (run `make browser`)"
    )
    for item in items:
        if BROWSER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


@pytest.fixture
def wb_app(lm, tmp_path):
    """A fresh app (own job/session cache) around the shared test model; its jobs are killed
    afterwards, so a stuck job can fail its test but never outlive it."""
    from app.server import create_app

    app = create_app(lm, cache_dir=tmp_path / "app-cache", job_threads=1)
    yield app
    app._background_manager.terminate_all()


@pytest.fixture
def second_browser(request, tmp_path):
    """Another Chromium with its own profile (a separate browser context) and downloads."""
    from dash.testing.browser import Browser

    with Browser(
        browser="chrome",
        headless=True,
        options=request.config.hook.pytest_setup_options(),
        download_path=str(tmp_path / "second-download"),
        percy_run=False,
    ) as browser:
        yield browser
