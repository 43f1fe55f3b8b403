"""Architecture facts as data: one row per ``model_type``, no if-chains elsewhere.

Each :class:`ArchitectureSpec` says where the decoder, its blocks, their attention modules, MLPs
and output projections, the input embedding, the final norm and the unembedding live, which
config keys hold the head counts, how the norms compute, what the model does to its logits
after the unembedding, which layers use a sliding window, and the positional scheme
(:mod:`workbench.model_parts` reads the parts). GQA grouping follows from the counts: query
head ``h`` reads KV head ``h // (H / Hkv)``.

Embedding scales (Gemma multiplies token embeddings by ``sqrt(d_model)``) need no column: in
transformers 5 the scale is applied inside the embedding module
(``Gemma2TextScaledWordEmbedding``), not by the decoder, so a residual stream fed back as
``inputs_embeds`` (:mod:`workbench.layer_suffix`) is not scaled again (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.errors import UnsupportedArchitectureError

if TYPE_CHECKING:  # the table itself is plain data: reading it imports no torch
    from torch import nn

    from probes import ModelLayout

#: Norm formulas (:class:`NormSpec` ``kind``).
NORM_KINDS = ("rms", "rms_unit_offset", "layer")
#: How a row's layers get their sliding window (:class:`ArchitectureSpec` ``sliding_window``).
WINDOW_RULES = ("none", "all_layers", "per_layer")


@dataclass(frozen=True)
class NormSpec:
    """How a row's norms compute (the final norm and, where there is one, the attention-output
    norm; within one row they share the formula).

    Attributes:
        kind: ``"rms"``: ``w * x / sqrt(mean(x^2) + eps)`` (RMSNorm, Zhang & Sennrich 2019;
            Llama); ``"rms_unit_offset"``: the same with ``(1 + w)`` (Gemma's RMSNorm);
            ``"layer"``: ``w * (x - mean x) / sqrt(var x + eps) + b`` (LayerNorm, Ba et al.
            2016; GPT-2, GPT-NeoX; the bias only where the module has one).
        eps_key: the config key holding ``eps``.
    """

    kind: str
    eps_key: str

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise ValueError(f"norm kind must be one of {NORM_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where attention lives in one Hugging Face architecture, and what else differs.

    Attributes:
        model_type: ``config.model_type``.
        decoder: dotted path from the ``*ForCausalLM`` model to the decoder stack (the module
            that embeds and runs the blocks, taking ``input_ids`` or ``inputs_embeds``).
        blocks: dotted path from the ``*ForCausalLM`` model to the list of decoder blocks.
        attention: attribute of a block holding its self-attention module.
        mlp: attribute of a block holding its feed-forward module (dense or mixture of experts).
        final_norm: dotted path to the norm applied after the last block.
        unembedding: dotted path to the unembedding (the LM head, hidden -> vocabulary).
        out_proj: attribute of the attention module holding the output projection.
        out_proj_transposed: the projection stores ``(in, out)`` weights (GPT-2 ``Conv1D``).
        n_layers_key / n_heads_key / n_kv_heads_key / max_context_key: config attributes
            (``n_kv_heads_key`` None = no GQA).
        positional: ``"rope"`` or ``"learned"`` (absolute position embeddings).
        embedding: dotted path to the input (token) embedding; inputs go to its device.
        norm: :class:`NormSpec` of the row's norms.
        attn_output_norm: attribute of a block holding a norm applied to the attention output
            before it is added to the residual stream (Gemma 2/3, OLMo 2: the block computes
            ``x + norm(attn(x'))``); None where head outputs add straight into the residual.
        text_config: attribute of the config holding the text model's config (multimodal
            Gemma 3: ``text_config``); None = the config itself. Counts and keys are read there.
        final_logit_softcap_key: config key of a cap applied to the logits after the
            unembedding, ``c * tanh(logits / c)`` (Gemma 2); None = no cap.
        logit_scale_key: config key of a factor the logits are multiplied by after the
            unembedding (Cohere 2); None = no factor.
        head_dim_key: config key of the head dimension; None or a None value =
            ``hidden_size // n_heads``.
        hidden_size_key: config key of the residual width (GPT-2 ``n_embd``); the stored
            ``config.json`` uses this name, which :func:`head_counts` reads without transformers.
        sliding_window: which layers use ``config.sliding_window``: ``"none"``, ``"all_layers"``
            (Mistral, Mixtral, Phi-3, Starcoder2, Qwen3-MoE: every layer when the config sets
            one) or ``"per_layer"`` (the layers ``config.layer_types`` marks
            ``"sliding_attention"``: Gemma 2/3, gpt-oss, Cohere 2, Qwen 2/3).
        sink_logits: attribute of the attention module holding learned per-head sink logits
            (H,) (gpt-oss ``sinks``, passed to the attention function as ``s_aux``); None.
        output_gate: attribute of the attention module whose output ``g`` (B, L, H * head_dim)
            gates the heads' outputs elementwise before the output projection,
            ``o_proj(attn * sigmoid(g))`` (gated attention: Qiu et al. 2025, "Gated Attention
            for Large Language Models", arXiv:2505.06708; AFMoE ``gate_proj``); None = no gate.
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
    embedding: str
    norm: NormSpec
    attn_output_norm: str | None = None
    text_config: str | None = None
    final_logit_softcap_key: str | None = None
    logit_scale_key: str | None = None
    head_dim_key: str | None = "head_dim"
    hidden_size_key: str = "hidden_size"
    sliding_window: str = "none"
    sink_logits: str | None = None
    output_gate: str | None = None

    def __post_init__(self) -> None:
        if self.sliding_window not in WINDOW_RULES:
            raise ValueError(f"sliding_window must be one of {WINDOW_RULES}")


_RMS = NormSpec("rms", "rms_norm_eps")
_GEMMA_RMS = NormSpec("rms_unit_offset", "rms_norm_eps")

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
    embedding="model.embed_tokens",
    norm=_RMS,
)

_GEMMA = dict(
    _LLAMA_LIKE,
    norm=_GEMMA_RMS,
    attn_output_norm="post_attention_layernorm",
    final_logit_softcap_key="final_logit_softcapping",
    sliding_window="per_layer",
)


def _row(model_type: str, base: dict = _LLAMA_LIKE, **changes) -> ArchitectureSpec:
    return ArchitectureSpec(model_type=model_type, **{**base, **changes})


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        _row("llama"),
        _row("mistral", sliding_window="all_layers"),
        _row("qwen2", sliding_window="per_layer"),
        _row("qwen3", sliding_window="per_layer"),
        _row("phi3", sliding_window="all_layers"),  # fused qkv_proj; o_proj as Llama
        _row("mixtral", sliding_window="all_layers"),  # MoE only in the MLP
        _row("qwen3_moe", sliding_window="all_layers"),  # MoE only in the MLP
        _row("starcoder2", norm=NormSpec("layer", "norm_epsilon"), sliding_window="all_layers"),
        _row("olmo2", attn_output_norm="post_attention_layernorm"),
        _row("gpt_oss", sliding_window="per_layer", sink_logits="sinks"),
        # AFMoE (Arcee Trinity): gated heads, a norm on the attention output, MoE MLPs, RoPE on
        # the sliding layers only (applied inside the attention module). With mup_enabled the
        # decoder scales its input embeddings, so the layer-suffix shortcut falls back to full
        # forwards there (workbench.layer_suffix checks it).
        _row(
            "afmoe",
            attn_output_norm="post_attention_layernorm",
            sliding_window="per_layer",
            output_gate="gate_proj",
        ),
        _row(
            "cohere2",
            norm=NormSpec("layer", "layer_norm_eps"),
            logit_scale_key="logit_scale",
            sliding_window="per_layer",
        ),
        _row("gemma2", _GEMMA),
        _row("gemma3_text", _GEMMA),
        # The multimodal Gemma 3 (Gemma3ForConditionalGeneration): its text stack sits under
        # model.language_model and it applies no final logit cap.
        _row(
            "gemma3",
            _GEMMA,
            decoder="model.language_model",
            blocks="model.language_model.layers",
            final_norm="model.language_model.norm",
            embedding="model.language_model.embed_tokens",
            text_config="text_config",
            final_logit_softcap_key=None,
        ),
        _row(
            "gpt_neox",
            decoder="gpt_neox",
            blocks="gpt_neox.layers",
            attention="attention",
            final_norm="gpt_neox.final_layer_norm",
            out_proj="dense",
            n_kv_heads_key=None,
            embedding="gpt_neox.embed_in",
            norm=NormSpec("layer", "layer_norm_eps"),
        ),
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
            embedding="transformer.wte",
            norm=NormSpec("layer", "layer_norm_epsilon"),
            head_dim_key=None,
            hidden_size_key="n_embd",
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
            f"(add a row for {model_type!r} to workbench.architectures.ARCHITECTURES)"
        ) from None


def module_at(root: nn.Module, dotted: str) -> nn.Module:
    """The submodule of ``root`` at the dotted path ``dotted`` (a path of the table)."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def text_config_of(config):
    """The config holding the text model's keys (``config.text_config`` for multimodal rows,
    else ``config`` itself)."""
    spec = spec_for(config.model_type)
    return getattr(config, spec.text_config) if spec.text_config else config


def config_value(config, key: str | None, default=None):
    """``key`` of the text config of ``config`` (None key or missing value: ``default``)."""
    if key is None:
        return default
    value = getattr(text_config_of(config), key, None)
    return default if value is None else value


def head_counts(config) -> tuple[int, int, int, int]:
    """``(n_layers, n_heads, n_kv_heads, head_dim)`` read from a config via the table."""
    spec = spec_for(config.model_type)
    text = text_config_of(config)
    n_layers = int(getattr(text, spec.n_layers_key))
    n_heads = int(getattr(text, spec.n_heads_key))
    n_kv = int(getattr(text, spec.n_kv_heads_key) or n_heads) if spec.n_kv_heads_key else n_heads
    hidden = int(getattr(text, spec.hidden_size_key))
    head_dim = config_value(config, spec.head_dim_key) or hidden // n_heads
    return n_layers, n_heads, n_kv, int(head_dim)


def norm_eps(config) -> float:
    """The ``eps`` of the row's norms, from the config key the table names."""
    spec = spec_for(config.model_type)
    return float(getattr(text_config_of(config), spec.norm.eps_key))


def layer_windows(config) -> tuple[int | None, ...]:
    """The sliding window of every layer (None = full causal attention), from the table's
    rule and the config: what transformers passes each layer as ``sliding_window``."""
    spec = spec_for(config.model_type)
    n_layers = head_counts(config)[0]
    window = config_value(config, "sliding_window")
    if spec.sliding_window == "none" or window is None:
        return (None,) * n_layers
    if spec.sliding_window == "all_layers":
        return (int(window),) * n_layers
    types = config_value(config, "layer_types") or ("full_attention",) * n_layers
    return tuple(int(window) if t == "sliding_attention" else None for t in types)


def layout_of(model: nn.Module) -> ModelLayout:
    """Build the :class:`~probes.ModelLayout` of a Hugging Face causal LM."""
    from probes import ModelLayout

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
