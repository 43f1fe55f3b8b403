"""``attention()``: validates, picks a backend and runs it."""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.blockwise import blockwise_attention
from kernels.errors import KernelInputError
from kernels.problem import BACKENDS, Problem, build_problem
from kernels.reference import dense_attention, reference_attention
from kernels.requests import FLOAT_STATISTICS, AttentionResult, StatsRequest
from kernels.triton_support import triton_status


def available_backends(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """Backends that can run on ``device`` in this process ("reference" is always listed)."""
    dev = torch.device(device)
    names = ["torch", "reference"]
    if triton_status(dev) is None:
        names.insert(0, "triton")
    return tuple(names)


#: ``backend="auto"`` runs problems of at most this many query rows, and at most
#: :data:`DENSE_MAX_ELEMENTS` map elements, densely (:func:`kernels.reference.dense_attention`).
DENSE_MAX_ROWS = 16
DENSE_MAX_ELEMENTS = 1 << 22


def dense_is_faster(p: Problem) -> bool:
    """Whether ``auto`` takes the dense path: a few query rows (a decode step against the
    cache) on the CPU, where the blockwise sweep's per-block overhead costs more than the map."""
    return (
        not p.q.is_cuda and p.Lq <= DENSE_MAX_ROWS and p.B * p.H * p.Lq * p.Lk <= DENSE_MAX_ELEMENTS
    )


def _cast_reference(res: AttentionResult, p: Problem) -> AttentionResult:
    """A dense result (float64 reference or float32 dense), in the dtypes of the contract."""
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
    softcap: float | None = None,
    window: int | None = None,
    sinks: Tensor | None = None,
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
        softcap: attention-logit softcap ``c > 0``: scores become ``c * tanh(s / c)`` after
            scaling and before ``score_bias`` (Gemma 2: Gemma Team 2024, "Gemma 2: Improving
            Open Language Models at a Practical Size"; as transformers'
            ``gemma2.modeling_gemma2.eager_attention_forward``).
        window: sliding window ``w >= 1``: the query at absolute position ``pos`` sees key
            ``j`` only when ``pos - w < j`` (ANDed with ``causal`` and ``mask``), as
            transformers' ``masking_utils.sliding_window_overlay``. Computed as a band: each
            block of query rows scores only the keys its window reaches, so the cost and the
            memory are O(Lq x w) and no Lq x Lk mask is built.
        sinks: (H,) learned sink logits, one per query head (gpt-oss: OpenAI 2025,
            "gpt-oss-120b & gpt-oss-20b Model Card"; transformers'
            ``gpt_oss.modeling_gpt_oss.eager_attention_forward``): an extra softmax column
            with no value, ``A_ij = exp(s_ij) / (sum_j exp(s_ij) + exp(sink_h))``. The LSE
            includes it and ``AttentionResult.sink_mass`` reports ``exp(sink_h - lse)``.

    Rows that see no key at all (e.g. left padding) get output 0, LSE -inf and statistics 0;
    with ``sinks`` all their mass is on the sink (LSE = sink, sink_mass 1). See
    :mod:`kernels.requests` for the definitions of the statistics.
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
        softcap=softcap,
        window=window,
        sinks=sinks,
    )
    if backend == "auto":
        if dense_is_faster(p):
            return _cast_reference(dense_attention(p, p.stat_dtype), p)
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
