"""Triton kernels: a flash-style forward (output + LSE) and a statistics sweep that uses the LSE.

Importing this module imports triton; :mod:`kernels.triton_backend` does so lazily. On CPU
tensors they run only in triton's interpreter (``TRITON_INTERPRET=1`` set before triton is first
imported): slow, for correctness tests at small sizes.

Both kernels use one program per (block of ``BLOCK_M`` query rows, batch x query head). The
query head ``h`` reads KV head ``h // G`` directly (GQA without copies); a causal block stops at
its last visible key and, with a sliding window ``w``, starts at the key block holding the first
key its window reaches (the band), so the work is O(Lq x w). Scores are ``q.k * scale``,
softcapped to ``c * tanh(s / c)`` if asked (Gemma 2), ``+ bias[h, j]`` (PASTA's per-head,
per-key ``log alpha``); hidden cells (causal, window, mask, out of range) are ``-inf``. A learned
per-head sink logit (gpt-oss) starts the forward's online softmax (``m = sink, l = 1``, no
value), so the LSE includes it; the statistics sweep adds its ``-m log m`` to the entropy.
See :mod:`kernels.requests` for the definitions.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh in fp32 from exp (no libdevice under the interpreter): an odd Taylor polynomial
    below |x| = 0.1 (error < 1e-10), ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)`` above."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    t = tl.where(ax < 0.1, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _band_start(first, offset, window, HAS_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr):
    """First key block (a multiple of BLOCK_N) that rows from ``first`` on can see."""
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(offset + first - window + 1, 0) // BLOCK_N * BLOCK_N
    return lo


@triton.jit
def _query_block(
    Q, first, H, G, Lq, D, offset, sqb, sqh, sqm, sqd,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The program's (batch, query head) from program axis 1, its KV head, its query rows
    ``first .. first + BLOCK_M`` (offsets, in-range flags, absolute positions) and their
    queries (BLOCK_M, BLOCK_D): the prologue both kernels share."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = first + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Lq
    d_ok = offs_d < D
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    return b, h, h // G, offs_m, offs_d, row_ok, d_ok, offset + offs_m, q


# fmt: off
@triton.jit
def _score_tile(
    q, K, Bias, Mask, b, h, kvh, offs_m, offs_n, offs_d, d_ok, row_ok, col_ok, pos,
    scale, softcap, window, skb, skh, skn, skd, sbb, sbh, sbn, smb, smh, smm, smn,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
):
    # fmt: on
    """Scores of one (query block, key block) tile, shared by both kernels.

    Returns ``(s, vis)``: ``s = cap(q.k * scale) + bias[h, j]`` with ``-inf`` on hidden cells,
    ``cap(x) = softcap * tanh(x / softcap)`` if HAS_SOFTCAP, and the visibility ``vis`` (row
    and column in range, causal, ``pos - window < j``, mask); both (BLOCK_M, BLOCK_N).
    """
    kt = tl.load(
        K + b * skb + kvh * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
        mask=d_ok[:, None] & col_ok[None, :],
        other=0.0,
    )
    s = tl.dot(q, kt, input_precision=PRECISION) * scale
    if HAS_SOFTCAP:
        s = softcap * _tanh(s / softcap)
    if HAS_BIAS:
        bias = tl.load(Bias + b * sbb + h * sbh + offs_n * sbn, mask=col_ok, other=0.0)
        s += bias[None, :]
    vis = row_ok[:, None] & col_ok[None, :]
    if CAUSAL:
        vis = vis & (offs_n[None, :] <= pos[:, None])
    if HAS_WINDOW:
        vis = vis & (offs_n[None, :] > pos[:, None] - window)
    if HAS_MASK:
        mk = tl.load(
            Mask + b * smb + h * smh + offs_m[:, None] * smm + offs_n[None, :] * smn,
            mask=vis,
            other=0,
        )
        vis = vis & (mk != 0)
    return tl.where(vis, s, float("-inf")), vis


# fmt: off
@triton.jit
def attn_fwd_kernel(
    Q, K, V, Out, Lse, Bias, HeadScale, Mask, Sinks,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sob, som, soh, sod,
    sbb, sbh, sbn,
    smb, smh, smm, smn,
    H, G, Lq, Lk, D, offset, scale, softcap, window,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
    HAS_HSCALE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # fmt: on
    """Online-softmax forward. Out (B, Lq, H, D) via strides; Lse (B, H, Lq) contiguous fp32.

    With HAS_SINKS the running max and sum start from the head's sink logit (``m = sink``,
    ``l = exp(sink - m) = 1``) and it adds nothing to the accumulator."""
    pid_m = tl.program_id(0)
    b, h, kvh, offs_m, offs_d, row_ok, d_ok, pos, q = _query_block(
        Q, pid_m * BLOCK_M, H, G, Lq, D, offset, sqb, sqh, sqm, sqd, BLOCK_M, BLOCK_D
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_SINKS:
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(Sinks + h).to(tl.float32)
        l_i = l_i + 1.0
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:  # noqa: SIM108 - constexpr branch, kept explicit for triton
        hi = tl.minimum(Lk, offset + (pid_m + 1) * BLOCK_M)
    else:
        hi = Lk
    lo = _band_start(pid_m * BLOCK_M, offset, window, HAS_WINDOW, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        s, _vis = _score_tile(
            q, K, Bias, Mask, b, h, kvh, offs_m, offs_n, offs_d, d_ok, row_ok, col_ok, pos,
            scale, softcap, window, skb, skh, skn, skd, sbb, sbh, sbn, smb, smh, smm, smn,
            CAUSAL, HAS_MASK, HAS_BIAS, HAS_SOFTCAP, HAS_WINDOW, PRECISION,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vv = tl.load(
            V + b * svb + kvh * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
            mask=col_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PRECISION)
        m_i = m_new
    valid = l_i > 0
    l_safe = tl.where(valid, l_i, 1.0)
    w = tl.where(valid, 1.0 / l_safe, 0.0)
    if HAS_HSCALE:
        w = w * tl.load(HeadScale + h).to(tl.float32)
    out = acc * w[:, None]
    tl.store(
        Out + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
        out.to(Out.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    lse = tl.where(valid, m_i + tl.log(l_safe), float("-inf"))
    tl.store(Lse + (b * H + h) * Lq + offs_m, lse, mask=row_ok)


# fmt: off
@triton.jit
def attn_stats_kernel(
    Q, K, Lse, Bias, Mask, Sinks,
    Received, Count, Entropy, Argmax, ArgProb, Dist, SpanMass, Pooled, Maps,
    SpanStart, SpanEnd, MapSlot,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    sbb, sbh, sbn,
    smb, smh, smm, smn,
    H, G, Lq, Lk, D, offset, scale, softcap, window,
    S, PB, NR, NC, W0, W1, NMAP, m_base,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SINKS: tl.constexpr,
    DO_RECEIVED: tl.constexpr, DO_ENTROPY: tl.constexpr, DO_ARGMAX: tl.constexpr,
    DO_DIST: tl.constexpr, DO_SPANS: tl.constexpr, DO_POOL: tl.constexpr,
    DO_MAPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr, TILE_M: tl.constexpr, TILE_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # fmt: on
    """Second sweep: a = exp(s - lse), accumulated into the requested statistics.

    Row outputs are contiguous (B, H, Lq[, S]); Received/Count (B, H, Lk) and Pooled
    (B, H, NR, NC) are accumulated with atomics (Pooled holds tile sums, not yet means);
    Maps is (B, NMAP, W1 - W0, Lk) with MapSlot[h] = slot of head h or -1. The LSE includes
    the sink, so ``a`` is already the probability the model uses; the sink's own entropy term
    ``-m log m`` (``m = exp(sink - lse)``) is added at the end.
    """
    pid_m = tl.program_id(0)
    first = m_base + pid_m * BLOCK_M
    b, h, kvh, offs_m, offs_d, row_ok, d_ok, pos, q = _query_block(
        Q, first, H, G, Lq, D, offset, sqb, sqh, sqm, sqd, BLOCK_M, BLOCK_D
    )
    bh = b * H + h
    lse = tl.load(Lse + bh * Lq + offs_m, mask=row_ok, other=float("-inf"))
    lse_safe = tl.where(lse == float("-inf"), 0.0, lse)
    ent = tl.zeros([BLOCK_M], tl.float32)
    dist = tl.zeros([BLOCK_M], tl.float32)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_M], tl.int32)
    offs_s = tl.arange(0, BLOCK_S)
    span_acc = tl.zeros([BLOCK_M, BLOCK_S], tl.float32)
    if DO_SPANS:
        sp_lo = tl.load(SpanStart + offs_s, mask=offs_s < S, other=0)
        sp_hi = tl.load(SpanEnd + offs_s, mask=offs_s < S, other=0)
    slot = -1
    if DO_MAPS:
        slot = tl.load(MapSlot + h)
    t0 = first // PB
    ar_tm = tl.arange(0, TILE_M)
    ar_tn = tl.arange(0, TILE_N)
    if CAUSAL:  # noqa: SIM108 - constexpr branch, kept explicit for triton
        hi = tl.minimum(Lk, offset + first + BLOCK_M)
    else:
        hi = Lk
    lo = _band_start(first, offset, window, HAS_WINDOW, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        s, vis = _score_tile(
            q, K, Bias, Mask, b, h, kvh, offs_m, offs_n, offs_d, d_ok, row_ok, col_ok, pos,
            scale, softcap, window, skb, skh, skn, skd, sbb, sbh, sbn, smb, smh, smm, smn,
            CAUSAL, HAS_MASK, HAS_BIAS, HAS_SOFTCAP, HAS_WINDOW, PRECISION,
        )  # fmt: skip
        logp = s - lse_safe[:, None]
        p = tl.exp(logp)  # exactly 0 on hidden cells
        if DO_ENTROPY:
            ent -= tl.sum(p * tl.where(vis, logp, 0.0), 1)
        if DO_ARGMAX:
            bmax = tl.max(s, 1)
            cand = tl.where(s == bmax[:, None], offs_n[None, :], 2147483647)
            bidx = tl.min(cand, 1)
            upd = bmax > best
            best = tl.where(upd, bmax, best)
            best_idx = tl.where(upd, bidx, best_idx)
        if DO_DIST:
            dd = (pos[:, None] - offs_n[None, :]).to(tl.float32)
            dist += tl.sum(p * dd, 1)
        if DO_SPANS:
            ind = (offs_n[:, None] >= sp_lo[None, :]) & (offs_n[:, None] < sp_hi[None, :])
            span_acc += tl.dot(p, ind.to(tl.float32), input_precision="ieee")
        if DO_RECEIVED:
            tl.atomic_add(Received + bh * Lk + offs_n, tl.sum(p, 0), mask=col_ok)
            if HAS_MASK:
                tl.atomic_add(
                    Count + bh * Lk + offs_n, tl.sum(vis.to(tl.float32), 0), mask=col_ok
                )
        if DO_POOL:
            c0 = start_n // PB
            r_ind = ((offs_m // PB - t0)[:, None] == ar_tm[None, :]) & row_ok[:, None]
            c_ind = ((offs_n // PB - c0)[:, None] == ar_tn[None, :]) & col_ok[:, None]
            cols = tl.dot(p, c_ind.to(tl.float32), input_precision="ieee")  # (M, TILE_N)
            tiles = tl.dot(
                tl.trans(r_ind.to(tl.float32)), cols, input_precision="ieee"
            )  # (TILE_M, TILE_N)
            tr = t0 + ar_tm
            tc = c0 + ar_tn
            tl.atomic_add(
                Pooled + (bh * NR + tr[:, None]) * NC + tc[None, :],
                tiles,
                mask=(tr < NR)[:, None] & (tc < NC)[None, :],
            )
        if DO_MAPS:  # noqa: SIM102 - constexpr test outside, runtime test inside
            if slot >= 0:
                in_w = row_ok & (offs_m >= W0) & (offs_m < W1)
                dst = Maps + ((b * NMAP + slot) * (W1 - W0) + (offs_m - W0)[:, None]) * Lk
                tl.store(dst + offs_n[None, :], p, mask=in_w[:, None] & col_ok[None, :])
    row_out = bh * Lq + offs_m
    if DO_ENTROPY:
        if HAS_SINKS:
            log_m = tl.load(Sinks + h).to(tl.float32) - lse_safe
            ent -= tl.exp(log_m) * log_m
        tl.store(Entropy + row_out, ent, mask=row_ok)
    if DO_ARGMAX:
        found = best > float("-inf")
        prob = tl.where(found, tl.exp(best - lse_safe), 0.0)
        tl.store(Argmax + row_out, tl.where(found, best_idx, 0).to(tl.int64), mask=row_ok)
        tl.store(ArgProb + row_out, prob, mask=row_ok)
    if DO_DIST:
        tl.store(Dist + row_out, dist, mask=row_ok)
    if DO_SPANS:
        tl.store(
            SpanMass + row_out[:, None] * S + offs_s[None, :],
            span_acc,
            mask=row_ok[:, None] & (offs_s < S)[None, :],
        )
