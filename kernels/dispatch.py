"""``attention()``: validates, picks a backend and runs it."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.blockwise import blockwise_attention
from kernels.errors import KernelInputError
from kernels.problem import BACKENDS, Problem, build_problem
from kernels.reference import reference_attention
from kernels.requests import FLOAT_STATISTICS, AttentionResult, StatsRequest
from kernels.triton_support import triton_status


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Backends that can run on ``device`` in this process ("reference" is always listed)."""
    dev = torch.device(device)
    names = ["torch", "reference"]
    if triton_status(dev) is None:
        names.insert(0, "triton")
    return tuple(names)


def _cast_reference(res: AttentionResult, p: Problem) -> AttentionResult:
    """The float64 reference, returned in the dtypes of the contract."""
    sd = p.stat_dtype
    for name in ("lse", *FLOAT_STATISTICS):
        t = getattr(res, name)
        if t is not None:
            setattr(res, name, t.to(sd))
    res.output = res.output.to(p.q.dtype)
    return res


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    mask: Tensor | None = None,
    score_bias: Tensor | None = None,
    head_scale: Tensor | None = None,
    stats: StatsRequest | None = None,
    backend: str = "auto",
    block_size: int | None = None,
) -> AttentionResult:
    """Exact attention output, per-row LSE and the requested head statistics.

    Args:
        q: (B, H, Lq, D) post-RoPE queries.
        k, v: (B, Hkv, Lk, D); H % Hkv == 0, query head h uses KV head h // (H // Hkv) (GQA).
        scale: score scale, default D ** -0.5.
        causal: query row i sits at absolute position Lk - Lq + i and sees keys j <= that
            position (Lq < Lk is a decode step against a KV cache).
        mask: bool, broadcastable to (B, 1 or H, Lq, Lk), True = may attend; ANDed with
            ``causal``.
        score_bias: (B or 1, H, Lk) added to the scores after scaling: a per-head, per-key
            bias, e.g. PASTA's ``log alpha`` on the keys outside the emphasised span
            (Zhang et al. 2024, "Tell Your Model Where to Attend"). Finite; values below -1e30
            are clamped to -1e30.
        head_scale: (H,) multiplier of each head's output (ablation / amplification); the
            statistics and LSE describe the unscaled probabilities.
        stats: what else to compute, see :class:`StatsRequest`.
        backend: "auto" (triton for CUDA tensors when triton imports, else torch), "torch"
            (blockwise, any device), "triton", or "reference" (float64 eager, tests only).
        block_size: query rows per block (a tuning hint).

    Rows that see no key at all (e.g. left padding) get output 0, LSE -inf and statistics 0.
    """
    if backend not in BACKENDS:
        raise KernelInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise KernelInputError(f"block_size must be an int >= 1 or None, got {block_size!r}")
    p = build_problem(
        q,
        k,
        v,
        scale=scale,
        causal=causal,
        mask=mask,
        score_bias=score_bias,
        head_scale=head_scale,
        stats=stats,
    )
    if backend == "auto":
        backend = "triton" if p.q.is_cuda and triton_status(p.q.device) is None else "torch"
    if backend == "reference":
        return _cast_reference(reference_attention(p), p)
    if backend == "torch":
        return blockwise_attention(p, block_size)
    problem = triton_status(p.q.device)
    if problem is not None:
        raise KernelInputError(problem)
    if p.q.dtype == torch.float64:
        raise KernelInputError("the triton backend does not support float64; use 'torch'")
    from kernels.triton_backend import triton_attention

    return triton_attention(p, block_size)
