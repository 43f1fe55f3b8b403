"""The one attention function every workbench-driven layer calls.

It is registered with transformers' ``AttentionInterface`` (and the SDPA mask builder with
``AttentionMaskInterface``) under the name :data:`ATTENTION_IMPLEMENTATION`. With no hook
attached to the calling module it *is* transformers' SDPA forward, so logits and speed are those
of plain SDPA. With hooks attached it builds an :class:`~probes.hooks.AttentionCall`, lets the
hooks prepare it, runs attention through :mod:`kernels` when maps, statistics or steering are
asked for (SDPA otherwise), and hands the per-head output to the hooks.

GQA is handled here and only here: ``key``/``value`` stay at ``Hkv`` heads and query head ``h``
reads KV head ``h // (H / Hkv)``, both in SDPA (``enable_gqa``/repeat) and in the kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from probes.errors import ProbeError
from probes.hooks import AttentionCall, hooks_of
from probes.padding import padding_active, query_padding_mask
from probes.semantics import eager_probabilities, semantics_of, workbench_mask

ATTENTION_IMPLEMENTATION = "workbench"

_BACKEND: ContextVar[str] = ContextVar("workbench_kernel_backend", default="auto")


@contextmanager
def kernel_backend(name: str) -> Iterator[str]:
    """Run the kernel calls of the attention path inside the block on backend ``name``
    (``"auto"``, ``"torch"``, ``"triton"``, ``"reference"``; see :func:`kernels.attention`),
    e.g. the Triton path on CPU tensors under ``TRITON_INTERPRET=1`` in tests. Restored on
    exit; per thread and per async context (a ``ContextVar``)."""
    from kernels.problem import BACKENDS

    if name not in BACKENDS:
        raise ProbeError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    token = _BACKEND.set(name)
    try:
        yield name
    finally:
        _BACKEND.reset(token)


def _bool_mask(attention_mask: Tensor | None) -> Tensor | None:
    """Turn transformers' 4D mask into a bool mask (True = may attend), or keep None."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def workbench_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention for one layer: ``query`` (B, H, Lq, D), ``key``/``value`` (B, Hkv, Lk, D).

    Returns ``(output, None)`` with ``output`` (B, Lq, H, D), the layout transformers expects.
    """
    semantics = semantics_of(module, kwargs)
    mask = _bool_mask(attention_mask)
    if mask is not None and semantics.window is not None:
        # transformers built the window into the mask (padding, static cache...): keep it there
        semantics = replace(semantics, window=None)
    hooks = hooks_of(module)
    if not hooks and semantics.sdpa_exact and semantics.window is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )

    causal_flag = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal_flag) and mask is None
    if padding_active():  # pad query rows of a right-padded batch see nothing (probes.padding)
        real = query_padding_mask(query.shape[0], query.shape[2], key.shape[2], query.device)
        mask = real if mask is None else mask & real
    call = AttentionCall(
        layer=int(module.layer_idx),
        module=module,
        query=query,
        key=key,
        value=value,
        mask=mask,
        causal=causal,
        scaling=float(scaling if scaling is not None else query.shape[-1] ** -0.5),
        semantics=semantics,
        backend=_BACKEND.get(),
    )
    for hook in hooks:
        hook.prepare(call)

    if call.needs_kernel:
        needs_grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (call.query, call.key, call.value)
        )
        with torch.no_grad() if needs_grad else nullcontext(), _kernel_refusals(call):
            call.result = call.run_kernels(stats=call.stats_request())
        output = differentiable_output(call) if needs_grad else call.result.output
    else:
        output, _ = sdpa_attention_forward(
            module,
            call.query,
            call.key,
            call.value,
            attention_mask,
            dropout=dropout,
            scaling=call.scaling,
            is_causal=is_causal,
            **kwargs,
        )

    for hook in hooks:
        replaced = hook.finish(call, output)
        if replaced is not None:
            output = replaced
    return output, None


@contextmanager
def _kernel_refusals(call: AttentionCall) -> Iterator[None]:
    """Turn a ``kernels.KernelInputError`` (a request the hooks built that the kernels refuse)
    into a :class:`ProbeError` naming the layer: no lower-layer error type reaches users."""
    from kernels.errors import KernelInputError

    try:
        yield
    except KernelInputError as exc:
        raise ProbeError(
            f"layer {call.layer}: the attention kernels refused what the active probes and "
            f"interventions asked for: {exc}"
        ) from exc


def differentiable_output(call: AttentionCall) -> Tensor:
    """The call's attention output (B, Lq, H, D) through autograd-friendly eager ops.

    The kernels are inference code (no autograd); when gradients must flow through a hooked
    layer (attribution, training focus directions) the output is recomputed here with the same
    softcap, bias, mask, window, sinks and head scale, materialising (B, H, Lq, Lk) scores for
    that layer.
    """
    q, k, v = call.query, call.key, call.value
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * call.scaling
    sem = call.semantics
    if sem.softcap is not None:
        scores = sem.softcap * torch.tanh(scores / sem.softcap)
    if call.score_bias is not None:
        scores = scores + call.score_bias.unsqueeze(2).to(scores.dtype)
    n_q, n_k = q.shape[2], k.shape[2]
    visible = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
    if call.causal:
        visible = torch.ones_like(visible).tril(diagonal=n_k - n_q)
    if sem.window is not None:
        visible = visible & torch.ones_like(visible).triu(diagonal=n_k - n_q - sem.window + 1)
    if call.mask is not None:
        visible = visible & call.mask
    probs = eager_probabilities(scores, visible, sem.sinks)
    out = torch.matmul(probs, v)
    if call.head_scale is not None:
        out = out * call.head_scale.view(1, -1, 1, 1).to(out.dtype)
    return out.transpose(1, 2).contiguous()


def register() -> str:
    """Register the workbench attention function and its mask builder; idempotent.

    Returns the implementation name to pass as ``attn_implementation``.
    """
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, workbench_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, workbench_mask)
    return ATTENTION_IMPLEMENTATION


def uses_workbench_attention(model: nn.Module) -> bool:
    """True when ``model`` dispatches its attention to :func:`workbench_attention`."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == ATTENTION_IMPLEMENTATION
