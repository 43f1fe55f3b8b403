"""Figure math that interprets the kernels' attention statistics (no plotting here).

The statistics probe (:mod:`probes.statistics`) returns, per head, block-pooled attention tiles
(the mean over each ``block x block`` tile's cells) and per-key sink scores (the mean attention
a key receives from the queries that can see it). The functions here turn those into what a
reader looks at: attention *mass* per block (rows sum to 1), coarser mosaics, which cells a
causal query can see, and which keys are sinks (by the sinks analyzer's own rule,
:func:`~workbench.analyzers.sinks.sink_rules`). Used by the app's explorer and by notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probes.checks import ArgumentError, integer
from workbench.analyzers.sinks import (
    FIRST_TOKEN_SINK,
    FIRST_TOKEN_THRESHOLD,
    HIDDEN_SINK,
    HIDDEN_SINK_THRESHOLD,
    MIN_QUERIES,
    NO_SINK,
    NOT_JUDGED,
    sink_rules,
)

__all__ = [
    "FIRST_TOKEN_SINK",
    "FIRST_TOKEN_THRESHOLD",
    "HIDDEN_SINK",
    "HIDDEN_SINK_THRESHOLD",
    "MIN_QUERIES",
    "NOT_JUDGED",
    "NO_SINK",
    "WINDOW_FIRST_KEYS",
    "WINDOW_KEY_MARGIN",
    "KeyColumns",
    "block_max",
    "block_sink_rules",
    "block_visibility",
    "causal_visibility",
    "pooled_to_mass",
    "regroup_mass",
    "sink_mask",
    "sink_rules",
    "window_key_columns",
]


def pooled_to_mass(pooled: np.ndarray, n_keys: int, block: int) -> np.ndarray:
    """Kernel pooled tiles -> attention mass a query of the row block puts on each key block.

    Args:
        pooled: ``(..., nq, nk)`` mean of each ``block x block`` tile's attention weights
            (edge tiles are smaller).
        n_keys: number of key tokens ``L`` (``nk = ceil(L / block)``).
        block: tile side in tokens.

    Returns:
        ``(..., nq, nk)`` mass: the mean over the block's queries of the attention they put on
        the key block, so every row sums to 1 for a causal softmax map.
    """
    n_keys, block = _geometry(pooled, n_keys, block, "n_keys")
    nk = pooled.shape[-1]
    widths = np.array([min(block, n_keys - j * block) for j in range(nk)], dtype=np.float32)
    return pooled * widths


def regroup_mass(mass: np.ndarray, n_tokens: int, block: int, factor: int) -> np.ndarray:
    """Merge ``factor x factor`` blocks of a :func:`pooled_to_mass` map into one cell.

    Sums over merged key blocks and takes the row-size-weighted mean over merged query blocks,
    which is exactly the mass pooled at ``block * factor``.

    Args:
        mass: ``(..., n, n)`` block mass of ``n_tokens`` tokens pooled at ``block``.
        factor: blocks merged per side (``<= 1`` returns ``mass`` unchanged).

    Returns:
        ``(..., m, m)`` float32 with ``m = ceil(n / factor)``.
    """
    n_tokens, block = _geometry(mass, n_tokens, block, "n_tokens")
    if integer("factor", factor) <= 1:
        return mass
    n = mass.shape[-1]
    rows = np.array([min(block, n_tokens - i * block) for i in range(n)], dtype=np.float64)
    m = -(-n // factor)
    out = np.zeros((*mass.shape[:-2], m, m), dtype=np.float64)
    for gi in range(m):
        r0, r1 = gi * factor, min(n, (gi + 1) * factor)
        w = rows[r0:r1] / rows[r0:r1].sum()
        block_rows = np.tensordot(w, mass[..., r0:r1, :], axes=([0], [-2]))  # (..., n)
        for gj in range(m):
            out[..., gi, gj] = block_rows[..., gj * factor : (gj + 1) * factor].sum(-1)
    return out.astype(np.float32)


def _geometry(tiles: np.ndarray, n: int, block: int, name: str) -> tuple[int, int]:
    """Check that ``tiles`` (..., m) pools ``n`` tokens in blocks of ``block``: m = ceil(n/b)."""
    n = integer(name, n, minimum=1)
    block = integer("block", block, minimum=1)
    m = -(-n // block)
    if np.ndim(tiles) < 1 or np.shape(tiles)[-1] != m:
        raise ArgumentError(
            f"a map of {n} tokens pooled in blocks of {block} has {m} blocks per side, but the "
            f"given array has shape {np.shape(tiles)}"
        )
    return n, block


def causal_visibility(query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
    """``(W, Lk)`` bool: key position <= query position (what a causal LM's query can see)."""
    return np.asarray(key_positions)[None, :] <= np.asarray(query_positions)[:, None]


def block_visibility(n_blocks: int, block: int, n_tokens: int) -> np.ndarray:
    """``(n_blocks, n_blocks)`` bool: a key block is visible to a query block when its first
    token is visible to the block's last query."""
    n_blocks = integer("n_blocks", n_blocks, minimum=1)
    block = integer("block", block, minimum=1)
    n_tokens = integer("n_tokens", n_tokens, minimum=1)
    last_query = np.minimum(np.arange(1, n_blocks + 1) * block, n_tokens) - 1
    return causal_visibility(last_query, np.arange(n_blocks) * block)


def block_max(values: np.ndarray, block: int, n_blocks: int) -> np.ndarray:
    """``(n_blocks,)`` maximum of per-token ``values`` (``(L,)``) over each block (zero-padded)."""
    n_blocks = integer("n_blocks", n_blocks, minimum=1)
    block = integer("block", block, minimum=1)
    pad = n_blocks * block - len(values)
    if pad < 0:
        raise ArgumentError(
            f"{len(values)} values do not fit in n_blocks={n_blocks} blocks of {block}"
        )
    return np.pad(values, (0, pad)).reshape(n_blocks, block).max(-1)


def sink_mask(
    sink: np.ndarray,
    offset: int = 0,
    *,
    n_tokens: int | None = None,
    min_queries: int = 1,
) -> np.ndarray:
    """``(L,)`` bool: the keys :func:`~workbench.analyzers.sinks.sink_rules` marks as sinks
    (the sinks analyzer's own rule, one implementation).

    Position 0 uses Gu et al.'s first-token threshold (0.3, "When Attention Sink Emerges in
    Language Models", 2024); later positions ACT's hidden-sink threshold (0.1, Yu et al. 2024,
    "Unveiling and Harnessing Hidden Attention Sinks"). ``offset`` is the position of
    ``sink[0]``, ``n_tokens`` the prompt's length (default ``offset + L``); a key seen by fewer
    than ``min_queries`` queries is never marked (1: ACT's rule; the explorer uses
    :data:`MIN_QUERIES`).
    """
    return sink_rules(sink, offset=offset, n_tokens=n_tokens, min_queries=min_queries) > 0


def block_sink_rules(rules: np.ndarray, block: int, n_blocks: int) -> np.ndarray:
    """``(n_blocks,)`` int8: one :func:`~workbench.analyzers.sinks.sink_rules` code per block of
    ``block`` keys (``rules`` is ``(L,)``): a first-token sink if the block holds one, else a
    hidden sink if it holds one, else no sink if any of its keys was judged, else not judged."""
    n_blocks = integer("n_blocks", n_blocks, minimum=1)
    block = integer("block", block, minimum=1)
    rules = np.asarray(rules)
    pad = n_blocks * block - len(rules)
    if pad < 0:
        raise ArgumentError(
            f"{len(rules)} keys do not fit in n_blocks={n_blocks} blocks of {block}"
        )
    tiles = np.pad(rules, (0, pad), constant_values=NOT_JUDGED).reshape(n_blocks, block)
    out = np.where((tiles == NO_SINK).any(-1), NO_SINK, NOT_JUDGED)
    out = np.where((tiles == HIDDEN_SINK).any(-1), HIDDEN_SINK, out)
    return np.where((tiles == FIRST_TOKEN_SINK).any(-1), FIRST_TOKEN_SINK, out).astype(np.int8)


#: Keys an exact-rows window always shows one by one at the start (where first-token sinks are).
WINDOW_FIRST_KEYS = 4
#: Keys before the window's first query row shown one by one (the rows' local context).
WINDOW_KEY_MARGIN = 64


@dataclass(frozen=True)
class KeyColumns:
    """The key axis of the exact attention of query rows ``[start, end)`` of a long prompt:
    keys ``[0, first)`` one per column, the keys ``[first, lo)`` summed into one column (when
    ``lo > first``), then keys ``[lo, end)`` one per column. Keys from ``end`` on are after
    every row, so no row sees them. Columns stay a few pixels wide however long the prompt,
    and every row still sums to 1 over the columns.
    """

    first: int
    lo: int
    end: int

    @property
    def summed(self) -> bool:
        """Whether one column sums the keys ``[first, lo)``."""
        return self.lo > self.first

    @property
    def starts(self) -> np.ndarray:
        """``(C,)`` first key position of each column."""
        middle = [self.first] if self.summed else []
        return np.array([*range(self.first), *middle, *range(self.lo, self.end)], dtype=np.int64)

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """``(W, C)`` from ``(W, >= end)`` attention rows: the summed column holds the weight
        the row puts on all of ``[first, lo)``."""
        rows = np.asarray(rows)
        parts = [rows[:, : self.first]]
        if self.summed:
            parts.append(rows[:, self.first : self.lo].sum(-1, keepdims=True))
        parts.append(rows[:, self.lo : self.end])
        return np.concatenate(parts, axis=-1)

    def visibility(self, query_positions: np.ndarray) -> np.ndarray:
        """``(W, C)`` bool: the query sees the column's first key (causal mask)."""
        return causal_visibility(query_positions, self.starts)

    def sink_scores(self, sink: np.ndarray) -> np.ndarray:
        """``(C,)`` per-key ``sink`` (``(L,)``) with the summed column's maximum."""
        return self._reduce(np.asarray(sink), lambda part: part.max())

    def sink_rules(self, rules: np.ndarray) -> np.ndarray:
        """``(C,)`` rule codes from per-key ``rules`` (``(L,)``); the summed column takes the
        strongest rule among its keys (:func:`block_sink_rules`)."""
        width = self.lo - self.first
        return self._reduce(
            np.asarray(rules), lambda part: block_sink_rules(part, width, 1)[0]
        ).astype(np.int8)

    def labels(self, token_labels: Sequence[str]) -> list[str]:
        """``(C,)`` axis labels: the tokens' own, and ``"Σ first–(lo-1)"`` for the sum."""
        middle = [f"Σ {self.first}–{self.lo - 1}"] if self.summed else []
        return [*token_labels[: self.first], *middle, *token_labels[self.lo : self.end]]

    def _reduce(self, values: np.ndarray, pool) -> np.ndarray:
        middle = [pool(values[self.first : self.lo])] if self.summed else []
        return np.array(
            [*values[: self.first], *middle, *values[self.lo : self.end]], dtype=values.dtype
        )


def window_key_columns(
    start: int,
    end: int,
    *,
    first: int = WINDOW_FIRST_KEYS,
    margin: int = WINDOW_KEY_MARGIN,
) -> KeyColumns:
    """The :class:`KeyColumns` of query rows ``[start, end)``: the first ``first`` keys, the
    ``margin`` keys before ``start`` and the rows' own keys one by one, the keys between summed.
    A gap of a single key is shown as it is rather than summed."""
    start = integer("start", start, minimum=0)
    end = integer("end", end, minimum=start + 1)
    first = min(integer("first", first, minimum=0), end)
    lo = max(first, start - integer("margin", margin, minimum=0))
    return KeyColumns(first, lo if lo - first >= 2 else first, end)
