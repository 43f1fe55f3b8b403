"""The report folder lock with real processes: a second ``workbench report`` on a folder that a
running one writes is refused naming the running pid; after that run is killed with SIGKILL its
stale lock does not block the resume (a log line says so); the lock goes away on success, on an
error and on Ctrl-C."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.cli import EXIT_USER_ERROR, main
from workbench.report.lock import LOCK_NAME, ReportLockedError, folder_lock

PROMPTS = ["The cat sat on the mat. The cat sat on the mat.", "One two three one two three"]


def report_args(prompts: Path, out: Path) -> list[str]:
    return [
        "report",
        "--analyzers",
        "previous_token",
        "--prompts",
        str(prompts),
        "--no-causal",
        "--examples",
        "0",
        "--no-png",
        "--quiet",
        "--out",
        str(out),
    ]


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def start_report(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "workbench.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_lock(lock: Path, proc: subprocess.Popen, timeout: float = 180) -> dict:
    """What ``lock`` holds once process ``proc`` has written its pid there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the report ended early: {proc.stderr.read().decode()[-2000:]}")
        try:
            info = json.loads(lock.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("pid") == proc.pid:
            return info
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no lock of pid {proc.pid} within {timeout} s")


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.model
@pytest.mark.slow
def test_running_report_blocks_then_sigkill_leaves_a_stale_lock_that_resumes(
    prompts, tmp_path, capsys, caplog, monkeypatch, lm
):
    out = tmp_path / "report"
    args = report_args(prompts, out)
    lock = out / LOCK_NAME
    proc = start_report(args)
    try:
        holder = wait_for_lock(lock, proc)
        assert holder["host"] and holder["started"] <= time.time()
        # a second run on the same folder, while the first one runs: refused at once
        start = time.perf_counter()
        assert main(args) == EXIT_USER_ERROR
        line = error_line(capsys)
        assert f"pid {proc.pid}" in line and str(out) in line and f"kill {proc.pid}" in line
        assert time.perf_counter() - start < 10
        assert proc.poll() is None, "the running report was disturbed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads(lock.read_text())["pid"] == proc.pid  # the killed run's lock stays
    # the resume is not blocked by the stale lock, and says so
    monkeypatch.setattr("workbench.report.executors.load", lambda spec: lm)  # one model load
    with caplog.at_level(logging.WARNING, logger="workbench.report"):
        assert main(args) == 0
    stale = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
    assert len(stale) == 1 and f"pid {proc.pid}" in stale[0], stale
    assert (out / "heads.parquet").is_file() and not lock.exists()


@pytest.mark.model
@pytest.mark.slow
def test_ctrl_c_releases_the_lock(prompts, tmp_path):
    out = tmp_path / "report"
    lock = out / LOCK_NAME
    proc = start_report(report_args(prompts, out))
    try:
        wait_for_lock(lock, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # ends by SIGINT, as an uncaught Ctrl-C does (the shell's status 130): see workbench.cli.run
    assert proc.returncode == -signal.SIGINT, err.decode()[-2000:]
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    assert not lock.exists()
    with folder_lock(out) as info:  # free for the next run
        assert info["pid"] == os.getpid()


def test_an_error_inside_the_run_releases_the_lock(prompts, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("not a report")  # refused after the lock is taken
    assert main(report_args(prompts, out)) == EXIT_USER_ERROR
    assert "holds no report" in error_line(capsys)
    assert not (out / LOCK_NAME).exists()
    assert (out / "notes.txt").read_text() == "not a report"


def test_lock_is_released_on_keyboard_interrupt_and_refused_while_held(tmp_path):
    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt), folder_lock(out):
        assert (out / LOCK_NAME).is_file()
        raise KeyboardInterrupt
    assert not (out / LOCK_NAME).exists()
    held = pytest.raises(ReportLockedError, match=f"pid {os.getpid()}")
    with folder_lock(out), held, folder_lock(out):  # the second one is refused
        pass
