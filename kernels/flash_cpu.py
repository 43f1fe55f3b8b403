"""Output + LSE from PyTorch's fused CPU flash-attention op (no statistics).

``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` returns the per-row
log-sum-exp next to the output, handles GQA natively (query head h uses KV head
h // (H // Hkv)), and accepts a broadcast additive mask, which carries ``score_bias`` as a
(B or 1, H, 1, Lk) tensor without ever expanding it to Lq x Lk. Its ``is_causal`` is aligned
top-left, which equals our bottom-right convention only when Lq == Lk (or Lq == 1, where the
single query sees every key), so other causal shapes and any bool mask go to the blockwise path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.problem import Problem


def _op() -> object | None:
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def flash_applicable(p: Problem) -> bool:
    """Whether :func:`flash_forward` can serve this problem exactly."""
    if p.q.device.type != "cpu" or p.mask is not None or _op() is None:
        return False
    return not p.causal or p.Lq == p.Lk or p.Lq == 1


def flash_forward(p: Problem) -> tuple[Tensor, Tensor]:
    """Return ``output (B, Lq, H, D)`` in q's dtype (head_scale applied) and ``lse (B, H, Lq)``."""
    op = _op()
    assert op is not None and flash_applicable(p)
    bias = None
    if p.score_bias is not None:
        bias = p.score_bias.unsqueeze(2)  # (Bb, H, 1, Lk): a broadcast view, no Lq x Lk
        if p.q.dtype != torch.float64:
            bias = bias.float()
    is_causal = p.causal and p.Lq == p.Lk and p.Lq > 1
    o, lse = op(p.q, p.k, p.v, 0.0, is_causal, attn_mask=bias, scale=p.scale)  # type: ignore[operator]
    out = torch.empty(p.B, p.Lq, p.H, p.D, dtype=p.q.dtype, device=p.q.device)
    src = o.transpose(1, 2)
    if p.head_scale is not None:
        torch.mul(src, p.head_scale.to(o.dtype)[None, None, :, None], out=out)
    else:
        out.copy_(src)
    return out, lse.to(p.stat_dtype)
