"""Permalinks: a view of the app (the prompt that was run, the selected head, the open tab, the
picked analyzer and the analyzer results of the session) saved on the server under a short
content hash, so that ``?view=<token>`` reproduces it after a reload or in another browser.

The token is the first 16 hex digits of the SHA-256 of the view's canonical JSON: the same view
always gets the same link, and a changed view a new one. Views live in the app's disk cache
(:class:`~app.state.SessionStore`) for :data:`VIEW_EXPIRE_S`; finished analyzer results are
part of the view, so they survive a reload without being computed again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from app.state import SessionStore

#: How long a saved view stays on the server (seconds): 30 days.
VIEW_EXPIRE_S = 30 * 24 * 3600
#: Version of the saved view's layout (a reader refuses other versions).
VIEW_VERSION = 1
_TOKEN = re.compile(r"^[0-9a-f]{16}$")


def view_token(view: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``view`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_view(store: SessionStore, view: Mapping[str, Any]) -> str:
    """Store ``view`` (JSON-able) under its token; returns the token."""
    view = {**view, "version": VIEW_VERSION}
    token = view_token(view)
    store.cache.set(f"views/{token}", view, expire=VIEW_EXPIRE_S)
    return token


def token_of(search: str | None) -> str | None:
    """The view token of a URL query string (``"?view=0123abcd4567ef89"``), or None when it
    has none; a malformed token is None too (never a cache lookup with user text)."""
    values = parse_qs((search or "").lstrip("?")).get("view") or []
    token = values[0] if values else None
    return token if token and _TOKEN.match(token) else None


def load_view(store: SessionStore, token: str | None) -> dict[str, Any] | None:
    """The view saved under ``token``, or None (unknown, expired, another version)."""
    if not token or not _TOKEN.match(token):
        return None
    view = store.cache.get(f"views/{token}")
    if not isinstance(view, dict) or view.get("version") != VIEW_VERSION:
        return None
    return view
