"""Architecture facts as data: one row per ``model_type``, no if-chains elsewhere.

Each :class:`ArchitectureSpec` says where the decoder, its blocks, their attention modules, MLPs
and output projections, the final norm and the unembedding live, which config keys hold the
head counts, and the positional scheme (:mod:`workbench.model_parts` reads the parts). GQA
grouping follows from the counts: query head ``h`` reads KV head ``h // (H / Hkv)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from probes import ModelLayout
from workbench.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where attention lives in one Hugging Face architecture.

    Attributes:
        model_type: ``config.model_type``.
        decoder: dotted path from the ``*ForCausalLM`` model to the decoder stack (the module
            that embeds and runs the blocks, taking ``input_ids`` or ``inputs_embeds``).
        blocks: dotted path from the ``*ForCausalLM`` model to the list of decoder blocks.
        attention: attribute of a block holding its self-attention module.
        mlp: attribute of a block holding its feed-forward module.
        final_norm: dotted path to the norm applied after the last block.
        unembedding: dotted path to the unembedding (the LM head, hidden -> vocabulary).
        out_proj: attribute of the attention module holding the output projection.
        out_proj_transposed: the projection stores ``(in, out)`` weights (GPT-2 ``Conv1D``).
        n_layers_key / n_heads_key / n_kv_heads_key / max_context_key: config attributes
            (``n_kv_heads_key`` None = no GQA).
        positional: ``"rope"`` or ``"learned"`` (absolute position embeddings).
    """

    model_type: str
    decoder: str
    blocks: str
    attention: str
    mlp: str
    final_norm: str
    unembedding: str
    out_proj: str
    out_proj_transposed: bool
    n_layers_key: str
    n_heads_key: str
    n_kv_heads_key: str | None
    max_context_key: str
    positional: str


_LLAMA_LIKE = dict(
    decoder="model",
    blocks="model.layers",
    attention="self_attn",
    mlp="mlp",
    final_norm="model.norm",
    unembedding="lm_head",
    out_proj="o_proj",
    out_proj_transposed=False,
    n_layers_key="num_hidden_layers",
    n_heads_key="num_attention_heads",
    n_kv_heads_key="num_key_value_heads",
    max_context_key="max_position_embeddings",
    positional="rope",
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec(model_type="llama", **_LLAMA_LIKE),
        ArchitectureSpec(model_type="mistral", **_LLAMA_LIKE),
        ArchitectureSpec(model_type="qwen2", **_LLAMA_LIKE),
        ArchitectureSpec(model_type="qwen3", **_LLAMA_LIKE),
        ArchitectureSpec(
            model_type="gpt2",
            decoder="transformer",
            blocks="transformer.h",
            attention="attn",
            mlp="mlp",
            final_norm="transformer.ln_f",
            unembedding="lm_head",
            out_proj="c_proj",
            out_proj_transposed=True,
            n_layers_key="n_layer",
            n_heads_key="n_head",
            n_kv_heads_key=None,
            max_context_key="n_positions",
            positional="learned",
        ),
    )
}


def spec_for(model_type: str) -> ArchitectureSpec:
    """The table row for ``model_type``, or a clear error listing the supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not in the workbench architecture table; "
            f"supported: {', '.join(sorted(ARCHITECTURES))} "
            "(add a row to workbench.architectures.ARCHITECTURES)"
        ) from None


def module_at(root: nn.Module, dotted: str) -> nn.Module:
    """The submodule of ``root`` at the dotted path ``dotted`` (a path of the table)."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def head_counts(config) -> tuple[int, int, int, int]:
    """``(n_layers, n_heads, n_kv_heads, head_dim)`` read from a config via the table."""
    spec = spec_for(config.model_type)
    n_layers = int(getattr(config, spec.n_layers_key))
    n_heads = int(getattr(config, spec.n_heads_key))
    n_kv = int(getattr(config, spec.n_kv_heads_key) or n_heads) if spec.n_kv_heads_key else n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_layers, n_heads, n_kv, int(head_dim)


def layout_of(model: nn.Module) -> ModelLayout:
    """Build the :class:`~probes.ModelLayout` of a Hugging Face causal LM."""
    spec = spec_for(model.config.model_type)
    n_layers, n_heads, n_kv, head_dim = head_counts(model.config)
    blocks = module_at(model, spec.blocks)
    attention = tuple(getattr(block, spec.attention) for block in blocks)
    if len(attention) != n_layers:
        raise UnsupportedArchitectureError(
            f"{spec.blocks} holds {len(attention)} blocks but the config says {n_layers} layers"
        )
    return ModelLayout(
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        attention_modules=attention,
        out_projections=tuple(getattr(a, spec.out_proj) for a in attention),
        out_proj_transposed=spec.out_proj_transposed,
    )
