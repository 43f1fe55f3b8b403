"""The PyTorch path: exact attention output, LSE and head statistics in one blockwise sweep.

Runs on any device with plain torch ops. Query rows are processed in blocks of ``bq`` rows;
each block is scored against *all* the keys it can see (``bq x Lk`` per head, never
``Lq x Lk``), so every row's softmax is final inside its block: one sweep yields the output
(``A @ V``), the LSE and every statistic, column sums included, with no second pass over the
keys. GQA needs no copies: the ``G`` query heads of a KV group are stacked as ``G * bq`` rows
of one matmul against their shared keys. A causal block stops at its last visible key; with a
sliding window ``w`` it also starts at the first key its window reaches (a band of at most
``bq + w - 1`` keys, so the cost and memory are O(Lq x w)).

Without row statistics on the CPU, the output comes from PyTorch's fused flash op instead
(:mod:`kernels.flash_cpu`), and a maps-only request sweeps just the window's rows. With row
statistics on a float32 CPU problem the fused C kernel (:mod:`kernels.fused_cpu`) replaces the
sweep (same results, cache-sized tiles, one pass per row instead of one op per statistic).

Per block (all heads at once): ``s = q k^T * scale``, softcapped ``c * tanh(s / c)`` if asked,
``(+ bias)``; hidden cells get the dtype's most negative finite value (so that ``0 * s`` stays
0); ``a = softmax(s)`` (one fused op, which, unlike ``torch.exp``, stays fast when scores
underflow); row max (argmax) and ``lse = s[argmax] - log a[argmax]``; learned sinks join the
row softmax afterwards: ``lse' = logaddexp(lse, sink)`` and ``a *= exp(lse - lse')``;
``out = a @ v``; entropy ``lse - <a, s>`` (minus the sink's ``m_s * sink``); distances and span
masses as one small matmul ``a @ W``; column sums and pooled tiles as a matmul with a row-tile
indicator. Buffers are allocated once per call (:mod:`kernels.blockwise_buffers`) and reused
by every block of the sweep (:mod:`kernels.blockwise_sweep`).
"""

from __future__ import annotations

import torch

from kernels.blockwise_buffers import (
    choose_block_rows,
    key_visible_counts,
    pooled_cell_counts,
    sink_mass_of,
)
from kernels.blockwise_sweep import BlockSweep
from kernels.flash_cpu import flash_applicable, flash_forward
from kernels.fused_cpu import fused_applicable, fused_sweep
from kernels.problem import Problem
from kernels.requests import AttentionResult

__all__ = ["blockwise_attention", "choose_block_rows", "key_visible_counts", "pooled_cell_counts"]


def blockwise_attention(p: Problem, block_size: int | None = None) -> AttentionResult:
    """Exact attention with the statistics in ``p.stats``; see the module docstring."""
    st = p.stats
    bq = choose_block_rows(p, block_size)
    if flash_applicable(p) and not st.row_stats:
        out, lse = flash_forward(p)
        if st.maps is None:
            return AttentionResult(
                output=out, lse=lse, backend="torch", sink_mass=sink_mass_of(p, lse)
            )
        w0, w1 = st.maps.query_window or (0, p.Lq)
        o = BlockSweep(p, bq, want_output=False, row_stats=False).run(w0, w1)
    else:
        if fused_applicable(p):
            o = fused_sweep(p, block_size)
        else:
            o = BlockSweep(p, bq, want_output=True, row_stats=st.row_stats).run(0, p.Lq)
        assert o.out is not None and o.lse is not None
        out, lse = o.out, o.lse
    res = AttentionResult(
        output=out, lse=lse, backend="torch", maps=o.maps, sink_mass=sink_mass_of(p, lse)
    )
    if st.received and o.received is not None:
        res.received = o.received
        if o.count is None:
            count = key_visible_counts(p).expand(p.B, p.H, p.Lk)
        else:
            count = o.count.expand(p.B, p.H, p.Lk)
        res.sink = torch.where(count > 0, o.received / count.clamp(min=1), 0.0)
    res.entropy, res.distance, res.span_mass = o.entropy, o.distance, o.span_mass
    res.argmax, res.argmax_prob = o.argmax, o.argmax_prob
    if o.pooled is not None:
        b = st.pooled_block
        assert b is not None
        res.pooled = o.pooled / pooled_cell_counts(p.Lq, p.Lk, b, out.device, o.pooled.dtype)
    return res
