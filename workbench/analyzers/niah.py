"""Needle-in-a-haystack (NIAH) tasks: the retrieval-head analyzer's default task.

Follows the setup of Wu et al. 2024 ("Retrieval Head Mechanistically Explains Long-Context
Factuality", after Kamradt's LLMTest_NeedleInAHaystack): a haystack of unrelated text trimmed to
a context length, a needle sentence inserted at a sentence boundary at a chosen depth (fraction
of the context), and a question whose answer is part of the needle. The haystack is the bundled
``workbench/data/corpus.txt`` (written for the project; cycled to reach the length) or any text
file the user names; needles are the bundled ``workbench/data/needles.jsonl`` (fictional facts a
model cannot know beforehand) or the user's own (JSONL with ``needle``, ``question``,
``answer``).

Prompts go through the chat template (the embedded instruct model answers needle questions with
it and none without). The needle and answer token spans are located in the *templated,
tokenized* prompt through the tokenizer's character offsets, never by searching the needle's own
token ids: tokenized alone, ``"The secret..."`` starts with ``The`` while inside the text it is
``" The"`` (BPE folds the leading space into the token), so id matching misses or misplaces it.

::

    items = make_niah_tasks(lm, lengths=(256, 512), depths=(0.1, 0.5, 0.9), n_needles=2)
    items[0]["prompt"], items[0]["needle_span"], items[0]["answer"]
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.checks import ArgumentError, describe, integer
from probes.checks import number as check_number
from workbench.analyzers.prompts import bundled_text
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

#: The user message around the haystack (``{context}``) and the question (``{question}``).
PROMPT_TEMPLATE = (
    "{context}\n\nAnswer the question based on the text above, in a few words.\n"
    "Question: {question}"
)
DEFAULT_LENGTHS = (256, 512)
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


class NiahError(WorkbenchError):
    """A needle-in-a-haystack task cannot be built (bad parameter, needle too long...)."""


@dataclass(frozen=True)
class Needle:
    """A fact to hide: the ``needle`` sentence, the ``question`` about it, the ``answer``
    (ideally a substring of the needle: its tokens are what a retrieval head copies)."""

    needle: str
    question: str
    answer: str


# -- inputs -------------------------------------------------------------------------------------
def load_needles(path: str | Path | None = None) -> list[Needle]:
    """Needles from a JSONL file (one ``{"needle", "question", "answer"}`` object a line), or the
    bundled set when ``path`` is None."""
    if path is None:
        text, where = bundled_text("needles.jsonl"), "bundled needles.jsonl"
    else:
        p = Path(path)
        if not p.is_file():
            raise NiahError(f"needle file {p} does not exist or is not a file")
        text, where = p.read_text(encoding="utf-8"), str(p)
    needles = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NiahError(f"{where}, line {number}: not valid JSON ({exc.msg})") from None
        needles.append(_as_needle(obj, f"{where}, line {number}"))
    if not needles:
        raise NiahError(f"{where} holds no needles")
    return needles


def _as_needle(obj: Any, where: str) -> Needle:
    if isinstance(obj, Needle):
        return obj
    if not isinstance(obj, dict):
        raise NiahError(f"{where}: a needle is a dict with needle, question, answer; got {obj!r}")
    fields = {}
    for key in ("needle", "question", "answer"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise NiahError(f"{where}: needle entry needs a non-empty string field {key!r}")
        fields[key] = value.strip()
    return Needle(**fields)


def haystack_text(source: str | Path | None = None) -> str:
    """The haystack: the bundled corpus (None) or the text of the file ``source``."""
    if source is None:
        return bundled_text("corpus.txt")
    p = Path(source)
    if not p.is_file():
        raise NiahError(f"haystack file {p} does not exist or is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NiahError(f"cannot read haystack file {p}: {exc}") from None
    if not text.strip():
        raise NiahError(f"haystack file {p} is empty")
    return text


# -- tokenization -------------------------------------------------------------------------------
def _tokenizer(tok_or_lm: LoadedModel | Any) -> Any:
    return getattr(tok_or_lm, "tokenizer", tok_or_lm)


def prompt_text(tokenizer, prompt: str, *, chat: bool = True, system: str | None = None) -> str:
    """The exact string that is tokenized for ``prompt``: as ``LoadedModel.encode`` builds it
    (one user message plus the generation prompt when ``chat``)."""
    if not chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_with_offsets(
    tokenizer, text: str, *, chat: bool = True
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` (special tokens added only when not ``chat``, like
    ``LoadedModel.encode``) and each token's ``(start, end)`` character span in ``text``."""
    enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def char_span_to_tokens(
    offsets: Sequence[tuple[int, int]], start: int, end: int
) -> tuple[int, int]:
    """Token span ``[t0, t1)`` of the tokens whose characters overlap ``[start, end)``.

    A token carrying a leading space (``" The"`` at chars 9-13 for text starting at 10) overlaps
    the span and is included; zero-width (special) tokens never are.
    """
    if not 0 <= start < end:
        raise NiahError(f"bad character span ({start}, {end})")
    hits = [i for i, (a, b) in enumerate(offsets) if a < b and a < end and b > start]
    if not hits:
        raise NiahError(f"no token covers characters {start}-{end}")
    return hits[0], hits[-1] + 1


