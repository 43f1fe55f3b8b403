"""The QRHead scoring rule and its prompts (Zhang, Yin, Yen, Chen and Ye 2025, "Query-Focused
Retrieval Heads Improve Long-Context Reasoning and Re-ranking", EMNLP 2025, arXiv 2506.09944;
reference code princeton-pli/QRHead, ``src/qrretriever/attn_retriever.py``).

The reference's rule (``AttnBasedRetriever.score_docs_per_head_for_detection`` and
``score_per_token_attention_to_query``), re-implemented here on tensors:

1. The prompt lists the documents, then an instruction, the query and the chat template's
   assistant header (:func:`qr_prompt`); the *query span* is everything from the instruction to
   the end of the prompt (the reference's ``query_content``: instruction, ``"Query:"``, the
   query and the chat suffix).
2. For every head, the attention of each query-span row on every key, averaged over the rows
   (:func:`key_attention`).
3. The same for a prompt whose query is the *null query* ``"N/A"`` (the reference's
   calibration; the tokens before the query span are identical), and the difference of the two
   over the keys both prompts share (:func:`calibrate`).
4. Per document, its tokens' calibrated values with the outliers dropped: a token counts when
   its value is strictly above ``mean - 2 * std`` over the document's tokens (``std`` with
   Bessel's correction, torch's default, as the reference's ``Tensor.std``), and the counted
   values are summed (:func:`outlier_sum`; the reference's lines ``threshold =
   curr_doc_per_tok_scores_CAL.mean(dim=-1) - 2*curr_doc_per_tok_scores_CAL.std(dim=-1)`` and
   ``tok_mask = curr_doc_per_tok_scores_CAL > threshold``). A one-token document has no
   standard deviation (NaN): no token passes and its score is 0, as in the reference.
5. A query's head score is the sum of its gold documents' scores (the reference's
   ``lme_eval``); the head's QR score is the mean over queries.

Where ours differs: documents are numbered ``[i] text`` (the bundled facts have no titles, the
reference writes ``[i] title\\ntext``); paragraphs are separated by ``"\\n\\n"`` (the
reference's default; it writes ``" \\n\\n"`` for Llama); the chat template is the model's own
(``chat=True``, with its default system prompt where it has one; the reference writes Llama's
user and assistant headers by hand, without a system turn); attention is the model's float32
attention through the workbench kernels (the reference recomputes softmax(q k^T / sqrt(d)) in
float16 from the cached post-RoPE queries and keys: the same probabilities up to rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from probes.checks import integer
from probes.checks import text as check_text
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.mdqa import Span, token_spans

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel

#: The reference's prompt pieces (``AttnBasedRetriever.get_prompt``).
OPENING = "Here are some paragraphs:"
INSTRUCTION = (
    "Please find information that are relevant to the following query in the paragraphs above."
)
SEPARATOR = "\n\n"
#: The reference's calibration query (``null_query="N/A"``).
NULL_QUERY = "N/A"
#: Tokens whose calibrated value is at or below ``mean - OUTLIER_STD * std`` are dropped.
OUTLIER_STD = 2.0


def qr_prompt(documents: Sequence[str], query: str) -> tuple[str, list[Span], int]:
    """The user message of the reference layout, each document's character range ``[a, b)``
    in it (``"[i] "`` included, as the reference's ``doc_content``) and the character where the
    query span starts (the instruction)."""
    text = OPENING
    chars: list[Span] = []
    for i, doc in enumerate(documents):
        piece = f"[{i + 1}] {doc}"
        text += SEPARATOR
        chars.append((len(text), len(text) + len(piece)))
        text += piece
    text += SEPARATOR
    query_at = len(text)
    text += f"{INSTRUCTION}{SEPARATOR}Query: {query}"
    return text, chars, query_at


@dataclass(frozen=True)
class QRPair:
    """One query's two prompts as the model sees them.

    ``enc``: the prompt with the query; ``null``: the same with the null query; ``spans``:
    every document's token range ``[a, b)`` (the same in both); ``gold``: indices of the gold
    documents; ``query_start``: the first token of the query span (the same in both; the query
    span runs to each prompt's end); ``item``: the item it came from.
    """

    enc: Encoded
    null: Encoded
    spans: list[Span]
    gold: tuple[int, ...]
    query_start: int
    item: dict[str, Any]


def gold_indices(value: Any, n_docs: int) -> tuple[int, ...]:
    """An item's ``relevant`` (one index or a non-empty list of them) as sorted unique indices
    of its ``n_docs`` documents."""
    values = [value] if not isinstance(value, (list, tuple)) else list(value)
    if not values:
        raise AnalyzerError("a QR item's 'relevant' is empty; give the gold document index")
    out = []
    for v in values:
        i = integer("a QR item's 'relevant'", v, error=AnalyzerError)
        if not 0 <= i < n_docs:
            raise AnalyzerError(f"relevant={i} is not a document index (0..{n_docs - 1})")
        out.append(i)
    return tuple(sorted(set(out)))


def _encode(lm: LoadedModel, content: str, chars: list[Span], query_at: int, chat: bool):
    enc = lm.encode(content, chat=chat)
    base = enc.text.find(content)
    if base < 0:
        raise AnalyzerError("the QR prompt does not appear verbatim in the tokenized text")
    tok = lm.tokenizer(enc.text, add_special_tokens=not chat, return_offsets_mapping=True)
    if list(tok["input_ids"]) != enc.input_ids[0].tolist():
        raise AnalyzerError("tokenizing with offsets gave other tokens than encode()")
    shifted = [(base + a, base + b) for a, b in chars]
    spans = token_spans(tok["offset_mapping"], [*shifted, (base + query_at, len(enc.text))])
    return enc, spans[:-1], spans[-1][0]


def encode_pair(
    lm: LoadedModel, item: dict[str, Any], *, null_query: str = NULL_QUERY, chat: bool = True
) -> QRPair:
    """Both prompts of an item (``documents``: list of texts, ``question``, ``relevant``: the
    gold index or indices), with the documents' token spans and the query span's start.

    Raises :class:`AnalyzerError` for a malformed item, or when the two prompts' tokens differ
    before the query span (the reference asserts the same)."""
    docs = item.get("documents")
    if isinstance(docs, (str, bytes)) or not isinstance(docs, (list, tuple)) or not docs:
        raise AnalyzerError(
            "a QR item needs 'documents' (a non-empty list of texts), 'question' and "
            f"'relevant' (gold index or indices); got documents={docs!r:.60}"
        )
    docs = [check_text("a document of a QR item", d) for d in docs]
    question = check_text("a QR item's 'question'", item.get("question"))
    gold = gold_indices(item.get("relevant"), len(docs))
    content, chars, query_at = qr_prompt(docs, question)
    enc, spans, start = _encode(lm, content, chars, query_at, chat)
    null_content, null_chars, null_at = qr_prompt(docs, null_query)
    null, null_spans, null_start = _encode(lm, null_content, null_chars, null_at, chat)
    same = enc.input_ids[0, :start].tolist() == null.input_ids[0, :start].tolist()
    if not same or null_start != start or null_spans != spans:
        raise AnalyzerError(
            "the query and null-query prompts tokenize differently before the query span; "
            "the calibration needs the same document tokens in both"
        )
    return QRPair(enc, null, spans, gold, start, dict(item))


# -- the rule on tensors ----------------------------------------------------------------------
def key_attention(maps: Tensor) -> Tensor:
    """``(..., n_rows, n_keys)`` attention of the query-span rows -> ``(..., n_keys)``, the mean
    over the rows (the reference's ``attn_weights.mean(1)``), in float64."""
    return maps.double().mean(-2)


def calibrate(query: Tensor, null: Tensor) -> Tensor:
    """``(..., n_keys)`` key attention with the query minus that with the null query, over the
    keys both prompts have (the reference's ``min_length`` cut): ``(..., min(n, n_null))``."""
    n = min(query.shape[-1], null.shape[-1])
    return query[..., :n].double() - null[..., :n].double()


def outlier_sum(values: Tensor, n_std: float = OUTLIER_STD) -> Tensor:
    """``(..., n)`` -> ``(...)``: the sum of the values strictly above ``mean - n_std * std``
    over the last dimension (``std`` unbiased; n = 1 gives NaN and a sum of 0, as the
    reference)."""
    if values.shape[-1] < 2:  # the reference's NaN threshold keeps nothing: say so directly
        return values.new_zeros(values.shape[:-1])
    threshold = values.mean(-1, keepdim=True) - n_std * values.std(-1, keepdim=True)
    return values.masked_fill(~(values > threshold), 0.0).sum(-1)


def document_scores(calibrated: Tensor, spans: Sequence[Span]) -> Tensor:
    """``(..., n_keys)`` calibrated key attention -> ``(..., n_docs)``: each document's
    :func:`outlier_sum` over its tokens ``[a, b)``."""
    return torch.stack([outlier_sum(calibrated[..., a:b]) for a, b in spans], dim=-1)


def span_sums(values: Tensor, spans: Sequence[Span]) -> Tensor:
    """``(..., n_keys)`` -> ``(..., n_spans)``: the plain sum over each span's keys."""
    return torch.stack([values[..., a:b].sum(-1) for a, b in spans], dim=-1)


def pair_scores(
    query: Tensor, null: Tensor, spans: Sequence[Span], gold: Sequence[int]
) -> dict[str, Tensor]:
    """One query's per-head numbers from its key attention ``query`` and ``null``
    ``(layers, heads, n_keys)`` (:func:`key_attention` of each prompt's query-span rows).

    Returns ``(layers, heads)`` tensors: ``score`` (the QR score of this query: the gold
    documents' :func:`document_scores` summed), ``mass_query`` / ``mass_null`` (the gold
    documents' attention with the query / the null query, no calibration, no outlier rule),
    ``score_unfiltered`` (their difference: the calibrated sum with every token kept) and
    ``top1_gold`` (1.0 when the head, used alone as the reference's re-ranker, ranks a gold
    document first among all documents)."""
    end = max(b for _, b in spans)
    if end > min(query.shape[-1], null.shape[-1]):
        raise AnalyzerError("a document reaches past the keys both prompts share")
    gold = list(gold)
    docs = document_scores(calibrate(query, null), spans)
    q_mass = span_sums(query.double(), spans)[..., gold].sum(-1)
    n_mass = span_sums(null.double(), spans)[..., gold].sum(-1)
    best = docs.argmax(-1)
    top1 = torch.zeros_like(best, dtype=torch.float64)
    for g in gold:
        top1 += (best == g).double()
    return {
        "score": docs[..., gold].sum(-1),
        "mass_query": q_mass,
        "mass_null": n_mass,
        "score_unfiltered": q_mass - n_mass,
        "top1_gold": top1,
    }


__all__ = [
    "INSTRUCTION",
    "NULL_QUERY",
    "OPENING",
    "OUTLIER_STD",
    "SEPARATOR",
    "QRPair",
    "calibrate",
    "document_scores",
    "encode_pair",
    "gold_indices",
    "key_attention",
    "outlier_sum",
    "pair_scores",
    "qr_prompt",
    "span_sums",
]
