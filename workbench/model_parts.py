"""The parts of a causal LM, found through the architecture table (no attribute probing).

:mod:`workbench.architectures` names, per ``model_type``, where the decoder stack, its blocks,
their attention and MLP modules, the final norm and the unembedding live; the functions here
return those modules and change them temporarily (run only some blocks, borrow another model's
weights for one part), always restoring them on exit.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from probes.checks import choice, index_list
from workbench.architectures import ArchitectureSpec, config_value, module_at, spec_for
from workbench.errors import LayerOutOfRangeError, UnsupportedArchitectureError

#: The block parts :func:`borrowed_weights` can swap, by the table column that names them.
BLOCK_PARTS = ("attention", "mlp")


def spec_of(model: nn.Module) -> ArchitectureSpec:
    """The architecture-table row of ``model`` (by ``model.config.model_type``)."""
    return spec_for(model.config.model_type)


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack of a ``*ForCausalLM`` model (``model.model``, ``transformer``...):
    called with ``input_ids`` or ``inputs_embeds`` it returns ``last_hidden_state``
    (B, L, d_model) after the final norm."""
    return module_at(model, spec_of(model).decoder)


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ``n_layers`` transformer blocks of ``model``, in order."""
    return module_at(model, spec_of(model).blocks)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block, before the unembedding (``model.norm`` /
    ``transformer.ln_f``)."""
    return module_at(model, spec_of(model).final_norm)


def unembedding(model: nn.Module) -> nn.Module:
    """The unembedding (LM head): final hidden (..., d_model) -> logits (..., vocab)."""
    return module_at(model, spec_of(model).unembedding)


def input_embedding(model: nn.Module) -> nn.Module:
    """The token embedding (ids -> (..., d_model)); inputs go to the device of its weight."""
    return module_at(model, spec_of(model).embedding)


def input_device(model: nn.Module) -> torch.device:
    """The device token ids must be on: that of the input embedding (with a ``device_map``
    the blocks may sit elsewhere; accelerate's hooks move activations between them)."""
    return next(input_embedding(model).parameters()).device


def attn_output_norms(model: nn.Module) -> list[nn.Module] | None:
    """Per block, the norm applied to the attention output before the residual add (Gemma
    2/3, OLMo 2), or None for rows whose head outputs add straight into the residual."""
    attr = spec_of(model).attn_output_norm
    return None if attr is None else [getattr(block, attr) for block in decoder_blocks(model)]


def sink_logits(model: nn.Module) -> list[Tensor] | None:
    """Per layer, the learned per-head sink logits (H,) of the attention module (gpt-oss
    ``sinks``: an extra softmax term in every query's denominator), or None for rows without."""
    attr = spec_of(model).sink_logits
    if attr is None:
        return None
    return [getattr(block_attention, attr) for block_attention in attention_modules(model)]


def output_gates(model: nn.Module) -> list[nn.Module] | None:
    """Per layer, the module whose output ``g`` (B, L, H * head_dim) gates the heads' outputs,
    ``o_proj(attn * sigmoid(g))`` (gated attention, Qiu et al. 2025; AFMoE ``gate_proj``), or
    None for rows without an output gate."""
    attr = spec_of(model).output_gate
    if attr is None:
        return None
    return [getattr(block_attention, attr) for block_attention in attention_modules(model)]


