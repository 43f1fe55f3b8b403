"""The retrieval-head rule (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality", arXiv:2404.15574; reference code nightdessert/Retrieval_Head) and the
reference code's pass rule for a needle test.

At every decoding step a head "copies" when its most-attended key lies inside the needle span
*and* holds the very token being emitted; each copy adds ``1 / |span|``. A test passes when the
ROUGE-1 recall of the answer in the response exceeds 0.5.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from workbench.analyzers.base import AnalyzerError

RETRIEVAL_THRESHOLD = 0.1  # Wu et al.: heads above it are retrieval heads
PASS_RECALL = 0.5  # reference code: a test counts when ROUGE-1 recall of the answer > 50 %


def copy_events(
    argmax: torch.Tensor, emitted: torch.Tensor, sequence: torch.Tensor, span: tuple[int, int]
) -> torch.Tensor:
    """Per-step copy events of every head: (S, L, H) bool.

    Args:
        argmax: (S, L, H) most-attended key position of each head at each decoding step (the
            query that produces the emitted token: the last prompt position at step 0, then each
            fed-back token).
        emitted: (S,) the token id emitted at each step.
        sequence: (T,) token ids of the prompt followed by the generated tokens (positions the
            argmax can point to).
        span: ``[start, end)`` token span of the needle (or answer) in the prompt.

    Step ``s`` of head ``h`` is a copy event when ``start <= argmax[s, h] < end`` and
    ``sequence[argmax[s, h]] == emitted[s]`` (Wu et al., top-1 as their reference code).
    """
    start, end = span
    pos = argmax.long()
    inside = (pos >= start) & (pos < end)
    token_at = sequence.long()[pos.clamp(0, sequence.numel() - 1)]
    return inside & (token_at == emitted.long().view(-1, *([1] * (pos.dim() - 1))))


def retrieval_score(
    argmax: torch.Tensor, emitted: torch.Tensor, sequence: torch.Tensor, span: tuple[int, int]
) -> torch.Tensor:
    """One test's retrieval score per head, ``(#copy events) / |span|``: (L, H) float64."""
    start, end = span
    if end <= start:
        raise AnalyzerError(f"empty needle span {span}")
    events = copy_events(argmax, emitted, sequence, span)
    return events.sum(0).double() / (end - start)


_WORD = re.compile(r"[a-z0-9]+")


def answer_recall(answer: str, response: str) -> float:
    """ROUGE-1 recall of ``answer`` in ``response``: the share of the answer's words (lowercased
    alphanumeric runs, counted with multiplicity) found in the response. No stemming (the
    reference uses rouge_score with a Porter stemmer; exact words are stricter)."""
    want = Counter(_WORD.findall(answer.lower()))
    have = Counter(_WORD.findall(response.lower()))
    total = sum(want.values())
    if total == 0:
        return 0.0
    return sum(min(c, have[w]) for w, c in want.items()) / total


def answered(answer: str, response: str, threshold: float = PASS_RECALL) -> bool:
    """The reference code's pass rule: ROUGE-1 recall of the answer strictly above 0.5."""
    return answer_recall(answer, response) > threshold


__all__ = [
    "PASS_RECALL",
    "RETRIEVAL_THRESHOLD",
    "answer_recall",
    "answered",
    "copy_events",
    "retrieval_score",
]
