"""Host side of the Triton path: prepares strides and buffers, launches the two kernels of
:mod:`kernels.triton_kernels` and finishes the statistics (sink division, tile means).

Imported only when the triton backend is used (it imports triton)."""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from kernels.blockwise_buffers import key_visible_counts, pooled_cell_counts, sink_mass_of
from kernels.problem import Problem
from kernels.requests import AttentionResult


def _pow2(x: int, least: int = 16) -> int:
    return max(least, 1 << max(0, (x - 1).bit_length()))


def _mask_args(p: Problem) -> tuple[Tensor, list[int]]:
    """uint8 mask view and its (b, h, m, n) strides, 0 on broadcast dimensions."""
    if p.mask is None:
        return p.q, [0, 0, 0, 0]
    m = p.mask.view(torch.uint8)
    return m, [0 if m.shape[i] == 1 else m.stride(i) for i in range(4)]


def _bias_args(p: Problem) -> tuple[Tensor, list[int]]:
    if p.score_bias is None:
        return p.q, [0, 0, 0]
    bias = p.score_bias.float()
    return bias, [0 if bias.shape[0] == 1 else bias.stride(0), bias.stride(1), bias.stride(2)]


def _blocks(p: Problem, block_size: int | None) -> tuple[int, int]:
    on_gpu = p.q.is_cuda
    bm = _pow2(block_size) if block_size else (64 if on_gpu else 16)
    bn = 64 if on_gpu else 16
    return bm, bn


def triton_attention(p: Problem, block_size: int | None = None) -> AttentionResult:
    """Forward kernel (output + LSE), then, if anything is requested, the statistics kernel."""
    from kernels.triton_kernels import attn_fwd_kernel, attn_stats_kernel

    q, k, v = p.q, p.k, p.v
    dev = q.device
    bm, bn = _blocks(p, block_size)
    bd = _pow2(p.D)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    out = torch.empty(p.B, p.Lq, p.H, p.D, dtype=q.dtype, device=dev)
    lse = torch.empty(p.B, p.H, p.Lq, dtype=torch.float32, device=dev)
    mask, ms = _mask_args(p)
    bias, bs = _bias_args(p)
    hscale = p.head_scale.float().contiguous() if p.head_scale is not None else lse
    sinks = p.sinks.float().contiguous() if p.sinks is not None else lse
    common = dict(
        H=p.H,
        G=p.group,
        Lq=p.Lq,
        Lk=p.Lk,
        D=p.D,
        offset=p.offset,
        scale=p.scale,
        softcap=p.softcap or 1.0,
        window=p.window or 1,
        CAUSAL=p.causal,
        HAS_MASK=p.mask is not None,
        HAS_BIAS=p.score_bias is not None,
        HAS_SOFTCAP=p.softcap is not None,
        HAS_WINDOW=p.window is not None,
        HAS_SINKS=p.sinks is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        PRECISION=precision,
    )
    grid = (triton.cdiv(p.Lq, bm), p.B * p.H)
    attn_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        bias,
        hscale,
        mask,
        sinks,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        *bs,
        *ms,
        HAS_HSCALE=p.head_scale is not None,
        **common,
    )
    res = AttentionResult(output=out, lse=lse, backend="triton", sink_mass=sink_mass_of(p, lse))
    st = p.stats
    if not st.any:
        return res

    f32 = dict(dtype=torch.float32, device=dev)
    bhl = (p.B, p.H, p.Lq)
    dummy = lse
    received = torch.zeros(p.B, p.H, p.Lk, **f32) if st.received else dummy
    count = torch.zeros(p.B, p.H, p.Lk, **f32) if st.received and p.mask is not None else dummy
    entropy = torch.empty(bhl, **f32) if st.entropy else dummy
    argmax = torch.empty(bhl, dtype=torch.int64, device=dev) if st.argmax else dummy
    argprob = torch.empty(bhl, **f32) if st.argmax else dummy
    dist = torch.empty(bhl, **f32) if st.distance else dummy
    n_spans = len(st.spans)
    spans = torch.empty(*bhl, max(n_spans, 1), **f32) if n_spans else dummy
    span_lo = torch.tensor([s[0] for s in st.spans] or [0], dtype=torch.int32, device=dev)
    span_hi = torch.tensor([s[1] for s in st.spans] or [0], dtype=torch.int32, device=dev)
    pb = st.pooled_block or 1
    nr, nc = math.ceil(p.Lq / pb), math.ceil(p.Lk / pb)
    pooled = torch.zeros(p.B, p.H, nr, nc, **f32) if st.pooled_block else dummy
    w0, w1 = (0, p.Lq)
    unique: list[int] = []
    if st.maps is not None:
        w0, w1 = st.maps.query_window or (0, p.Lq)
        unique = sorted(set(st.maps.heads))
    slot_of = torch.full((p.H,), -1, dtype=torch.int32, device=dev)
    for i, h in enumerate(unique):
        slot_of[h] = i
    maps = torch.zeros(p.B, len(unique), w1 - w0, p.Lk, **f32) if unique else dummy
    m_base, rows = (0, p.Lq) if st.row_stats else (w0 // bm * bm, w1 - w0 // bm * bm)
    grid = (triton.cdiv(rows, bm), p.B * p.H)
    attn_stats_kernel[grid](
        q,
        k,
        lse,
        bias,
        mask,
        sinks,
        received,
        count,
        entropy,
        argmax,
        argprob,
        dist,
        spans,
        pooled,
        maps,
        span_lo,
        span_hi,
        slot_of,
        *q.stride(),
        *k.stride(),
        *bs,
        *ms,
        S=n_spans,
        PB=pb,
        NR=nr,
        NC=nc,
        W0=w0,
        W1=w1,
        NMAP=max(len(unique), 1),
        m_base=m_base,
        DO_RECEIVED=st.received,
        DO_ENTROPY=st.entropy,
        DO_ARGMAX=st.argmax,
        DO_DIST=st.distance,
        DO_SPANS=n_spans > 0,
        DO_POOL=st.pooled_block is not None,
        DO_MAPS=bool(unique),
        BLOCK_S=_pow2(n_spans),
        TILE_M=_pow2(triton.cdiv(bm, pb) + 1),
        TILE_N=_pow2(triton.cdiv(bn, pb) + 1),
        **common,
    )
    if st.received:
        res.received = received
        cnt = count if p.mask is not None else key_visible_counts(p).float().expand_as(received)
        res.sink = torch.where(cnt > 0, received / cnt.clamp(min=1), 0.0)
    if st.entropy:
        res.entropy = entropy
    if st.argmax:
        res.argmax, res.argmax_prob = argmax, argprob
    if st.distance:
        res.distance = dist
    if n_spans:
        res.span_mass = spans
    if st.pooled_block:
        res.pooled = pooled / pooled_cell_counts(p.Lq, p.Lk, pb, dev, torch.float32)
    if st.maps is not None:
        index = torch.tensor([unique.index(h) for h in st.maps.heads], device=dev)
        res.maps = maps.index_select(1, index)
    return res
