"""The status line of a background job: phase, steps done, time elapsed and an estimate of the
time left, e.g. ``induction: 6/16 · 12 s elapsed · about 20 s left``.

The estimate is the pace of the current phase so far (its seconds per step) times its steps
left; a phase starts when the description changes or its count goes back (a new forward), and
no estimate is given before its first step is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """``"14 s"`` under a minute, ``"2 min 05 s"`` above."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class ProgressText:
    """Turn ``(desc, done, total)`` progress calls into status lines with elapsed time and an
    estimate; ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self._phase: str | None = None
        self._phase_start = self.start
        self._first_done = 0
        self._last_done = 0

    def __call__(self, desc: str, done: int, total: int) -> str:
        now = self.clock()
        if desc != self._phase or done < self._last_done:
            self._phase, self._phase_start, self._first_done = desc, now, done
        self._last_done = done
        text = f"{desc}: {done}/{total} · {duration(now - self.start)} elapsed"
        steps = done - self._first_done
        if steps > 0 and done < total:
            left = (now - self._phase_start) / steps * (total - done)
            text += f" · about {duration(left)} left"
        return text
