"""Tiny randomly initialised models of every architecture-table family, built from configs.

The one recipe the architecture tests share: a few layers, GQA (4 query heads, 2 KV heads)
where the family has it, a sliding window of :data:`WINDOW` tokens (shorter than the tests'
prompts) mixed with full layers where the family mixes them, softcaps where the family has
them. Nothing is downloaded.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3Config

WINDOW = 8
SMALL = dict(
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=0.2,  # scores of a few units: softcaps, windows and sinks all matter
)
MIXED = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
GEMMA = dict(head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24, layer_types=MIXED)
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": dict(sliding_window=WINDOW),
    "qwen2": dict(sliding_window=WINDOW, use_sliding_window=True, layer_types=MIXED),
    "qwen3": dict(head_dim=16),
    # caps smaller than Gemma 2's 50 / 30, so that tanh is far from linear on these scores
    "gemma2": dict(GEMMA, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3_text": dict(GEMMA),
    "gpt_neox": dict(rotary_pct=0.25),
    "phi3": {},
    "olmo2": {},
    "gpt_oss": dict(
        head_dim=16,
        sliding_window=WINDOW,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=MIXED,
    ),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW),
    "qwen3_moe": dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "starcoder2": dict(sliding_window=WINDOW),
    "cohere2": dict(sliding_window=WINDOW, head_dim=16, layer_types=MIXED),
    "afmoe": dict(
        head_dim=16,
        sliding_window=WINDOW,
        layer_types=MIXED,
        num_dense_layers=1,
        num_experts=4,
        num_experts_per_tok=2,
        num_shared_experts=1,
        moe_intermediate_size=32,
    ),
}


def tiny_config(family: str, **extra):
    """The config of a tiny ``family`` model (``extra`` overrides, e.g. ``vocab_size``)."""
    if family == "gemma3":  # the multimodal class; its text stack is the tested part
        return Gemma3Config(
            text_config=dict(SMALL, **GEMMA, **extra),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
            ),
            mm_tokens_per_image=4,
            image_token_index=255,
            boi_token_index=253,
            eoi_token_index=254,
        )
    return AutoConfig.for_model(family, **{**SMALL, **FAMILIES[family], **extra})


def randomize_sinks(model: torch.nn.Module, std: float = 1.5) -> None:
    """Give learned sink logits (gpt-oss) random values, so that they take real mass."""
    for module in model.modules():
        sinks = getattr(module, "sinks", None)
        if isinstance(sinks, torch.nn.Parameter):
            with torch.no_grad():
                sinks.normal_(0.0, std)


def tiny_model(family: str, *, seed: int = 0, attn_implementation: str | None = None, **extra):
    """A tiny random ``family`` model in eval mode (random sinks where it has them)."""
    torch.manual_seed(seed)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_config(tiny_config(family, **extra), **kwargs).eval()
    randomize_sinks(model)
    return model
