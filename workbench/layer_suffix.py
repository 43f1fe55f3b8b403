"""Running a suffix of the decoder blocks from a cached residual stream.

An edit of layer ``l`` (an ablated head, a trained block) cannot change anything below ``l``,
so the residual stream entering block ``l`` can be computed once and fed to blocks ``l..``
only. :func:`decoder_hidden` runs the decoder from any block, :func:`residual_entering` computes
the stream entering a block, and :class:`SuffixRunner` does both for one prompt batch with a
self-check against the full forward (the shortcut is exact for rotary models, Gemma's scaled
embeddings included: the scale lives in the embedding module, so ``inputs_embeds`` is not scaled
again; models with learned absolute positions add them again to ``inputs_embeds``, and the check
catches that). Logits are the model's own: the unembedding, then any logit scale or final
softcap the architecture table names (:func:`workbench.model_parts.final_logits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from workbench.model_parts import (
    block_output,
    decoder_blocks,
    decoder_of,
    final_logits,
    only_blocks,
)

if TYPE_CHECKING:
    from torch import nn

    from workbench.lm import LoadedModel

SUFFIX_TOLERANCE = 1e-3  # max |log-prob| difference accepted between shortcut and full forward


def decoder_hidden(
    model: nn.Module,
    *,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    attention_mask: Tensor | None = None,
    start: int = 0,
) -> Tensor:
    """``last_hidden_state`` (B, L, d_model) of the decoder stack (final norm applied).

    ``start == 0``: a plain decoder pass on ``input_ids`` (or ``inputs_embeds``). ``start > 0``:
    ``inputs_embeds`` is the residual stream entering block ``start`` and only blocks
    ``start..`` run. Runs under the caller's grad mode (training uses it with autograd).
    """
    decoder = decoder_of(model)
    inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
    if start <= 0:
        out = decoder(attention_mask=attention_mask, use_cache=False, **inputs)
        return out.last_hidden_state
    with only_blocks(model, start):
        out = decoder(attention_mask=attention_mask, use_cache=False, **inputs)
    return out.last_hidden_state


@torch.no_grad()
def residual_entering(
    model: nn.Module, start: int, input_ids: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """The residual stream (B, L, d_model) entering block ``start`` (> 0), from running only
    blocks ``0..start-1`` of the decoder on ``input_ids`` (B, L)."""
    grabbed: list[Tensor] = []
    handle = decoder_blocks(model)[start - 1].register_forward_hook(
        lambda m, a, out: grabbed.append(block_output(out).detach())
    )
    try:
        with only_blocks(model, 0, start):
            decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return grabbed[-1]


class SuffixRunner:
    """Forward passes over one left-padded prompt batch, run from a chosen layer upward.

    The base pass caches the residual stream entering every decoder layer; ablating a head of
    layer l cannot change anything below l, so :meth:`run` feeds the cached stream of layer l
    to layers l.. only. A self-check against the model's full forward decides whether the
    shortcut is exact for this architecture (``self.suffix_ok``); otherwise :meth:`run` does
    full forwards. Returns last-position ``(log_probs (N, V), final hidden (N, d))``.
    """

    def __init__(self, lm: LoadedModel, ids: Tensor, mask: Tensor) -> None:
        self.lm = lm
        self.ids = ids.to(lm.device)
        self.mask = mask.to(lm.device)
        self.layer_list = decoder_blocks(lm.model)
        self.inputs: dict[int, Tensor] = {}
        handles = [
            layer.register_forward_pre_hook(self._grab(i), with_kwargs=True)
            for i, layer in enumerate(self.layer_list)
        ]
        try:
            logp, hidden = self._decoder_pass(0, input_ids=self.ids)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            full = lm.model(
                input_ids=self.ids, attention_mask=self.mask, use_cache=False, logits_to_keep=1
            ).logits[:, -1]
        self.head_ok = bool(
            torch.allclose(torch.log_softmax(full.double(), -1), logp, atol=SUFFIX_TOLERANCE)
        )
        self.base_logp, self.base_hidden = logp, hidden
        self.suffix_ok = False
        if self.head_ok and len(self.inputs) == len(self.layer_list) and len(self.layer_list) > 1:
            mid = len(self.layer_list) // 2
            logp_mid, _ = self.run(mid, _trust=True)
            self.suffix_ok = bool(torch.allclose(logp_mid, logp, atol=SUFFIX_TOLERANCE))
        if not self.head_ok:
            self.base_logp, self.base_hidden = self._full_pass()

    def _grab(self, index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, Tensor):
                self.inputs[index] = hidden.detach()

        return hook

    @torch.no_grad()
    def _decoder_pass(self, start: int, **inputs: Tensor) -> tuple[Tensor, Tensor]:
        hidden = decoder_hidden(self.lm.model, attention_mask=self.mask, start=start, **inputs)
        hidden = hidden[:, -1]
        logp = torch.log_softmax(final_logits(self.lm.model, hidden).double(), -1)
        return logp, hidden.double()

    @torch.no_grad()
    def _full_pass(self) -> tuple[Tensor, Tensor]:
        out = self.lm.model(
            input_ids=self.ids,
            attention_mask=self.mask,
            use_cache=False,
            output_hidden_states=True,
        )
        logp = torch.log_softmax(out.logits[:, -1].double(), -1)
        return logp, out.hidden_states[-1][:, -1].double()

    def run(self, start_layer: int, *, _trust: bool = False) -> tuple[Tensor, Tensor]:
        """Log-probs and final hidden state at the last position, recomputing layers
        ``start_layer``.. from the cached stream (full forward when the shortcut is not exact)."""
        if not self.head_ok:
            return self._full_pass()
        if start_layer <= 0 or not (self.suffix_ok or _trust):
            return self._decoder_pass(0, input_ids=self.ids)
        return self._decoder_pass(start_layer, inputs_embeds=self.inputs[start_layer])


__all__ = ["SUFFIX_TOLERANCE", "SuffixRunner", "decoder_hidden", "residual_entering"]