def require_no_output_gate(model: nn.Module, what: str) -> None:
    """Refuse ``what`` (an analysis that reads head outputs through the output projection's
    weights alone) on a model whose heads pass an input-dependent output gate first."""
    if spec_of(model).output_gate is not None:
        raise UnsupportedArchitectureError(
            f"{what} reads each head's output through the output projection, but "
            f"{spec_of(model).model_type!r} multiplies head outputs by an input-dependent gate "
            "first (gated attention); it is not supported for gated-attention models yet"
        )


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every block, in order."""
    attr = spec_of(model).attention
    return [getattr(block, attr) for block in decoder_blocks(model)]


def logit_transform(model: nn.Module) -> dict[str, float | None]:
    """``{"scale": s, "final_softcap": c}``: what the model does to the unembedding's output
    (None = nothing), from the table's config keys and the model's config."""
    spec = spec_of(model)
    return {
        "scale": config_value(model.config, spec.logit_scale_key),
        "final_softcap": config_value(model.config, spec.final_logit_softcap_key),
    }


def logits_from_unembedded(model: nn.Module, raw: Tensor) -> Tensor:
    """What the model does to the unembedding's output (..., V) to give its logits: the
    table's logit scale (Cohere 2: ``logits * s``), then its final softcap (Gemma 2:
    ``c * tanh(logits / c)``); the identity for the other rows."""
    transform = logit_transform(model)
    scale, cap = transform["scale"], transform["final_softcap"]
    if scale is not None:
        raw = raw * scale
    if cap is not None:
        raw = torch.tanh(raw / cap) * cap
    return raw


def final_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """The model's logits (..., V) from the final hidden state (..., d_model) (after the final
    norm): the unembedding, then :func:`logits_from_unembedded`."""
    return logits_from_unembedded(model, unembedding(model)(hidden))


def cache_keyword(model: nn.Module) -> str:
    """The keyword (and output field) of the KV cache of ``model``'s forward: ``cache`` in the
    transformers 5 releases that renamed it, ``past_key_values`` before (the project accepts
    both: ``transformers>=5.0,<6``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def block_output(output: Tensor | tuple) -> Tensor:
    """The hidden state (B, L, d_model) a block returns (alone or first of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def only_blocks(model: nn.Module, start: int, stop: int | None = None) -> Iterator[None]:
    """Temporarily make the decoder of ``model`` run only its blocks ``start:stop``.

    With ``start > 0`` feed the decoder ``inputs_embeds`` = the residual stream entering block
    ``start`` (exact for rotary models such as Llama; models with learned absolute positions
    add them again, so callers check the shortcut against a full forward). Hooks on the
    blocks' attention modules keep their layer indices. The full list is restored on exit.
    """
    path = spec_of(model).blocks
    parent_path, _, attr = path.rpartition(".")
    parent = module_at(model, parent_path) if parent_path else model
    blocks = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList(list(blocks)[start:stop]))
    try:
        yield
    finally:
        setattr(parent, attr, blocks)


def _part_prefix(model: nn.Module, part: str) -> tuple[str, str]:
    """``(blocks path, part attribute)`` of ``part`` (a :data:`BLOCK_PARTS` name)."""
    choice("part", part, BLOCK_PARTS)
    spec = spec_of(model)
    return spec.blocks, getattr(spec, part)


@contextmanager
def borrowed_weights(
    model: nn.Module, donor: nn.Module, part: str, layers: Sequence[int] | None = None
) -> Iterator[list[str]]:
    """Temporarily copy ``donor``'s weights of one block part into ``model``.

    ``part``: ``"attention"`` (the table's attention module: q, k, v, o projections) or
    ``"mlp"`` (the feed-forward module), of the blocks ``layers`` (None = all). Only
    parameters that differ are copied; yields their names, sorted. ``model`` gets its own
    weights back on exit (also on error). ``donor`` must share the architecture (e.g. the base
    model of a fine-tune).
    """
    if layers is None:
        wanted = None
    else:
        n_layers = len(decoder_blocks(model))
        wanted = set(
            index_list("layers", layers, size=n_layers, what="layer", error=LayerOutOfRangeError)
        )
    blocks, attr = _part_prefix(model, part)
    pattern = re.compile(rf"^{re.escape(blocks)}\.(\d+)\.{re.escape(attr)}\.")
    donor_params = dict(donor.named_parameters())
    saved: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            found = pattern.match(name)
            if not found or (wanted is not None and int(found.group(1)) not in wanted):
                continue
            if torch.equal(param, donor_params[name]):
                continue
            saved[name] = param.detach().clone()
            param.copy_(donor_params[name])
    try:
        yield sorted(saved)
    finally:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


__all__ = [
    "BLOCK_PARTS",
    "attention_modules",
    "attn_output_norms",
    "block_output",
    "borrowed_weights",
    "decoder_blocks",
    "decoder_of",
    "final_logits",
    "final_norm",
    "input_device",
    "input_embedding",
    "logit_transform",
    "logits_from_unembedded",
    "only_blocks",
    "sink_logits",
    "spec_of",
    "unembedding",
]


@contextmanager
def layer_progress(model: nn.Module, callback: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``callback(done, n_layers)`` each time a decoder block of ``model`` finishes during
    the forwards run inside the ``with`` block (``done`` counts the blocks finished in the
    current forward: 1..n_layers). Forward hooks on the blocks of the architecture table,
    removed on exit, also on error. For progress by layer of one long forward."""
    blocks = decoder_blocks(model)
    n_layers = len(blocks)
    index = {id(block): i for i, block in enumerate(blocks)}

    def done(block: nn.Module, _args: object, _output: object) -> None:
        callback(index[id(block)] + 1, n_layers)

    handles = [block.register_forward_hook(done) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
