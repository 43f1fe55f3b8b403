"""Prompt spans: character ranges of the prompt text mapped to token ranges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

from probes.checks import describe, integer
from probes.checks import text as check_text
from workbench.interventions.base import InterventionArgumentError, InterventionError

Span = tuple[int, int]


def _span(spans_name: str, index: int, span: Any) -> Span:
    """One ``(start, end)`` pair of integers (no floats, booleans or strings)."""
    if isinstance(span, (str, bytes, Mapping)) or not isinstance(span, Sequence) or len(span) != 2:
        raise InterventionArgumentError(
            f"{spans_name}[{index}] must be a (start, end) pair of integers, got {describe(span)}"
        )
    where = f"{spans_name}[{index}] {tuple(span)!r}"
    return (
        integer(f"the start of {where}", span[0], error=InterventionArgumentError),
        integer(f"the end of {where}", span[1], error=InterventionArgumentError),
    )


def check_spans(spans: Sequence[Span], n_tokens: int, what: str = "token") -> list[Span]:
    """Sort spans and refuse empty, reversed, out-of-range or overlapping ones, and spans that
    are not ``(start, end)`` pairs of integers."""
    name = f"{what} spans"
    n_tokens = integer(f"the length the {name} refer to", n_tokens, minimum=1)
    if isinstance(spans, (str, bytes, Mapping)) or not isinstance(spans, Sequence):
        raise InterventionArgumentError(
            f"{name} must be a list of (start, end) pairs, got {describe(spans)}"
        )
    out = sorted(_span(name, i, span) for i, span in enumerate(spans))
    if not out:
        raise InterventionArgumentError(
            f"{name}: no span given; mark at least one span of the prompt"
        )
    for a, b in out:
        if not 0 <= a < b <= n_tokens:
            raise InterventionArgumentError(
                f"{name}: span ({a}, {b}) is empty or outside the prompt's 0..{n_tokens}; "
                "give start < end within the prompt"
            )
    for (a0, b0), (a1, b1) in pairwise(out):
        if a1 < b0:
            raise InterventionArgumentError(
                f"{name}: spans ({a0}, {b0}) and ({a1}, {b1}) overlap; give disjoint spans"
            )
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
    check_text("the prompt text", text, allow_empty=True)
    if not isinstance(substring, str) or not substring:
        raise InterventionArgumentError(
            f"the substring to emphasize is empty or not a string: {describe(substring)}"
        )
    spans, start = [], text.find(substring)
    while start >= 0:
        spans.append((start, start + len(substring)))
        start = text.find(substring, start + len(substring))
    if not spans:
        raise InterventionError(f"{substring!r} does not occur in the prompt")
    return spans
