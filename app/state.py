"""Server-side per-session data: arrays too large for the browser, keyed by session id.

The browser keeps small state in ``dcc.Store`` components (tokens, the selected head, analyzer
tables); what a run produces for every head (block-pooled maps, sink scores, full maps of short
prompts) lives here, on disk, under ``{session}/{run}/{name}``. Each page load makes a new
session id, so two browser tabs never read each other's entries. Entries expire after
``expire`` seconds and the cache evicts the least recently used ones past ``size_limit``.

Background jobs run in forked processes; :mod:`diskcache` is process-safe, so jobs write here
and the request handlers read.
"""

from __future__ import annotations

import re
from typing import Any

import diskcache

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SessionStore:
    """Disk-backed key-value store scoped by session id and run id."""

    def __init__(self, directory: str, *, size_limit: int = 4 * 2**30, expire: float = 6 * 3600):
        self.cache = diskcache.Cache(
            directory, size_limit=size_limit, eviction_policy="least-recently-used", tag_index=True
        )
        self.expire = expire

    @staticmethod
    def _check(part: str) -> str:
        if not isinstance(part, str) or not _SAFE.match(part):
            raise ValueError(f"bad session/run id {part!r}")
        return part

    def key(self, session: str, run: str, name: str) -> str:
        return f"{self._check(session)}/{self._check(run)}/{name}"

    def put(self, session: str, run: str, name: str, value: Any) -> None:
        self.cache.set(
            self.key(session, run, name), value, expire=self.expire, tag=f"{session}/{run}"
        )

    def get(self, session: str | None, run: str | None, name: str, default: Any = None) -> Any:
        if not session or not run:
            return default
        try:
            return self.cache.get(self.key(session, run, name), default)
        except ValueError:
            return default

    def drop_run(self, session: str, run: str) -> None:
        """Forget every entry of one run (called when the session starts a new run)."""
        self.cache.evict(f"{self._check(session)}/{self._check(run)}")

    def mark_done(self, session: str, job: str) -> None:
        """Record that a job of this session finished (successfully or with a handled error)."""
        self.put(session, "jobs", job, True)

    def job_done(self, session: str | None, job: str) -> bool:
        return bool(self.get(session, "jobs", job, False))
