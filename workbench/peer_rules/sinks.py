"""First-token sinks: sail-sg/Attention-Sink, ``eval_sink_open_source.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workbench.peer_rules.common import n_layers_heads


@torch.no_grad()
def measure_attention_sink(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], token_length: int = 64
) -> torch.Tensor:
    """``measure_attention_sink``: each prompt tokenized with the tokenizer's defaults and cut
    to ``token_length`` tokens, ``model.generate(max_new_tokens=1, output_attentions=True)``;
    the prefill maps of every layer stacked: (samples, layers, heads, T, T)."""
    n_layers, _ = n_layers_heads(model)
    all_samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        for key in list(inputs):
            assert inputs[key].shape[1] >= token_length
            inputs[key] = inputs[key][:, :token_length]
        outputs = model.generate(
            **inputs,
            output_attentions=True,
            return_dict_in_generate=True,
            max_new_tokens=1,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
        attentions = outputs["attentions"]
        assert len(attentions) == 1
        layers = torch.cat([attentions[0][layer] for layer in range(n_layers)], dim=0)
        all_samples.append(layers.unsqueeze(dim=0))
    return torch.cat(all_samples, dim=0)


def sink_importance(attention_scores: torch.Tensor) -> torch.Tensor:
    """The ``importance_scores`` of ``compute_attention_sink``: attention to key k summed over
    queries and divided by ``T - k`` (the queries that see it): (samples, layers, heads, T)."""
    s, n_layers, n_heads, t1, t2 = attention_scores.shape
    assert t1 == t2
    ratios = (
        torch.arange(t1, 0, -1)[None, None, None, :]
        .expand(s, n_layers, n_heads, t1, t2)
        .to(attention_scores)
    )
    return (attention_scores / ratios).sum(dim=-2)


def compute_attention_sink(attention_scores: torch.Tensor, epsilon: float = 0.3) -> torch.Tensor:
    """``compute_attention_sink``: per key position, the percentage of (sample, layer, head)
    whose importance exceeds ``epsilon``; entry 0 is the paper's Sink rate."""
    importance = sink_importance(attention_scores)
    return (importance > epsilon).to(torch.float).mean(dim=(0, 1, 2)) * 100
