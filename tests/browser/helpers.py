"""Helpers of the browser tests (waiting, typing into React inputs, clicking grids, screenshots)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
JOB_TIMEOUT = float(os.environ.get("WORKBENCH_BROWSER_TIMEOUT", "240"))


# -- helpers ---------------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on 127.0.0.1. dash[testing] numbers ports from 58050 in every process,
    so two test sessions on one machine would otherwise talk to each other's servers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float = JOB_TIMEOUT, what: str = "") -> object:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # stale elements while React re-renders
            last_exc = exc
        time.sleep(0.25)
    dump_job_stacks()
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({last_exc!r})")


def dump_job_stacks() -> None:
    """Ask every child process (the app's job processes) to print its Python stack to stderr
    (``app.jobs.setup_worker`` registers SIGUSR1 for that), so a timed-out wait shows where a
    job stood."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "chrom" in child.name():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child.pid, signal.SIGUSR1)
    time.sleep(1.0)


def text_of(browser, selector: str) -> str:
    els = browser.driver.find_elements("css selector", selector)
    return els[0].text if els else ""


def wait_text(browser, selector: str, needle: str, timeout: float = JOB_TIMEOUT) -> str:
    return wait_until(
        lambda: needle in text_of(browser, selector) and text_of(browser, selector),
        timeout,
        f"{needle!r} in {selector} (now {text_of(browser, selector)!r})",
    )


def set_value(browser, element_id: str, text: str) -> None:
    """Set a React-controlled input/textarea value (fast for long text) and notify React."""
    browser.driver.execute_script(
        """
        const el = document.getElementById(arguments[0]);
        const proto = el.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype
                                                 : HTMLInputElement.prototype;
        Object.getOwnPropertyDescriptor(proto, 'value').set.call(el, arguments[1]);
        el.dispatchEvent(new Event('input', {bubbles: true}));
        el.dispatchEvent(new Event('change', {bubbles: true}));
        el.dispatchEvent(new Event('blur', {bubbles: true}));
        """,
        element_id,
        text,
    )


def type_into(browser, element_id: str, text: str) -> None:
    """Clear an input and type ``text`` like a user (short text only), then leave the field
    (Tab) so debounced inputs commit their value."""
    from selenium.webdriver.common.keys import Keys

    el = browser.driver.find_element("id", element_id)
    browser.clear_input(el)
    el.send_keys(text)
    el.send_keys(Keys.TAB)


def click(browser, selector: str) -> None:
    browser.wait_for_element(selector, timeout=30).click()


def open_tab(browser, name: str) -> None:
    click(browser, f"#tab-{name}")


def click_grid_cell(browser, graph_id: str, layer: int, head: int, layers: int, heads: int):
    """Click head (layer, head) in a (layers x heads) grid figure whose x range is about
    [-0.5, layers - 0.5] and y range [heads - 0.5, -0.5] (H0 on top)."""
    drag = browser.wait_for_element(f"#{graph_id} .nsewdrag", timeout=60)
    # the pointer origin is the element's *visible* centre: scroll it fully into view first
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", drag)
    time.sleep(0.3)
    fx = (layer + 0.5) / layers
    fy = (head + 0.5) / heads
    browser.click_at_coord_fractions(drag, fx, fy)


def plot_data(browser, graph_id: str) -> list:
    """The plotly traces currently drawn in a dcc.Graph."""
    return browser.driver.execute_script(
        "const gd = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "const v = a => (a && a._inputArray !== undefined ? a._inputArray : a);"
        "const arr = a => (a && typeof a.length === 'number' && typeof a !== 'string'"
        "  ? Array.from(a, r => (r && typeof r.length === 'number' && typeof r !== 'string'"
        "    ? Array.from(r) : r)) : a);"
        "return gd && gd.data ? gd.data.map(t => ({type: t.type, x: arr(v(t.x)),"
        "  y: arr(v(t.y)), z: arr(v(t.z))})) : [];",
        graph_id,
    )


#: The page widths the layout must hold at (issue 18: a laptop and a desktop screen).
WIDTHS = (1280, 1920)


def screenshot(browser, name: str, widths: tuple[int, ...] | None = None) -> list[Path]:
    """Full-page screenshots under test-artifacts/screenshots/: NAME.png at 1,400 px, or
    NAME-WIDTH.png for each of ``widths`` (the viewport is set to the page's height through the
    DevTools protocol, then restored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver = browser.driver
    page_height = (
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);"
    )
    paths = []
    for width in widths or (1400,):
        driver.execute_script("window.scrollTo(0, 0);")
        for _ in range(2):  # plotly re-lays out after a resize, which can change the height
            height = min(int(driver.execute_script(page_height)), 8000)
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            time.sleep(0.8)
        path = SCREENSHOTS / (f"{name}-{width}.png" if widths else f"{name}.png")
        driver.save_screenshot(str(path))
        paths.append(path)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    time.sleep(0.3)
    return paths


def fits(browser, element_id: str) -> bool:
    """The element shows its whole content (nothing scrolled or cut out of view)."""
    return browser.driver.execute_script(
        "const el = document.getElementById(arguments[0]);"
        "return el.scrollWidth <= el.clientWidth && el.clientWidth > 0;",
        element_id,
    )


def severe_logs(browser) -> list:
    """Browser console errors (SEVERE), ignoring none: the app must not produce any."""
    return [entry for entry in browser.get_logs() if entry.get("level") == "SEVERE"]
