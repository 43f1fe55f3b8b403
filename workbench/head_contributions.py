"""What every head writes towards one output token of one prompt: direct logit attribution per
head and per source position.

Per head, the attribution analyzer's code computes it (:func:`workbench.analyzers.
logit_attribution.attribute`; Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"): the head's output at the last position through its slice of ``W_O``, through the
final norm with its scale frozen at the clean residual's value, dotted with the metric's
direction (the chosen token's unembedding row, minus the foil's when one is given). The LLM
Transparency Tool (Ferrando & Voita 2024, "Information Flow Routes") shows the same quantity
split by source token; here the split is exact: the head's last-position output is
``z = sum_j A[last, j] v_j`` (a learned sink takes mass but has no value), so the contribution of
source position ``j`` is ``A[last, j] (v_j W_O^h) . direction`` and the contributions of a head
sum to its DLA (``closure`` records the largest difference, a check on both computations).
The maps row and the values come from the capture probe (the last query row only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from probes.checks import ArgumentError
from workbench.analyzers.logit_attribution import (
    FrozenNorm,
    MetricFn,
    attribute,
    frozen_norm_map,
    head_out_weights,
    logit_diff,
)
from workbench.logit_lens import token_id
from workbench.model_parts import attn_output_norms, final_logits, final_norm

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel


@dataclass
class HeadContributions:
    """Direct logit attribution of every head to one output token at the last position.

    Attributes:
        tokens: the prompt's L token strings.
        target_id, foil_id: the token scored, and the one subtracted (None: the metric is the
            target's logit alone).
        metric: the metric on the model's real logits (target logit, or target - foil).
        dla: (n_layers, n_heads) each head's direct logit attribution (float64).
        by_position: (n_layers, n_heads, L) the same split by source position (sums to ``dla``).
        attribution_patching: (n_layers, n_heads) first-order estimate of the metric change when
            the head is zero-ablated (Nanda 2023; the attribution analyzer's estimate).
        closure: max |by_position.sum(-1) - dla| (float rounding only).
        norm_check: max |frozen-norm model - actual norm output| (see the attribution code).
    """

    tokens: list[str]
    target_id: int
    foil_id: int | None
    metric: float
    dla: Tensor
    by_position: Tensor
    attribution_patching: Tensor
    closure: float
    norm_check: float


def _metric(target: int, foil: int | None) -> MetricFn:
    if foil is not None:
        return logit_diff(target, foil)

    def logit(logits: Tensor) -> Tensor:
        return logits[target]

    return logit


class _LastPosition:
    """Forward hooks keeping the final norm's input and each attention-output norm's input at
    the last position (d,), removed on exit."""

    def __init__(self, lm: LoadedModel) -> None:
        self.norm = final_norm(lm.model)
        self.out_norms = attn_output_norms(lm.model)
        self.resid: Tensor | None = None
        self.attn_in: dict[int, Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _LastPosition:
        def keep_resid(module, args):
            self.resid = args[0][0, -1].detach()

        def keep_attn(layer: int):
            def hook(module, args):
                self.attn_in[layer] = args[0][0, -1].detach()

            return hook

        self.handles.append(self.norm.register_forward_pre_hook(keep_resid))
        for i, norm in enumerate(self.out_norms or []):
            self.handles.append(norm.register_forward_pre_hook(keep_attn(i)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()


def head_contributions(
    lm: LoadedModel,
    prompt: str | Encoded,
    *,
    chat: bool = False,
    target: int | str | None = None,
    foil: int | str | None = None,
) -> HeadContributions:
    """Per-head and per-source-position direct logit attribution to ``target`` at the last
    position of ``prompt`` (see the module docstring).

    Args:
        target: the output token (id or text: its first token); None: the model's top-1 next
            token.
        foil: optional second token; the metric is then ``logit[target] - logit[foil]``.

    Two forwards (the attribution code's forward and backward, and a capture of the last query
    row and the values of every head); raises :class:`~workbench.errors.CaptureTooLargeError`
    when those would not fit in memory.
    """
    enc = lm.encode(prompt, chat=chat)
    n = enc.n_tokens
    layout = lm.layout
    cap = lm.capture(maps=True, qkv=True, query_window=(n - 1, n))
    cap.check_prompt(n)
    cap.check_fits(n)
    with cap, _LastPosition(lm) as last:
        logits = lm.forward(enc, last_only=True)[0, -1]
    target_id = int(logits.argmax()) if target is None else token_id(lm, "target", target)
    foil_id = None if foil is None else token_id(lm, "foil", foil)
    if foil_id == target_id:
        raise ArgumentError(f"foil is the same token as target ({target_id}); pick another one")
    metric = _metric(target_id, foil_id)
    result = attribute(lm, enc.input_ids, metric)
    # the metric's direction in the final hidden space, pulled back through the frozen norm
    with torch.enable_grad():
        normed = last.norm(last.resid[None]).detach().requires_grad_(True)
        value = metric(final_logits(lm.model, normed)[0].double())
        grad = torch.autograd.grad(value, normed)[0][0]
    direction = frozen_norm_map(lm.model, last.norm, last.resid, grad)
    by_position = torch.zeros(layout.n_layers, layout.n_heads, n, dtype=torch.float64)
    for layer in range(layout.n_layers):
        record = cap.records[layer]
        weights = record.maps[0, :, 0].double()  # (H, L): the last query's row
        values = record.v[0].double()  # (H, L, D): the value each query head reads
        w_o = head_out_weights(lm, layer).double().to(values.device)  # (H, D, d)
        writes = torch.einsum("hjd,hdm->hjm", values, w_o)  # (H, L, d)
        if last.out_norms is not None:
            frozen = FrozenNorm.at(lm.model, last.out_norms[layer], last.attn_in[layer])
            writes = frozen.apply(writes)
        along = writes @ direction.to(writes.device)  # (H, L)
        by_position[layer] = (weights.to(along.device) * along).cpu()
    closure = float((by_position.sum(-1) - result.dla).abs().max())
    return HeadContributions(
        tokens=list(enc.tokens),
        target_id=target_id,
        foil_id=foil_id,
        metric=result.metric,
        dla=result.dla,
        by_position=by_position,
        attribution_patching=result.attribution_patching,
        closure=closure,
        norm_check=result.norm_check,
    )


__all__ = ["HeadContributions", "head_contributions"]
