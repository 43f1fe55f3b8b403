"""Output + LSE from PyTorch's fused CPU flash-attention op (no statistics).

``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns the per-row
log-sum-exp next to the output, handles GQA natively (query head h uses KV head
h // (H // Hkv)) and accepts a broadcast additive mask, so ``score_bias`` travels as a
(B or 1, H, 1, Lk) view that is never expanded to Lq x Lk.

Its ``is_causal`` is aligned top-left, which equals our convention (query i at absolute position
Lk - Lq + i) only when Lq == Lk, and it cannot take a bool mask. Those cases are run in chunks of
query rows, each with an additive float mask of (chunk x visible keys) only; rows that see no key
are set to output 0 and LSE -inf afterwards (the op itself returns 0 and 0 for them). A sliding
window is run the same way, each chunk against the band of keys its window reaches (chunk x
band mask, so O(Lq x w) work). Learned sinks correct the output and LSE exactly afterwards:
``lse' = logaddexp(lse, sink)``, ``out *= exp(lse - lse')``. The op has no softcap: softcapped
problems go to the blockwise sweep.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.problem import Problem

# Elements of one chunk's additive mask (rows x keys x mask heads): ~16 MB of float32.
CHUNK_MASK_ELEMENTS = 1 << 22


def _op():
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def flash_applicable(p: Problem) -> bool:
    """Whether :func:`flash_forward` can serve this problem (CPU, and the op exists)."""
    return p.q.device.type == "cpu" and p.softcap is None and _op() is not None


def _one_call(p: Problem) -> bool:
    return p.mask is None and p.window is None and (not p.causal or p.Lq == p.Lk or p.Lq == 1)


def _chunk_rows(p: Problem, mask_heads: int) -> int:
    """Query rows per chunk so that one (rows x band) additive mask holds ~CHUNK_MASK_ELEMENTS."""
    per_row = CHUNK_MASK_ELEMENTS // (p.B * mask_heads)
    if p.window is None or not p.causal:
        return max(1, per_row // p.Lk)
    # a chunk of r rows scores a band of r + w - 1 keys: r <= w keeps the work within twice
    # the band's own (Lq x w); the largest r whose r x (r + w - 1) mask fits the budget
    w = p.window - 1
    fit = int((math.sqrt(w * w + 4 * per_row) - w) / 2)
    return max(1, min(p.Lq, fit, max(16, p.window)))


def _bias(p: Problem) -> Tensor | None:
    if p.score_bias is None:
        return None
    return p.score_bias if p.q.dtype == torch.float64 else p.score_bias.float()


def flash_forward(p: Problem) -> tuple[Tensor, Tensor]:
    """Return ``output (B, Lq, H, D)`` in q's dtype (head_scale applied) and ``lse (B, H, Lq)``."""
    op = _op()
    assert op is not None
    out = torch.empty(p.B, p.Lq, p.H, p.D, dtype=p.q.dtype, device=p.q.device)
    lse = torch.empty(p.B, p.H, p.Lq, dtype=p.stat_dtype, device=p.q.device)
    hs = None if p.head_scale is None else p.head_scale.to(p.q.dtype)[None, None, :, None]
    bias = _bias(p)
    if _one_call(p):
        is_causal = p.causal and p.Lq == p.Lk and p.Lq > 1
        mask = None if bias is None else bias.unsqueeze(2)  # (Bb, H, 1, Lk): a broadcast view
        o, l = op(p.q, p.k, p.v, 0.0, is_causal, attn_mask=mask, scale=p.scale)
        _store(out, lse, o, l, hs, None, 0, p.sinks)
        return out, lse
    mask_heads = p.H if bias is not None or (p.mask is not None and p.mask.shape[1] > 1) else 1
    rows = _chunk_rows(p, mask_heads)
    for i0 in range(0, p.Lq, rows):
        i1 = min(p.Lq, i0 + rows)
        k0, kend = p.band_start(i0), p.band_end(i1)
        vis = _visible(p, i0, i1, k0, kend)  # (Bm, Hm, n, kend - k0) bool
        add = torch.zeros(vis.shape, dtype=p.stat_dtype, device=p.q.device)
        add.masked_fill_(~vis, -math.inf)
        if bias is not None:
            add = add + bias[:, :, None, k0:kend]
        o, l = op(
            p.q[:, :, i0:i1], p.k[:, :, k0:kend], p.v[:, :, k0:kend], 0.0, False,
            attn_mask=add, scale=p.scale,
        )  # fmt: skip
        _store(out, lse, o, l, hs, vis.any(-1), i0, p.sinks)
    return out, lse


def _visible(p: Problem, i0: int, i1: int, k0: int, kend: int) -> Tensor:
    """Bool (Bm, Hm, i1 - i0, kend - k0): causal AND window AND mask for query rows [i0, i1)
    against keys [k0, kend)."""
    n, width = i1 - i0, kend - k0
    if p.mask is None:
        vis = torch.ones(1, 1, n, width, dtype=torch.bool, device=p.q.device)
    else:
        m = p.mask[..., k0:kend] if p.mask.shape[2] == 1 else p.mask[:, :, i0:i1, k0:kend]
        vis = m.expand(m.shape[0], m.shape[1], n, width).clone()
    pos = p.offset + torch.arange(i0, i1, device=p.q.device)
    if p.causal:
        d0 = max(k0, kend - n)
        tail = torch.arange(d0, kend, device=p.q.device)
        vis[..., d0 - k0 :] &= tail[None, :] <= pos[:, None]
    if p.window is not None:
        head = torch.arange(k0, min(kend, k0 + n), device=p.q.device)
        vis[..., : head.numel()] &= head[None, :] > pos[:, None] - p.window
    return vis


def _store(
    out: Tensor, lse: Tensor, o: Tensor, l: Tensor, hs: Tensor | None, valid: Tensor | None,
    i0: int, sinks: Tensor | None,
) -> None:  # fmt: skip
    """Copy a chunk's (B, H, n, D) output and (B, H, n) LSE into the result buffers; with
    ``sinks`` (H,), first let the sink join each row's softmax."""
    n = o.shape[2]
    src = o.transpose(1, 2)
    dst = out[:, i0 : i0 + n]
    if valid is not None:
        keep = valid.expand(lse.shape[0], lse.shape[1], n)
        src = src * keep.transpose(1, 2).unsqueeze(-1)
        l = torch.where(keep, l, -math.inf)
    if sinks is not None:
        l_all = torch.logaddexp(l.to(sinks.dtype), sinks[None, :, None])
        src = src * torch.exp(l - l_all).transpose(1, 2).unsqueeze(-1)
        l = l_all
    if hs is not None:
        torch.mul(src, hs, out=dst)
    else:
        dst.copy_(src)
    lse[:, :, i0 : i0 + n] = l
