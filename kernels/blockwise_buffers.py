"""Setup of the blockwise PyTorch path: block sizes, result buffers and the finishing counts.

Everything here is sized once per call, before the sweep of :mod:`kernels.blockwise_sweep`
fills it block by block: the query rows per block, the widest key band a block scores (all
``Lk`` keys without a sliding window, at most ``rows + window - 1`` with one), the result
buffers, and the per-key / per-tile cell counts that turn sums into the sink score and the
pooled means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.problem import Problem

# Elements (heads x rows x keys) per block when the caller gives no block size: 9 heads x 64
# rows x 4,096 keys (9 MiB of float32 scores). Measured on 2 CPU cores at H=9, Hkv=3, D=64
# with every statistic (min of 3, 2026-12-02): 4,096 keys 64 rows 0.27-0.30 s vs 112 rows
# 0.32 s; 8,192 keys 32 rows 1.35 s vs 48 rows 1.41 s; 1,024 keys about flat from 48 to 128
# rows. Larger blocks lose more to cache misses than they save in op count; at the 16-row
# floor a block at 32,768 keys holds 19 MiB.
TARGET_BLOCK_ELEMENTS = 9 * 64 * 4096
MIN_BLOCK_ROWS = 16
MAX_BLOCK_ROWS = 128


def max_band_width(p: Problem, rows: int) -> int:
    """Most keys one block of ``rows`` query rows scores: ``Lk``, or ``rows + window - 1``
    for a causal sliding window (the band of a block is ``[band_start, band_end)``)."""
    if p.window is None or not p.causal:
        return p.Lk
    return min(p.Lk, rows + p.window - 1)


def choose_block_rows(p: Problem, block_size: int | None) -> int:
    """Query rows per block: ``block_size`` if given, else sized to ~TARGET_BLOCK_ELEMENTS."""
    if block_size is not None:
        return max(1, min(block_size, p.Lq))
    keys = max_band_width(p, MAX_BLOCK_ROWS)
    rows = TARGET_BLOCK_ELEMENTS // max(1, p.B * p.H * keys)
    rows = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, rows))
    rows -= rows % 16
    return min(rows, p.Lq)


def key_visible_counts(p: Problem) -> Tensor:
    """Number of query rows that can see each key, without a mask: (Lk,) float.

    Row ``i`` (position ``pos = offset + i``) sees key ``j`` when ``j <= pos`` (causal) and
    ``pos < j + window``: the count of positions in ``[lo_j, hi_j]`` within the query rows.
    """
    j = torch.arange(p.Lk, device=p.q.device)
    lo = j.clamp(min=p.offset) if p.causal else torch.full_like(j, p.offset)
    hi = torch.full_like(j, p.offset + p.Lq - 1)
    if p.window is not None:
        hi = torch.minimum(hi, j + p.window - 1)
    return (hi - lo + 1).clamp(min=0).to(p.stat_dtype)


def pooled_cell_counts(
    lq: int, lk: int, b: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Cells per pooled tile, (ceil(lq/b), ceil(lk/b)): b*b except for edge tiles."""
    nr, nc = math.ceil(lq / b), math.ceil(lk / b)
    rows = torch.full((nr,), float(b), device=device, dtype=dtype)
    cols = torch.full((nc,), float(b), device=device, dtype=dtype)
    rows[-1] = lq - (nr - 1) * b
    cols[-1] = lk - (nc - 1) * b
    return rows[:, None] * cols[None, :]


def sink_mass_of(p: Problem, lse: Tensor) -> Tensor | None:
    """``exp(sink_h - lse)`` (B, H, Lq): the learned sink's share of each row, or None."""
    if p.sinks is None:
        return None
    return torch.exp(p.sinks.to(lse.dtype)[None, :, None] - lse)


def add_column_tiles(pooled: Tensor, r: Tensor, k0: int, kend: int, b: int) -> None:
    """Add column sums ``r[..., c]`` of keys ``k0 + c`` (``k0 <= key < kend``) into the
    key tiles of ``pooled[..., kend // b]`` (tile ``t`` holds keys ``[t*b, (t+1)*b)``)."""
    first_full = min(kend, -(-k0 // b) * b)  # first tile boundary at or after k0
    if k0 < first_full:
        pooled[..., k0 // b] += r[..., : first_full - k0].sum(-1)
    nf = (kend - first_full) // b
    if nf:
        c = first_full - k0
        t = first_full // b
        pooled[..., t : t + nf] += r[..., c : c + nf * b].unflatten(-1, (nf, b)).sum(-1)
    rest = first_full + nf * b
    if rest < kend:
        pooled[..., rest // b] += r[..., rest - k0 :].sum(-1)


@dataclass
class BlockOutputs:
    """Result buffers filled block by block (None when not requested)."""

    out: Tensor | None
    lse: Tensor | None
    received: Tensor | None = None
    count: Tensor | None = None
    entropy: Tensor | None = None
    argmax: Tensor | None = None
    argmax_prob: Tensor | None = None
    span_mass: Tensor | None = None
    distance: Tensor | None = None
    pooled: Tensor | None = None
    maps: Tensor | None = None


def allocate_outputs(p: Problem, want_output: bool, row_stats: bool) -> BlockOutputs:
    """Empty (or zeroed, for the accumulated ones) buffers for everything requested."""
    st, sd, dev = p.stats, p.stat_dtype, p.q.device
    bhl = (p.B, p.H, p.Lq)
    o = BlockOutputs(
        out=torch.empty(p.B, p.Lq, p.H, p.D, dtype=p.q.dtype, device=dev) if want_output else None,
        lse=torch.empty(bhl, dtype=sd, device=dev) if want_output else None,
    )
    if row_stats:
        if st.received:
            o.received = torch.zeros(p.B, p.H, p.Lk, dtype=sd, device=dev)
            if p.mask is not None:
                o.count = torch.zeros(p.mask.shape[0], p.mask.shape[1], p.Lk, dtype=sd, device=dev)
        if st.entropy:
            o.entropy = torch.empty(bhl, dtype=sd, device=dev)
        if st.argmax:
            o.argmax = torch.empty(bhl, dtype=torch.int64, device=dev)
            o.argmax_prob = torch.empty(bhl, dtype=sd, device=dev)
        if st.spans:
            o.span_mass = torch.empty(*bhl, len(st.spans), dtype=sd, device=dev)
        if st.distance:
            o.distance = torch.empty(bhl, dtype=sd, device=dev)
        if st.pooled_block is not None:
            b = st.pooled_block
            o.pooled = torch.zeros(
                p.B, p.H, math.ceil(p.Lq / b), math.ceil(p.Lk / b), dtype=sd, device=dev
            )
    if st.maps is not None:
        w0, w1 = st.maps.query_window or (0, p.Lq)
        o.maps = torch.zeros(p.B, len(st.maps.heads), w1 - w0, p.Lk, dtype=sd, device=dev)
    return o


def extra_columns(p: Problem, row_stats: bool, dtype: torch.dtype) -> Tensor | None:
    """(Lk, E) weights whose products with P give distances (column 0, rewritten per block)
    and span masses (one indicator column per span)."""
    st = p.stats
    if not row_stats or not (st.distance or st.spans):
        return None
    cols = (1 if st.distance else 0) + len(st.spans)
    w = torch.zeros(p.Lk, cols, dtype=dtype, device=p.q.device)
    c0 = 1 if st.distance else 0
    for i, (a, b) in enumerate(st.spans):
        w[a:b, c0 + i] = 1.0
    return w
