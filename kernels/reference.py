"""Dense attention: materialises the full (B, H, Lq, Lk) maps.

In float64 (:func:`reference_attention`) it is the ground truth of the tests; in float32
(:func:`dense_attention`) it is the fast path for problems with a few query rows (decode steps:
one query against the cache), where the blockwise sweep's per-block overhead costs more than
the whole map. Never use it on long inputs: memory is quadratic in the sequence length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.problem import Problem
from kernels.requests import AttentionResult


def visibility(p: Problem) -> Tensor:
    """Bool (B or 1, H or 1, Lq, Lk): True where query row i may attend key j."""
    dev = p.q.device
    vis = torch.ones(1, 1, p.Lq, p.Lk, dtype=torch.bool, device=dev)
    pos = p.offset + torch.arange(p.Lq, device=dev)
    j = torch.arange(p.Lk, device=dev)
    if p.causal:
        vis = vis & (j[None, :] <= pos[:, None])
    if p.window is not None:
        vis = vis & (j[None, :] > pos[:, None] - p.window)
    if p.mask is not None:
        vis = vis & p.mask
    return vis


def pool_tiles(a: Tensor, b: int) -> Tensor:
    """Mean of ``a[..., Lq, Lk]`` over b x b tiles, edge tiles averaged over the cells they hold."""
    lq, lk = a.shape[-2:]
    nr, nc = math.ceil(lq / b), math.ceil(lk / b)
    padded = torch.nn.functional.pad(a, (0, nc * b - lk, 0, nr * b - lq))
    sums = padded.unflatten(-1, (nc, b)).unflatten(-3, (nr, b)).sum(dim=(-3, -1))
    rows = torch.full((nr,), float(b), dtype=a.dtype, device=a.device)
    cols = torch.full((nc,), float(b), dtype=a.dtype, device=a.device)
    rows[-1] = lq - (nr - 1) * b
    cols[-1] = lk - (nc - 1) * b
    return sums / (rows[:, None] * cols[None, :])


def reference_attention(p: Problem) -> AttentionResult:
    """Exact attention and every requested statistic, all in float64 (output too)."""
    return dense_attention(p, torch.float64, backend="reference")


def dense_attention(p: Problem, dtype: torch.dtype, backend: str = "dense") -> AttentionResult:
    """Attention and every requested statistic from the full maps, computed in ``dtype``
    (output and statistics in ``dtype``: cast them for the contract). GQA without copies:
    the ``group`` query heads of a KV head are stacked as rows of one product."""
    B, H, Hkv, Lq, Lk, D = p.B, p.H, p.Hkv, p.Lq, p.Lk, p.D
    q = p.q.to(dtype).reshape(B, Hkv, p.group * Lq, D)
    k, v = p.k.to(dtype), p.v.to(dtype)
    s = (q @ k.transpose(-1, -2)).view(B, H, Lq, Lk) * p.scale
    if p.softcap is not None:
        s = p.softcap * torch.tanh(s / p.softcap)
    if p.score_bias is not None:
        s = s + p.score_bias.to(dtype)[:, :, None, :]
    vis = visibility(p)
    s = s.masked_fill(~vis, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    sink = None
    if p.sinks is not None:  # the sink column joins the softmax denominator
        sink = p.sinks.to(dtype)[None, :, None].expand_as(lse)
        lse = torch.logaddexp(lse, sink)
    valid = torch.isfinite(lse)
    a = torch.where(valid[..., None], torch.exp(s - lse[..., None]), 0.0)
    out = (a.view(B, Hkv, p.group * Lq, Lk) @ v).view(B, H, Lq, D)
    if p.head_scale is not None:
        out = out * p.head_scale.to(dtype)[None, :, None, None]
    res = AttentionResult(output=out.transpose(1, 2).contiguous(), lse=lse, backend=backend)
    if sink is not None:
        res.sink_mass = torch.exp(sink - lse)
    st = p.stats
    if st.received:
        res.received = a.sum(dim=-2)
        count = vis.expand(p.B, p.H, p.Lq, p.Lk).sum(dim=-2).to(dtype)
        res.sink = torch.where(count > 0, res.received / count.clamp(min=1), 0.0)
    if st.entropy:
        res.entropy = -torch.special.xlogy(a, a).sum(dim=-1)
        if res.sink_mass is not None:
            res.entropy = res.entropy - torch.special.xlogy(res.sink_mass, res.sink_mass)
    if st.argmax:
        res.argmax_prob, res.argmax = a.max(dim=-1)
        res.argmax = a.argmax(dim=-1)
    if st.spans:
        res.span_mass = torch.stack([a[..., s0:s1].sum(dim=-1) for s0, s1 in st.spans], dim=-1)
    if st.distance:
        pos = p.offset + torch.arange(p.Lq, device=a.device, dtype=dtype)
        dist = pos[:, None] - torch.arange(p.Lk, device=a.device, dtype=dtype)[None, :]
        res.distance = (a * dist).sum(dim=-1)
    if st.pooled_block is not None:
        res.pooled = pool_tiles(a, st.pooled_block)
    if st.maps is not None:
        w0, w1 = st.maps.query_window or (0, p.Lq)
        res.maps = a[:, list(st.maps.heads), w0:w1]
    return res
