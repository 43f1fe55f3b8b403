"""Head ids: ``L{layer}H{head}``, 0-based query heads, everywhere (tables, app, reports, CLI)."""

from __future__ import annotations

import re
from typing import NamedTuple

from workbench.errors import WorkbenchError

_HEAD_RE = re.compile(r"^\s*L(\d+)H(\d+)\s*$", re.IGNORECASE)
_LAYER_ALL_RE = re.compile(r"^\s*L(\d+)H\*\s*$", re.IGNORECASE)


class Head(NamedTuple):
    """One query head of one layer."""

    layer: int
    head: int

    @property
    def id(self) -> str:
        return head_id(self.layer, self.head)


def head_id(layer: int, head: int) -> str:
    """``head_id(5, 3) == "L5H3"``."""
    return f"L{layer}H{head}"


def parse_head(text: str) -> Head:
    """``"L5H3"`` -> ``Head(5, 3)``; a clear error for anything else."""
    m = _HEAD_RE.match(text)
    if not m:
        raise WorkbenchError(f"bad head id {text!r}: write heads as L<layer>H<head>, e.g. L5H3")
    return Head(int(m.group(1)), int(m.group(2)))


def parse_heads(text: str, n_heads: int | None = None) -> list[Head]:
    """``"L5H3,L7H1"`` -> ``[Head(5, 3), Head(7, 1)]`` (commas, semicolons or spaces separate
    ids; repeats are dropped, order kept). With ``n_heads``, ``L5H*`` means every head of
    layer 5."""
    parts = [p for p in re.split(r"[,;\s]+", text or "") if p]
    if not parts:
        raise WorkbenchError("no heads given: write e.g. L5H3,L7H1")
    out: list[Head] = []
    for part in parts:
        m = _LAYER_ALL_RE.match(part)
        if m and n_heads is not None:
            heads = [Head(int(m.group(1)), h) for h in range(n_heads)]
        else:
            heads = [parse_head(part)]
        out.extend(h for h in heads if h not in out)
    return out
