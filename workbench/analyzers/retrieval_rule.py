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
from collections.abc import Sequence

import torch

from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.stemming import rouge_stem

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


OVERLAP = 0.9  # reference code: a window covering more than 90 % of the needle's token set


def overlap_span(
    prompt_ids: Sequence[int] | torch.Tensor, target_ids: Sequence[int], share: float = OVERLAP
) -> tuple[int, int] | None:
    """The reference code's span search (``LLMNeedleHaystackTester.find_needle_idx``): the
    first window ``[i, i + len(target_ids))`` of the prompt whose token *set* holds more than
    ``share`` of the target's distinct tokens; None when no window does (the reference then
    scores the test 0 for every head).

    Example: prompt ``[5, 7, 8, 9, 7]``, target ``[7, 8, 9]`` -> ``(1, 4)``; target ``[8, 6]``
    -> None (at most half of ``{8, 6}`` in any window, not above 0.9).
    """
    ids = [int(t) for t in (prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids)]
    want = {int(t) for t in target_ids}
    if not want:
        raise AnalyzerError("overlap_span: the target text has no tokens")
    n = len(target_ids)
    for i in range(len(ids)):
        if len(set(ids[i : i + n]) & want) / len(want) > share:
            return i, i + n
    return None


_WORD = re.compile(r"[a-z0-9]+")


def rouge_words(text: str, *, stemming: bool = False) -> Counter[str]:
    """rouge_score's tokenizer: lowercase alphanumeric runs counted with multiplicity; with
    ``stemming`` (the reference's ``use_stemmer=True``) words longer than 3 characters are
    Porter-stemmed (:func:`~workbench.analyzers.stemming.rouge_stem`)."""
    found = _WORD.findall(text.lower())
    return Counter(rouge_stem(w) for w in found) if stemming else Counter(found)


def answer_recall(answer: str, response: str, *, stemming: bool = False) -> float:
    """ROUGE-1 recall of ``answer`` in ``response``: the share of the answer's words (lowercased
    alphanumeric runs, counted with multiplicity) found in the response. ``stemming=False``
    (the workbench's default) compares exact words, stricter than the reference, which uses
    rouge_score with its Porter stemmer (``stemming=True``: "falcons" matches "falcon")."""
    want = rouge_words(answer, stemming=stemming)
    have = rouge_words(response, stemming=stemming)
    total = sum(want.values())
    if total == 0:
        return 0.0
    return sum(min(c, have[w]) for w, c in want.items()) / total


def answered(
    answer: str, response: str, threshold: float = PASS_RECALL, *, stemming: bool = False
) -> bool:
    """The reference code's pass rule: ROUGE-1 recall of the answer strictly above 0.5."""
    return answer_recall(answer, response, stemming=stemming) > threshold


__all__ = [
    "OVERLAP",
    "PASS_RECALL",
    "RETRIEVAL_THRESHOLD",
    "answer_recall",
    "answered",
    "copy_events",
    "overlap_span",
    "retrieval_score",
    "rouge_words",
]
