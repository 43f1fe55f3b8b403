"""Prompt spans: character ranges of the prompt text mapped to token ranges."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from workbench.interventions.base import InterventionError

Span = tuple[int, int]


def check_spans(spans: Sequence[Span], n_tokens: int, what: str = "token") -> list[Span]:
    """Sort spans and refuse empty, reversed, out-of-range or overlapping ones."""
    out = sorted((int(a), int(b)) for a, b in spans)
    if not out:
        raise InterventionError(f"no {what} spans given; mark at least one span of the prompt")
    for a, b in out:
        if not 0 <= a < b <= n_tokens:
            raise InterventionError(
                f"{what} span ({a}, {b}) is empty or outside the prompt's 0..{n_tokens}"
            )
    for (a0, b0), (a1, b1) in pairwise(out):
        if a1 < b0:
            raise InterventionError(f"{what} spans ({a0}, {b0}) and ({a1}, {b1}) overlap")
    return out


def char_spans_to_tokens(
    tokenizer, text: str, char_spans: Sequence[Span], *, add_special_tokens: bool = True
) -> list[Span]:
    """Map character ranges ``[start, end)`` of ``text`` to the token ranges covering them.

    ``text`` is tokenized with the tokenizer's defaults, as :meth:`LoadedModel.encode` does
    (special tokens get empty offsets and never belong to a span); a token belongs to a span
    when its character offsets overlap it.
    """
    char_spans = check_spans(char_spans, len(text), what="character")
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    offsets = enc["offset_mapping"]
    out: list[Span] = []
    for a, b in char_spans:
        toks = [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
        if not toks:
            raise InterventionError(f"character span ({a}, {b}) covers no token")
        out.append((toks[0], toks[-1] + 1))
    # merge spans that ended up sharing a token
    merged: list[Span] = []
    for a, b in out:
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def find_substring_spans(text: str, substring: str) -> list[Span]:
    """Character spans of every occurrence of ``substring`` in ``text``."""
    if not substring:
        raise InterventionError("the substring to emphasize is empty")
    spans, start = [], text.find(substring)
    while start >= 0:
        spans.append((start, start + len(substring)))
        start = text.find(substring, start + len(substring))
    if not spans:
        raise InterventionError(f"{substring!r} does not occur in the prompt")
    return spans
