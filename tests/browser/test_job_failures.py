"""A job whose worker process dies mid-run: the page says so, and the app stays usable.

The explorer's forward on a long prompt reports its progress by layer with the elapsed time and
an estimate; the test kills that job's process with SIGKILL (what the kernel's out-of-memory
killer does) while the status shows a layer, then checks the page reports the stopped job
instead of hanging on its last progress line, and that the next run works.
"""

from __future__ import annotations

import os
import re
import signal

import psutil
import pytest

from tests.browser.helpers import click, free_port, set_value, text_of, wait_text, wait_until

pytestmark = [pytest.mark.model, pytest.mark.slow]

LONG_PROMPT = " ".join(f"word{i % 97} and the cat sat." for i in range(900))  # ~6k tokens


def job_processes() -> list[psutil.Process]:
    """The app's job processes: this test process's children that are not the browser."""
    return [
        p
        for p in psutil.Process().children(recursive=False)
        if not any(part in p.name() for part in ("chrom", "driver"))
    ]


def test_a_killed_job_is_reported_and_the_app_stays_usable(dash_duo, wb_app):
    dash_duo.start_server(wb_app, port=free_port())
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.wait_for_element("#run-forward", timeout=60)
    before = {p.pid for p in job_processes()}
    set_value(dash_duo, "prompt", LONG_PROMPT)
    click(dash_duo, "#run-forward")
    # progress by layer, with the elapsed time and (after the first layer) an estimate
    status = wait_text(dash_duo, "#run-status", "elapsed", timeout=120)
    assert re.search(r"layer: \d+/30 · \d+ s elapsed", status), status
    wait_text(dash_duo, "#run-status", "left", timeout=120)
    workers = wait_until(
        lambda: [p for p in job_processes() if p.pid not in before], what="the job process"
    )
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    wait_text(dash_duo, "#prompt-error", "worker process ended", timeout=60)
    wait_text(dash_duo, "#run-status", "Stopped.", timeout=30)  # not the last layer line
    assert dash_duo.driver.find_element("id", "run-forward").is_enabled()
    # the next run works and clears the message
    set_value(dash_duo, "prompt", "The cat sat on the mat.")
    click(dash_duo, "#run-forward")
    wait_text(dash_duo, "#run-status", "tokens ·", timeout=120)
    assert text_of(dash_duo, "#prompt-error") == ""