def locate_needle(
    tokenizer, text: str, needle: str, answer: str | None = None, *, chat: bool = True
) -> dict[str, Any]:
    """Where ``needle`` (and ``answer`` inside it) sit in the tokenized ``text``.

    Returns ``needle_chars``, ``needle_span``, ``answer_span`` (token spans ``[start, end)``;
    the answer span is the needle span when the answer is not found inside the needle,
    ``answer_in_needle`` says which), ``input_ids`` and ``n_tokens``. Uses the last occurrence of
    the needle (the question comes after the context but never contains the whole needle).
    """
    tokenizer = _tokenizer(tokenizer)
    c0 = text.rfind(needle)
    if not needle or c0 < 0:
        raise NiahError(f"the needle {needle[:60]!r} does not occur in the prompt")
    c1 = c0 + len(needle)
    ids, offsets = tokenize_with_offsets(tokenizer, text, chat=chat)
    needle_span = char_span_to_tokens(offsets, c0, c1)
    answer_span, found = needle_span, False
    if answer:
        a = needle.lower().find(answer.lower())
        if a >= 0:
            answer_span, found = char_span_to_tokens(offsets, c0 + a, c0 + a + len(answer)), True
    return {
        "needle_chars": (c0, c1),
        "needle_span": needle_span,
        "answer_span": answer_span,
        "answer_in_needle": found,
        "input_ids": ids,
        "n_tokens": len(ids),
    }


# -- task generation ----------------------------------------------------------------------------
def _sentence_starts(text: str) -> list[int]:
    starts = [0]
    for m in _SENTENCE_END.finditer(text):
        j = m.end()
        while j < len(text) and text[j].isspace():
            j += 1
        if j < len(text):
            starts.append(j)
    return sorted(set(starts))


def _insertion_point(hay: str, target: int) -> int:
    """The last sentence end at or before character ``target`` (0 when there is none)."""
    best = 0
    for m in _SENTENCE_END.finditer(hay):
        if m.end() > target:
            break
        best = m.end()
    return best


def _check_fractions(depths: Sequence[float]) -> list[float]:
    if isinstance(depths, (str, bytes)) or not isinstance(depths, Iterable):
        raise NiahError(f"depths must be a list of numbers in [0, 1], got {describe(depths)}")
    out = []
    for i, d in enumerate(depths):
        try:
            out.append(
                check_number(f"depths[{i}] (a fraction of the context)", d, minimum=0, maximum=1)
            )
        except ArgumentError as exc:
            raise NiahError(str(exc)) from None
    if not out:
        raise NiahError("depths is empty; give at least one depth in [0, 1]")
    return out


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Iterable):
        raise NiahError(f"lengths must be a list of token counts, got {describe(lengths)}")
    out = [
        integer(f"lengths[{i}] (context length in tokens)", n, minimum=1, error=NiahError)
        for i, n in enumerate(lengths)
    ]
    if not out:
        raise NiahError("lengths is empty; give at least one context length in tokens")
    return out


def choose_needles(
    needles: Sequence[Any] | str | Path | None, n_needles: int | None, rng: random.Random
) -> list[Needle]:
    """The needle pool (bundled, a JSONL path, or a list of dicts / :class:`Needle`), of which
    ``n_needles`` are drawn with ``rng`` (all, in order, when None)."""
    if needles is None or isinstance(needles, (str, Path)):
        pool = load_needles(needles)
    else:
        pool = [_as_needle(n, f"needles[{i}]") for i, n in enumerate(needles)]
        if not pool:
            raise NiahError(
                "needles is an empty list; give at least one needle (or None for the bundled set)"
            )
    if n_needles is None:
        return pool
    n_needles = integer("n_needles", n_needles, minimum=1, error=NiahError)
    if n_needles > len(pool):
        raise NiahError(f"n_needles={n_needles} but only {len(pool)} needles are available")
    return rng.sample(pool, n_needles)


