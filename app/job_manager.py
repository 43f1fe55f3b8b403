"""The background-job manager of the app: :class:`dash.DiskcacheManager` with three fixes.

Dash forks one process per background callback and polls for its result. Three things go
wrong with the stock manager, each seen in the browser tests and by users:

1. **A finished job's result is dropped.** Each poll reads the result (not there yet) and
   *then* asks whether the process still runs. A job that writes its result and exits between
   those two reads (a quick job, or one that fails validation in milliseconds) looks cancelled,
   the page stops polling and shows neither result nor error. Here a process that has ended
   with a result not yet read counts as running, so the next poll reads it.
2. **A job that dies says nothing.** A job killed by the kernel (out of memory) or crashing in
   native code leaves no result; the stock manager then also stops polling silently. Here the
   poll returns an error naming the exit code, which the callback's error handler shows.
3. **A stuck job blocks interpreter exit.** Job processes were non-daemonic, so the server
   process (or a test session) waited forever at exit for a job that never ends. Here they are
   daemonic: they are terminated when the server exits.

Cancelled jobs (Dash's cancel button) are remembered so that their end is not reported as a
crash.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import dash

#: How long the job-process bookkeeping of a finished job is kept (seconds).
EXPIRE_S = 24 * 3600
#: How many exit codes of ended jobs are remembered for their error message.
KEPT_EXIT_CODES = 256


def exit_reason(exitcode: int | None) -> str:
    """``-9`` -> ``"killed by signal 9 (SIGKILL: out of memory?)"``; ``1`` -> ``"exit code 1"``."""
    if exitcode is None:
        return "unknown exit status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = ": out of memory?" if -exitcode == signal.SIGKILL else ""
        return f"killed by signal {-exitcode} ({name}{hint})"
    return f"exit code {exitcode}"


class JobManager(dash.DiskcacheManager):
    """:class:`dash.DiskcacheManager` whose jobs are daemonic and never end silently."""

    def __init__(self, cache: Any, **kwargs: Any) -> None:
        super().__init__(cache, **kwargs)
        self._processes: dict[int, Any] = {}
        self._exitcodes: dict[int, int | None] = {}
        self._lock = threading.Lock()

    # -- starting and stopping ----------------------------------------------------------------
    def call_job_fn(self, key: str, job_fn: Any, args: Any, context: Any) -> int:
        from multiprocess import Process  # dash's own choice (dill pickling for closures)

        process = Process(
            target=job_fn,
            args=(key, self._make_progress_key(key), args, context),
            daemon=True,
        )
        process.start()
        # In the cache, not in this object: a production server polls from other processes.
        self.handle.set(self._job_key(process.pid), key, expire=EXPIRE_S)
        with self._lock:
            self._forget_finished()
            self._processes[process.pid] = process
        return process.pid

    def terminate_job(self, job: Any) -> None:
        if job is not None:
            self.handle.set(self._cancel_key(job), True, expire=EXPIRE_S)
        super().terminate_job(job)

    def terminate_all(self) -> None:
        """Kill every job this manager started that still runs (server shutdown, tests)."""
        with self._lock:
            processes = list(self._processes.values())
            self._processes.clear()
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)

    # -- polling ------------------------------------------------------------------------------
    def job_running(self, job: Any) -> bool:
        """Running, or ended with a result not yet read (the next poll reads it)."""
        if super().job_running(job):
            return True
        key = self.handle.get(self._job_key(job)) if job else None
        return key is not None and self.result_ready(key)

    def get_result(self, key: str, job: Any) -> Any:
        result = super().get_result(key, job)
        if result is not self.UNDEFINED or not job or super().job_running(job):
            return result
        # The process has ended: a result it wrote just before exiting is there now.
        result = super().get_result(key, job)
        if result is not self.UNDEFINED or self.handle.get(self._cancel_key(job)):
            return result
        return {
            "background_callback_error": {
                "msg": (
                    f"the job process ended without a result ({exit_reason(self._exitcode(job))}); "
                    "the app is still running"
                ),
                "tb": "",
            }
        }

    # -- bookkeeping --------------------------------------------------------------------------
    @staticmethod
    def _job_key(job: Any) -> str:
        return f"workbench-job-{int(job)}"

    @staticmethod
    def _cancel_key(job: Any) -> str:
        return f"workbench-cancelled-{int(job)}"

    def _exitcode(self, job: Any) -> int | None:
        """The ended job's exit code, when this process started it (else None)."""
        with self._lock:
            process = self._processes.get(int(job))
            if process is None:
                return self._exitcodes.get(int(job))
        process.join(1)
        return process.exitcode

    def _forget_finished(self) -> None:
        """Reap ended processes, keeping the last exit codes; called with the lock held."""
        for pid, process in list(self._processes.items()):
            if process.exitcode is not None:
                self._exitcodes[pid] = process.exitcode
                del self._processes[pid]
        for pid in list(self._exitcodes)[:-KEPT_EXIT_CODES]:
            del self._exitcodes[pid]
