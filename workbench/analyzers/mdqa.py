"""Multi-document QA tasks: one relevant document among distractors, at varying positions.

The task of the contextual-heads analysis (Zhu et al. 2025, "Focus Directions Make Your
Language Models Pay More Attention to Relevant Contexts", arXiv 2503.23306; their MDQA setting
follows Liu et al.'s "Lost in the Middle"): a question, several short documents, exactly one
of which holds the answer, the relevant one placed at every position in turn.

Facts and distractors come from ``workbench/data/mdqa_facts.jsonl``, written for the project:
fictional facts (so the answer has to be read from the context, not recalled) each with a
question and answer, plus filler documents that answer nothing. Distractors of an item are
other facts' documents and fillers.

Items are plain dicts (JSON-serialisable, usable as prompt items)::

    {"prompt": ..., "documents": [...], "relevant": 2, "doc_chars": [[a, b], ...],
     "question": ..., "answer": ..., "aliases": [...], "fact_id": ...}

``doc_chars`` are character ranges of each document inside ``prompt``. Token spans depend on
the tokenizer and on the chat template, so they are located by :func:`encode_item` in the exact
text that is tokenized, through the tokenizer's offset mapping.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from probes.checks import integer
from probes.checks import text as check_text
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.prompts import bundled_text

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

FACTS_FILE = "mdqa_facts.jsonl"
INSTRUCTION = "Answer the question using the documents below."
Span = tuple[int, int]


def load_facts(name: str = FACTS_FILE) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The bundled ``(facts, fillers)``: facts have ``document, question, answer`` (and
    optional ``aliases``); fillers (``"distractor": true``) have a ``document`` only."""
    facts, fillers = [], []
    for number, line in enumerate(bundled_text(name).splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "document" not in row:
            raise AnalyzerError(f"{name}, line {number}: no 'document'")
        if row.get("distractor"):
            fillers.append(row)
        elif not all(row.get(k) for k in ("question", "answer")):
            raise AnalyzerError(f"{name}, line {number}: a fact needs 'question' and 'answer'")
        else:
            facts.append(row)
    return facts, fillers


def split_facts(
    facts: Sequence[dict[str, Any]], n_train: int, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic split of the facts into ``(train, eval)``, ``n_train`` for training: the
    focus directions are trained on questions never used to evaluate them."""
    if not 0 <= n_train < len(facts):
        raise AnalyzerError(f"n_train must be in [0, {len(facts)}), got {n_train}")
    order = list(range(len(facts)))
    random.Random(f"split-{seed}").shuffle(order)
    train = [facts[i] for i in sorted(order[:n_train])]
    held = [facts[i] for i in sorted(order[n_train:])]
    return train, held


def build_prompt(documents: Sequence[str], question: str) -> tuple[str, list[Span]]:
    """The user message and each document's character range ``[a, b)`` inside it."""
    parts = [INSTRUCTION, "\n\n"]
    pos = len(INSTRUCTION) + 2
    chars: list[Span] = []
    for i, doc in enumerate(documents):
        label = f"Document [{i + 1}]: "
        parts.append(label)
        pos += len(label)
        chars.append((pos, pos + len(doc)))
        parts.append(doc)
        pos += len(doc)
        parts.append("\n")
        pos += 1
    parts.append(f"\nQuestion: {question}")
    prompt = "".join(parts)
    for (a, b), doc in zip(chars, documents, strict=True):
        assert prompt[a:b] == doc
    return prompt, chars


def make_items(
    n_items: int = 10,
    n_docs: int = 5,
    seed: int = 0,
    *,
    facts: Sequence[dict[str, Any]] | None = None,
    fillers: Sequence[dict[str, Any]] | None = None,
    n_fillers: int | None = None,
) -> list[dict[str, Any]]:
    """``n_items`` MDQA items with ``n_docs`` documents each; deterministic under ``seed``.

    Item ``i`` asks about fact ``i`` of a seeded permutation of ``facts`` (cycling if there are
    more items than facts) and puts its document at position ``i % n_docs``, so the relevant
    document visits every position. Distractors: ``n_fillers`` filler documents (default
    ``(n_docs - 1) // 2``) and other facts' documents for the rest, in seeded order.
    """
    n_items = integer("n_items", n_items, minimum=1, error=AnalyzerError)
    n_docs = integer("n_docs", n_docs, minimum=1, error=AnalyzerError)
    if facts is None or fillers is None:
        all_facts, all_fillers = load_facts()
        facts = all_facts if facts is None else facts
        fillers = all_fillers if fillers is None else fillers
    facts, fillers = list(facts), list(fillers)
    if not facts:
        raise AnalyzerError("no facts to ask about")
    n_fill = (n_docs - 1) // 2 if n_fillers is None else int(n_fillers)
    n_fill = min(n_fill, len(fillers), n_docs - 1)
    if n_docs - 1 - n_fill > len(facts) - 1:
        raise AnalyzerError(
            f"not enough documents for {n_docs} per item: {len(facts)} facts and "
            f"{len(fillers)} fillers"
        )
    rng = random.Random(seed)
    order = list(range(len(facts)))
    rng.shuffle(order)
    items = []
    for i in range(n_items):
        fact = facts[order[i % len(facts)]]
        others = [f for f in facts if f is not fact]
        distractors = rng.sample(fillers, n_fill) + rng.sample(others, n_docs - 1 - n_fill)
        rng.shuffle(distractors)
        relevant = i % n_docs
        docs = [d["document"] for d in distractors]
        docs.insert(relevant, fact["document"])
        prompt, chars = build_prompt(docs, fact["question"])
        items.append(
            {
                "prompt": prompt,
                "documents": docs,
                "relevant": relevant,
                "doc_chars": [list(c) for c in chars],
                "question": fact["question"],
                "answer": fact["answer"],
                "aliases": list(fact.get("aliases", [])),
                "fact_id": fact.get("id", ""),
            }
        )
    return items


def token_spans(offsets: Sequence[Sequence[int]], char_spans: Sequence[Span]) -> list[Span]:
    """Token ranges ``[a, b)`` covering character ranges, from a tokenizer's offset mapping.

    A token belongs to a span when its characters overlap it, so a BPE token carrying the
    span's leading space (``" The"`` starting one character early) is inside. Zero-width
    tokens (special tokens) never are. Raises when a span covers no token.
    """
    out: list[Span] = []
    for a, b in char_spans:
        inside = [t for t, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
        if not inside:
            raise AnalyzerError(f"character span {(a, b)} covers no token")
        out.append((inside[0], inside[-1] + 1))
    return out


@dataclass(frozen=True)
class EncodedItem:
    """An item tokenized as the model sees it.

    ``enc``: the :class:`~workbench.lm.Encoded` prompt (chat template applied when ``chat``);
    ``spans``: token range of every document; ``relevant``: index of the relevant one;
    ``answer_ids``: the gold answer's tokens as the assistant turn would start them.
    """

    enc: Any
    spans: list[Span]
    relevant: int
    answer_ids: list[int]
    item: dict[str, Any]

    @property
    def relevant_span(self) -> Span:
        return self.spans[self.relevant]

    @property
    def n_prompt(self) -> int:
        return self.enc.n_tokens


def encode_item(lm: LoadedModel, item: dict[str, Any], *, chat: bool = True) -> EncodedItem:
    """Tokenize an item and locate its documents' token spans in the exact tokenized text.

    Works for generated items and for user items that give ``prompt``, ``documents`` (each
    document's text, found verbatim in the prompt), ``relevant`` and ``answer``.
    """
    for key in ("prompt", "documents", "relevant", "answer"):
        if key not in item:
            raise AnalyzerError(f"MDQA item needs {key!r} (has {sorted(item)})")
    docs = item["documents"]
    if isinstance(docs, (str, bytes)) or not isinstance(docs, (list, tuple)):
        raise AnalyzerError(f"MDQA item 'documents' must be a list of strings, got {docs!r:.60}")
    docs = [check_text("a document of an MDQA item", d) for d in docs]
    relevant = integer("MDQA item 'relevant'", item["relevant"], error=AnalyzerError)
    if not docs or not 0 <= relevant < len(docs):
        raise AnalyzerError(f"relevant={relevant} is not a document index (0..{len(docs) - 1})")
    enc = lm.encode(item["prompt"], chat=chat)
    text = enc.text
    base = text.find(item["prompt"])
    if base < 0:
        raise AnalyzerError("the prompt does not appear verbatim in the tokenized text")
    if "doc_chars" in item:
        chars = [
            (base + integer("doc_chars", a, minimum=0), base + integer("doc_chars", b, minimum=0))
            for a, b in item["doc_chars"]
        ]
    else:
        chars, start = [], base
        for doc in docs:
            at = text.find(doc, start)
            if at < 0:
                raise AnalyzerError(f"document not found in the prompt: {doc[:60]!r}")
            chars.append((at, at + len(doc)))
            start = at + len(doc)
    for (a, b), doc in zip(chars, docs, strict=True):
        if text[a:b] != doc:
            raise AnalyzerError(f"doc_chars do not match document {doc[:60]!r}")
    tok = lm.tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    if list(tok["input_ids"]) != enc.input_ids[0].tolist():
        raise AnalyzerError("tokenizing with offsets gave other tokens than encode()")
    spans = token_spans(tok["offset_mapping"], chars)
    answer_ids = lm.tokenizer(str(item["answer"]), add_special_tokens=False)["input_ids"]
    return EncodedItem(enc, spans, relevant, list(answer_ids), dict(item))


def is_correct(generated: str, item: dict[str, Any]) -> bool:
    """Answer containment (the MDQA accuracy of Liu et al.): the answer or an alias occurs in
    the generation, case-insensitive."""
    text = generated.lower()
    answers = [item["answer"], *item.get("aliases", [])]
    return any(str(a).lower() in text for a in answers if str(a).strip())


def answer_rows(n_prompt: int, n_answer: int) -> torch.Tensor:
    """Query positions whose next-token prediction is an answer token: the last prompt token
    (predicting the first answer token) and every answer token but the last."""
    return torch.arange(n_prompt - 1, n_prompt - 1 + n_answer)


def response_rows(n_prompt: int, n_answer: int) -> torch.Tensor:
    """Query positions *at* the answer tokens, one later than :func:`answer_rows`: the rows the
    contextual-heads reference code reads (billzyx/focus_direction
    ``extract_attention_with_range`` over the response's token range)."""
    return torch.arange(n_prompt, n_prompt + n_answer)


#: The contextual analyzer's ``rows`` values: ``rows(n_prompt, n_answer) -> positions``.
ANSWER_ROWS = {"producing": answer_rows, "response": response_rows}