def make_niah_tasks(
    tokenizer_or_lm: LoadedModel | Any,
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    n_needles: int | None = 2,
    needles: Sequence[Any] | str | Path | None = None,
    haystack: str | Path | None = None,
    seed: int = 0,
    chat: bool = True,
    system: str | None = None,
    template: str = PROMPT_TEMPLATE,
) -> list[dict[str, Any]]:
    """One NIAH test per (needle, context length, depth); deterministic under ``seed``.

    Args:
        tokenizer_or_lm: a ``LoadedModel`` or a Hugging Face tokenizer (fast: offsets needed).
        lengths: target prompt lengths in tokens, chat template and question included (the
            actual count, ``n_tokens``, can differ by a token or two where text merges).
        depths: needle positions as fractions of the haystack (0 = start, 1 = end); the needle
            goes in at the last sentence boundary at or before that point.
        n_needles: how many needles to draw from the pool (None: all, in order).
        needles: None (bundled set), a JSONL path, or a list of dicts / :class:`Needle`.
        haystack: None (bundled corpus) or a text file; cycled to reach the length, starting
            at a sentence drawn with ``seed`` (one haystack per needle and length, so depths
            differ only in where the needle sits).
        seed: drives the needle draw and the haystack start points.
        chat / system: build the prompt with the chat template (as ``lm.encode(chat=True)``).
        template: the user message, with ``{context}`` and ``{question}``.

    Returns:
        Prompt items (dicts): ``prompt`` (the user message, for ``lm.encode(prompt, chat=True)``),
        ``text`` (the templated string that is tokenized), ``needle``, ``question``, ``answer``,
        ``context_length`` (target), ``depth`` (requested), ``needle_depth`` (actual: share of
        the haystack's tokens before the needle), ``n_tokens``, ``needle_span`` and
        ``answer_span`` (token spans ``[start, end)`` in the tokenized ``text``),
        ``needle_chars``, ``chat``, ``system``.

    Raises:
        NiahError: bad lengths / depths / needle counts, or a needle and question that do not
            fit in a context length.
    """
    tok = _tokenizer(tokenizer_or_lm)
    lengths = _check_lengths(lengths)
    depths = _check_fractions(depths)
    if "{context}" not in template or "{question}" not in template:
        raise NiahError("template must contain {context} and {question}")
    rng = random.Random(seed)
    chosen = choose_needles(needles, n_needles, rng)
    corpus = haystack_text(haystack)
    starts = _sentence_starts(corpus)

    def count(prompt: str) -> int:
        return len(
            tokenize_with_offsets(
                tok, prompt_text(tok, prompt, chat=chat, system=system), chat=chat
            )[0]
        )

    items: list[dict[str, Any]] = []
    for needle in chosen:
        # tokens that are not haystack: template, question, needle and its separating space
        overhead = count(template.format(context=needle.needle + " ", question=needle.question))
        for length in lengths:
            budget = length - overhead
            if budget < 1:
                raise NiahError(
                    f"context length {length} is too short for the needle: the needle, question "
                    f"and chat template alone take {overhead} tokens "
                    f"(needle {needle.needle[:50]!r}); use lengths > {overhead}"
                )
            # one haystack per (needle, length): the depths differ only in where the needle is
            hay = _haystack_tokens(tok, corpus, starts[rng.randrange(len(starts))], budget)
            for depth in depths:
                items.append(_build_item(tok, hay, needle, depth, length, chat, system, template))
    return items


def _haystack_tokens(tok, corpus: str, start: int, budget: int) -> str:
    """``budget`` tokens of the corpus cycled from character ``start``, decoded to text."""
    text = corpus[start:]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    while len(ids) < budget:
        text = text.rstrip() + "\n" + corpus
        ids = tok(text, add_special_tokens=False)["input_ids"]
    return tok.decode(ids[:budget]).strip()


def _build_item(tok, hay, needle, depth, length, chat, system, template) -> dict[str, Any]:
    _, hay_offsets = tokenize_with_offsets(tok, hay, chat=True)
    n_hay = len(hay_offsets)
    t = round(depth * n_hay)
    target = len(hay) if t >= n_hay else hay_offsets[t][0]
    pos = _insertion_point(hay, target)
    # the needle opens the context (depth 0) or a paragraph, or follows a sentence's end
    if pos == 0 or hay[pos - 1] == "\n":
        context = hay[:pos] + needle.needle + " " + hay[pos:]
    else:  # hay[pos:] is empty or starts with whitespace
        context = hay[:pos] + " " + needle.needle + hay[pos:]
    before = sum(1 for _, b in hay_offsets if b <= pos)  # haystack tokens before the needle
    prompt = template.format(context=context, question=needle.question)
    text = prompt_text(tok, prompt, chat=chat, system=system)
    where = locate_needle(tok, text, needle.needle, needle.answer, chat=chat)
    return {
        "prompt": prompt,
        "text": text,
        **asdict(needle),
        "context_length": length,
        "depth": depth,
        "needle_depth": round(before / n_hay, 4),
        "n_tokens": where["n_tokens"],
        "needle_span": where["needle_span"],
        "answer_span": where["answer_span"],
        "needle_chars": where["needle_chars"],
        "chat": chat,
        "system": system,
    }
