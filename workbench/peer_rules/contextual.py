"""Contextual heads: billzyx/focus_direction, ``get_contextual_heads.py``,
``decoding_methods.py``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from workbench.peer_rules.common import n_layers_heads


def find_best_idx(prompt_ids: torch.Tensor, needle_ids: list[int]) -> tuple[int, int]:
    """``decoding_methods.find_needle_idx``: the window of ``len(needle_ids)`` prompt tokens
    with the largest share of the needle's token set (first one on ties), if above 70 %."""
    span_len = len(needle_ids)
    max_overlap = 0.0
    best = (-1, -1)
    for i in range(len(prompt_ids)):
        token_span = prompt_ids[i : i + span_len]
        span_ids = set(token_span.tolist())
        overlap = float(len(span_ids.intersection(set(needle_ids)))) / len(set(needle_ids))
        if overlap > max_overlap:
            max_overlap = overlap
            best = (i, i + span_len)
    return best if max_overlap > 0.7 else (-1, -1)


def get_text_idx_range(text: str, prompt_ids: torch.Tensor, tokenizer: Any) -> tuple[int, int]:
    """``decoding_methods.get_text_idx_range``: ``text`` tokenized alone, then located."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return find_best_idx(prompt_ids[0], ids)


@torch.no_grad()
def original_decoding_with_cache(
    model: torch.nn.Module, tokenizer: Any, input_text: str, max_length: int = 100
) -> str:
    """``decoding_methods.original_decoding_with_cache``: chat template with the generation
    prompt, greedy ``model.generate``, decoded without special tokens."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": input_text}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    length = inputs["input_ids"].shape[1]
    gen = model.generate(
        **inputs, max_new_tokens=max_length, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(gen[0, length:], skip_special_tokens=True)


@torch.no_grad()
def contextual_example(
    model: torch.nn.Module, tokenizer: Any, prompt: str, needle: str, *, max_length: int = 100
) -> dict[str, Any]:
    """One example of ``process_long_context_prompt``: greedy response, the conversation
    (user prompt + assistant response) through the chat template and tokenized, the needle's
    and the response's token ranges located, one forward with ``output_attentions``, and
    ``extract_attention_with_range``: per head, the attention of the response rows summed over
    the needle's keys and averaged over the rows: ``score`` (layers, heads).

    ``score_producing``: the same with the rows moved one position back, to the rows that
    *produce* the response tokens (the workbench's answer rows); not the reference setting,
    it tells whether the row offset is the only difference."""
    n_layers, n_heads = n_layers_heads(model)
    response = original_decoding_with_cache(model, tokenizer, prompt, max_length)
    conversation = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    ids = tokenizer(conversation, return_tensors="pt").input_ids.to(model.device)
    needle_range = get_text_idx_range(needle, ids, tokenizer)
    response_range = get_text_idx_range(response, ids, tokenizer)
    attentions = model(input_ids=ids, return_dict=True, output_attentions=True).attentions
    out: dict[str, Any] = {
        "response": response,
        "needle_range": needle_range,
        "response_range": response_range,
    }
    for key, shift in (("score", 0), ("score_producing", -1)):
        r0, r1 = response_range[0] + shift, response_range[1] + shift
        score = np.zeros((n_layers, n_heads))
        for layer in range(n_layers):
            for head in range(n_heads):
                rows = attentions[layer][0, head, r0:r1, needle_range[0] : needle_range[1]]
                score[layer, head] = float(torch.sum(rows, dim=-1).mean().float())
        out[key] = score
    return out


def show_and_save_scores(examples: Sequence[dict[str, Any]], key: str = "score") -> np.ndarray:
    """``show_and_save_scores``: the per-example scores averaged over the examples."""
    scores = np.stack([e[key] for e in examples])
    assert not np.isnan(scores).any()
    return scores.mean(axis=0)
