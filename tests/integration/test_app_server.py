"""``workbench app`` serves through a production WSGI server (waitress), not Werkzeug's
development server, and stops cleanly on Ctrl-C (issue 18)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.browser.helpers import free_port

pytestmark = pytest.mark.model


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def test_app_command_serves_with_waitress_and_stops_on_ctrl_c():
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "app", "--port", str(port), "--threads", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                status, headers, body = get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the app did not answer within 180 s"
                time.sleep(0.5)
        assert status == 200 and b"Attention workbench" in body
        assert headers.get("Server") == "attention-workbench"  # waitress, named by us
        status, _, layout = get(f"http://127.0.0.1:{port}/_dash-layout")
        assert status == 200 and json.loads(layout)  # the page's component tree
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the app did not stop within 30 s of Ctrl-C") from None
    assert "Running on" not in out  # Werkzeug's development-server banner
    assert "Traceback" not in out, out
