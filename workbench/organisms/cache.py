"""Caching a built model organism: a folder of ``save_pretrained`` weights, the tokenizer and a
marker file (``workbench_organism.json``: the build key and the training log), written to a
temporary folder and renamed into place, so an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

MARKER = "workbench_organism.json"


def cached_with_key(target: Path, key: dict[str, Any]) -> bool:
    """True when ``target`` holds an organism built with exactly ``key``."""
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text())["key"] == key
    except (OSError, json.JSONDecodeError, KeyError):
        return False


def save_atomically(
    model: nn.Module, tokenizer, target: Path, key: dict[str, Any], log: dict[str, Any]
) -> Path:
    """Write ``model`` (safetensors), ``tokenizer`` and the marker ``{"key", "log"}`` to a
    temporary sibling of ``target``, then rename it to ``target`` (replacing an old one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-organism-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"key": key, "log": log}))
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-organism-", dir=target.parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker ``{"key", "log"}`` stored in ``folder``, or None when there is none."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


__all__ = ["MARKER", "cached_with_key", "read_marker", "save_atomically"]
