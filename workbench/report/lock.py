"""The lock of a report folder: one ``workbench report`` writes a folder at a time.

While a run writes ``DIR``, it holds ``DIR/.workbench-report.lock``: an exclusive ``flock`` on
the file (released by the kernel when the process ends in any way, ``kill -9`` included) and,
in the file, who holds it (pid, host, start time, command line). A second run on the same
folder fails at once with :class:`ReportLockedError` naming the running process. A lock file
left by a run that is no longer running (killed, crashed, machine rebooted) is stale: the next
run takes it over and says so in a log line, then resumes from the checkpoints.

:func:`folder_lock` is the context manager; it releases the lock on normal exit, on errors
and on Ctrl-C (``KeyboardInterrupt``), and removes the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from workbench.report.plan import ReportError

log = logging.getLogger("workbench.report")

LOCK_NAME = ".workbench-report.lock"


class ReportLockedError(ReportError):
    """Another running process writes the report folder."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def _holder_text(info: dict[str, Any]) -> str:
    """``pid 123 on host h, started 2024-01-01 12:00:00`` (what the lock file says)."""
    started = info.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "at an unknown time"
    )
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {when}"


def _read(fd: int) -> dict[str, Any]:
    """The holder information in the open lock file (empty when none or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _locked_error(root: Path, info: dict[str, Any]) -> ReportLockedError:
    return ReportLockedError(
        f"--out {root} is being written by another workbench report ({_holder_text(info)}); "
        f"wait for it to finish or stop it (kill {info.get('pid', '?')}), or choose another --out"
    )


def _open_locked(path: Path, root: Path) -> int:
    """An fd of ``path`` holding its exclusive flock; the file at ``path`` is the locked one
    (a file removed by its previous holder between our open and our lock is retried). Where
    the file system has no ``flock``, the pid in the file decides (a live pid on this host
    holds the folder)."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform
        fcntl = None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ReportError(
                f"--out {root}: cannot write the lock file {path.name} there "
                f"({exc.strerror or exc}); choose a folder you can write to"
            ) from None
        try:
            if fcntl is None:
                raise OSError("no flock")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fd)
            os.close(fd)
            raise _locked_error(root, info) from None
        except OSError:  # flock not supported here: fall back on the recorded pid
            info = _read(fd)
            same_host = info.get("host") == socket.gethostname()
            if info and same_host and _pid_alive(info.get("pid", -1)):
                os.close(fd)
                raise _locked_error(root, info) from None
            return fd
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it while we waited: lock the new file


@contextlib.contextmanager
def folder_lock(root: str | Path) -> Iterator[dict[str, Any]]:
    """Hold the lock of report folder ``root`` (created if missing) for the ``with`` block.

    Yields what the lock file holds (pid, host, started, argv).

    Raises:
        ReportLockedError: another process holds the lock (the message names its pid).
        ReportError: the folder or the lock file cannot be created.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(
            f"--out {root}: cannot create the folder ({exc.strerror or exc}); choose a folder "
            "you can write to"
        ) from None
    path = root / LOCK_NAME
    fd = _open_locked(path, root)
    try:  # from here on the file is ours: removed however the block ends
        info = _take_over(fd, root)
        yield info
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still holding the flock: no one else has this file
        os.close(fd)


def _take_over(fd: int, root: Path) -> dict[str, Any]:
    """Log a stale holder left in the locked file ``fd``, then write this process there."""
    old = _read(fd)
    if old:
        here = old.get("host") == socket.gethostname()
        if here and _pid_alive(old.get("pid", -1)):
            state = "its pid now belongs to another process"
        elif here:
            state = "that process is no longer running"
        else:
            state = "it ran on another host and no longer holds the lock"
        log.warning(
            "stale lock in %s: the run of %s did not finish (%s); taking the lock over and "
            "resuming from its checkpoints",
            root,
            _holder_text(old),
            state,
        )
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "argv": list(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)
    return info
