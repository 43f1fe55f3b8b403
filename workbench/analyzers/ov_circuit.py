"""Full OV circuits of attention heads: what a head writes to the logits when it attends to one
token, read from the weights through the model's own modules (the OV-circuit analyzers
:mod:`~workbench.analyzers.copy_suppression` and :mod:`~workbench.analyzers.successor`).

The full OV circuit of head ``h`` of layer ``l`` (Elhage et al. 2021, "A Mathematical Framework
for Transformer Circuits") maps a source token ``s`` to logits over target tokens ``t``::

    OV[s, t] = W_U[t] . g_f * (W_O^h  W_V^{g(h)}  norm_l(W_EE[s]))

* ``W_EE`` is the *effective embedding* (:func:`effective_embeddings`): the token embedding
  passed through the first block, which in GPT-2 is what later heads actually read (McDougall
  et al. 2023, "Copy Suppression", arXiv:2310.04625, reference
  ``get_effective_embedding = model.blocks[0](W_E[:, None, :])``; Gould et al. 2023,
  "Successor Heads", arXiv:2312.09230, ``MLP0(W_E)``).
* ``norm_l`` is layer ``l``'s input norm and ``W_V^{g(h)}`` the value projection of the KV
  group of query head ``h`` (GQA: ``g(h) = h // (H / Hkv)``, several query heads share it). Both
  are applied by the model itself: :func:`head_values` feeds the residual rows to block ``l``
  and reads the value tensor the registered attention path receives, so the norm's formula,
  fused projections (Phi-3) and value biases (Qwen 2) are the model's own, nothing re-probed.
  A head that attends fully to one token outputs exactly that token's value vector.
* ``W_O^h`` is the head's slice of the output projection (:func:`head_out_weights`), then the
  attention-output norm where the architecture has one (Gemma 2/3, OLMo 2) and the final norm,
  each as its weight (and centring, for LayerNorm rows) without its per-position scale, then
  the unembedding's weight ``W_U`` (:func:`readout`). The reference applies ``ln_final`` to
  the head output alone, which only rescales each source row by a positive number; dropping
  that scale changes no rank within a row, so the scores (ranks) are those of the reference.
  Biases of the output projection and the unembedding are left out, as TransformerLens's
  ``W_V @ W_O`` circuits leave them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from probes import AttentionCall, HookSession
from workbench.analyzers.logit_attribution import FrozenNorm, head_out_weights
from workbench.interventions import ZeroAblation
from workbench.layer_suffix import residual_entering
from workbench.model_parts import (
    attn_output_norms,
    decoder_blocks,
    decoder_of,
    final_norm,
    input_device,
    input_embedding,
    only_blocks,
    require_no_output_gate,
    unembedding,
)

if TYPE_CHECKING:
    from torch import nn

    from workbench.lm import LoadedModel

#: Effective embeddings (:func:`effective_embeddings`): ``"block0"`` the first block run on the
#: token alone (attention to itself, then MLP0; the copy-suppression reference), ``"mlp0"`` the
#: same with every layer-0 head zero-ablated (``W_E + MLP0(W_E)``, the successor-heads paper),
#: ``"raw"`` the token embedding itself.
EMBEDDINGS = ("block0", "mlp0", "raw")
BATCH = 2048  # tokens per forward when computing effective embeddings or values


@torch.no_grad()
def effective_embeddings(lm: LoadedModel, token_ids: Sequence[int], kind: str = "block0") -> Tensor:
    """The effective embedding of each token: (n, d_model) in the model's dtype, on its device.

    ``kind`` (one of :data:`EMBEDDINGS`): ``"block0"`` is the residual stream after block 0 when
    the token is the whole sequence (McDougall et al.'s ``model.blocks[0](W_E[:, None, :])``);
    ``"mlp0"`` the same with all layer-0 heads zero-ablated, i.e. ``W_E + MLP0(norm(W_E))``
    (Gould et al.'s ``MLP0(W_E)``, with the residual that carries it); ``"raw"`` the output of
    the input embedding (Gemma's embedding scale included: it lives in the embedding module).
    """
    model = lm.model
    ids = torch.as_tensor(list(token_ids), dtype=torch.long).reshape(-1, 1)
    ids = ids.to(input_device(model))
    if kind == "raw":
        return input_embedding(model)(ids)[:, 0]
    chunks = []
    for first in range(0, ids.shape[0], BATCH):
        part = ids[first : first + BATCH]
        if kind == "mlp0":
            heads = [(0, h) for h in range(lm.info.n_heads)]
            with ZeroAblation(lm, heads):
                chunks.append(residual_entering(model, 1, part)[:, 0])
        else:
            chunks.append(residual_entering(model, 1, part)[:, 0])
    return torch.cat(chunks)


class _Values(HookSession):
    """Records the value tensor (B, Hkv, Lk, D) that one layer hands the attention path."""

    def __init__(self, lm: LoadedModel, layer: int) -> None:
        self.module = lm.layout.attention_modules[layer]
        self.layer = layer
        self.value: Tensor | None = None

    def __repr__(self) -> str:
        return f"OV-circuit value reader (layer {self.layer})"

    def watched_modules(self) -> dict[int, nn.Module]:
        return {self.layer: self.module}

    def prepare(self, call: AttentionCall) -> None:
        self.value = call.value.detach()
        self.fired.add(call.layer)


@torch.no_grad()
def head_values(lm: LoadedModel, layer: int, resid: Tensor) -> Tensor:
    """Each query head's value vector for tokens whose residual stream entering block ``layer``
    is ``resid`` (n, d_model): (n, H, D), ``v = W_V^{g(h)} norm_l(resid)`` (+ value bias), the
    KV group's value repeated for the query heads that share it (GQA).

    Runs block ``layer`` alone on one-token sequences whose hidden state is replaced by
    ``resid`` on the way in (so nothing the decoder adds to ``inputs_embeds``, such as GPT-2's
    position embedding, reaches it) and reads the value from the registered attention path.
    """
    model = lm.model
    block = decoder_blocks(model)[layer]
    n_heads, n_kv = lm.layout.n_heads, lm.layout.n_kv_heads
    kv_of_head = torch.arange(n_heads) // (n_heads // n_kv)
    out = []
    for first in range(0, resid.shape[0], BATCH):
        rows = resid[first : first + BATCH, None, :].to(next(block.parameters()).dtype)

        def feed(module, args, kwargs, rows=rows):
            if args:
                return (rows, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": rows}

        handle = block.register_forward_pre_hook(feed, with_kwargs=True)
        try:
            with only_blocks(model, layer, layer + 1), _Values(lm, layer) as grab:
                decoder_of(model)(inputs_embeds=rows.to(input_device(model)), use_cache=False)
        finally:
            handle.remove()
        value = grab.value  # (b, Hkv, 1, D)
        out.append(value[:, kv_of_head.to(value.device), 0, :])
    return torch.cat(out)


def _weight_map(model: nn.Module, norm: nn.Module, d_model: int, device) -> FrozenNorm:
    """``norm`` as its weight (and centring for LayerNorm rows), per-position scale 1."""
    frozen = FrozenNorm.at(model, norm, torch.ones(d_model, device=device))
    return replace(frozen, scale=torch.ones((), dtype=torch.float64, device=frozen.weight.device))


@torch.no_grad()
def head_writers(lm: LoadedModel, layer: int) -> Tensor:
    """(H, D, d_model) float64: the direction in the final normed space that one unit of each
    value coefficient of each head of layer ``layer`` writes, ``g_f * (g_a * W_O^h[:, i])``,
    with ``g_a``, ``g_f`` the weights of the attention-output norm (where the row has one) and
    of the final norm (LayerNorm rows also centre), without their per-position scales."""
    require_no_output_gate(lm.model, "the OV-circuit analysis")
    model = lm.model
    w_o = head_out_weights(lm, layer).double()  # (H, D, d)
    d_model = w_o.shape[-1]
    norms = attn_output_norms(model)
    if norms is not None:
        w_o = _weight_map(model, norms[layer], d_model, w_o.device).apply(w_o)
    return _weight_map(model, final_norm(model), d_model, w_o.device).apply(w_o)


def unembedding_weight(lm: LoadedModel) -> Tensor:
    """The unembedding's weight ``W_U`` (V, d_model), from the architecture table."""
    return unembedding(lm.model).weight.detach()


@torch.no_grad()
def readout(
    lm: LoadedModel,
    layer: int,
    columns: Sequence[int] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(H, D, V') per head of layer ``layer``: the logits one unit of each value coefficient
    writes directly, ``W_U[t] . head_writers[h, i]`` (:func:`head_writers`). ``columns``: only
    these target tokens (default: the whole vocabulary, V' = V). Computed in ``dtype``."""
    w_u = unembedding_weight(lm)
    if columns is not None:
        w_u = w_u[torch.as_tensor(columns, dtype=torch.long, device=w_u.device)]
    writers = head_writers(lm, layer).to(device=w_u.device, dtype=dtype)
    return writers @ w_u.to(dtype).T


__all__ = [
    "EMBEDDINGS",
    "effective_embeddings",
    "head_values",
    "head_writers",
    "readout",
    "unembedding_weight",
]
