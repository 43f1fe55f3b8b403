"""Classic detectors (previous-token, duplicate-token, induction heads): TransformerLens
``head_detector.detect_head`` with ``error_measure="mul"``, re-implemented on transformers'
eager maps (``output_attentions=True``) instead of a HookedTransformer's ``hook_pattern``.

``detect_head`` runs one prompt per forward and loops over layers and heads, as the reference
does; the detection patterns are built exactly as ``get_*_detection_pattern`` builds them
(numpy equality matrix, ``torch.roll`` then a zeroed first column, lower triangle). The caller
gives token ids: TransformerLens's ``to_tokens`` prepends a BOS token, so pass ids that start
with it to reproduce ``detect_head(model, text)`` on a model whose tokenizer has one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from workbench.peer_rules.common import n_layers_heads


def previous_token_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """``get_previous_token_head_detection_pattern``: ones one below the diagonal."""
    detection_pattern = torch.zeros(tokens.shape[-1], tokens.shape[-1])
    detection_pattern[1:, :-1] = torch.eye(tokens.shape[-1] - 1)
    return torch.tril(detection_pattern)


def duplicate_token_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """``get_duplicate_token_head_detection_pattern``: earlier copies of the current token."""
    token_pattern = tokens.repeat(tokens.shape[-1], 1).numpy()
    eq_mask = np.equal(token_pattern, token_pattern.T).astype(int)
    np.fill_diagonal(eq_mask, 0)
    return torch.tril(torch.as_tensor(eq_mask.astype(int)).float())


def induction_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """``get_induction_head_detection_pattern``: the duplicate pattern rolled one key to the
    right, its first column replaced by zeros, lower triangle."""
    duplicate_pattern = duplicate_token_detection_pattern(tokens)
    shifted_tensor = torch.roll(duplicate_pattern, shifts=1, dims=1)
    zeros_column = torch.zeros(duplicate_pattern.shape[0], 1)
    result_tensor = torch.cat((zeros_column, shifted_tensor[:, 1:]), dim=1)
    return torch.tril(result_tensor)


#: ``HEAD_NAMES`` of the reference: detection pattern of (1, T) token ids -> (T, T).
DETECTION_PATTERNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "previous_token_head": previous_token_detection_pattern,
    "duplicate_token_head": duplicate_token_detection_pattern,
    "induction_head": induction_detection_pattern,
}


def similarity_score(
    attention_pattern: torch.Tensor,
    detection_pattern: torch.Tensor,
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
) -> float:
    """``compute_head_attention_similarity_score`` ("mul"): one head's (T, T) map masked as
    asked, then ``sum(A * P) / sum(A)``."""
    if exclude_bos or exclude_current_token:
        attention_pattern = attention_pattern.clone()
    if exclude_bos:
        attention_pattern[:, 0] = 0
    if exclude_current_token:
        attention_pattern.fill_diagonal_(0)
    score = attention_pattern * detection_pattern
    return (score.sum() / attention_pattern.sum()).item()


@torch.no_grad()
def detect_head(
    model: torch.nn.Module,
    prompts_ids: Sequence[torch.Tensor],
    head_name: str,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> torch.Tensor:
    """``detect_head(model, [seq, ...], head_name, error_measure="mul")``: per prompt (ids of
    shape (1, T)) one forward with ``output_attentions=True``, every head scored against the
    detection pattern; the per-prompt (layers, heads) matrices stacked and averaged."""
    n_layers, n_heads = n_layers_heads(model)
    make_pattern = DETECTION_PATTERNS[head_name]
    batch_scores = []
    for ids in prompts_ids:
        tokens = ids.reshape(1, -1)
        detection_pattern = make_pattern(tokens.cpu())
        out = model(input_ids=tokens, use_cache=False, output_attentions=True)
        matches = -torch.ones(n_layers, n_heads, dtype=torch.float32)
        for layer in range(n_layers):
            layer_attention_patterns = out.attentions[layer][0]  # [n_heads q_pos k_pos]
            for head in range(n_heads):
                matches[layer, head] = similarity_score(
                    layer_attention_patterns[head],
                    detection_pattern.to(layer_attention_patterns),
                    exclude_bos=exclude_bos,
                    exclude_current_token=exclude_current_token,
                )
        batch_scores.append(matches)
    return torch.stack(batch_scores).mean(0)
