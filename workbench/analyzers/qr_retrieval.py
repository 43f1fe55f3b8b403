"""Query-focused retrieval heads (QRHead: Zhang, Yin, Yen, Chen and Ye 2025, "Query-Focused
Retrieval Heads Improve Long-Context Reasoning and Re-ranking", EMNLP 2025, arXiv 2506.09944;
reference code princeton-pli/QRHead, ``exp_scripts/detection/detect_qrhead_lme.py`` and
``src/qrretriever/attn_retriever.py``).

A head's QR score: the attention its query-span rows put on the gold document's tokens, minus
the same with a null query (``"N/A"``), summed over the gold document's tokens after dropping
the tokens below ``mean - 2 std``, averaged over queries. The rule, its prompt layout and where
ours differs from the reference are in :mod:`workbench.analyzers.qr_rule`.

Attention comes from captures restricted to the query-span rows (``lm.capture(query_window=
...)``: a few dozen rows of every head, never an L x L map), the query prompt and its null
twin in one right-padded batch (:mod:`workbench.batching`). The outlier rule needs every
document token's value, so span masses alone (the statistics probe) do not suffice; the
evidence column ``score_unfiltered`` is what they would give.

Causal evidence: the gold answer's mean log-probability on the multi-document QA prompts of
the same items (:func:`workbench.analyzers.contextual_runs.answer_logprobs`, the contextual
analyzer's smooth metric) with the top-k QR heads uniform-ablated vs k random heads of the
same layers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from probes.errors import CaptureTooLargeError
from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import CHEAP_DRAWS, causal_evidence
from workbench.analyzers.contextual_runs import answer_logprobs
from workbench.analyzers.mdqa import EncodedItem, build_prompt, encode_item, make_items
from workbench.analyzers.params import Check, count, words
from workbench.analyzers.prompts import as_items
from workbench.analyzers.qr_rule import NULL_QUERY, QRPair, encode_pair, key_attention, pair_scores
from workbench.batching import auto_batch_size, check_batch_size, run_batched
from workbench.lm import LoadedModel

#: Default task: bundled MDQA facts (workbench/data/mdqa_facts.jsonl), one gold document among
#: ``N_DOCS``; quick mode keeps a smaller one.
N_ITEMS = 24
N_DOCS = 10
CAUSAL_PROMPTS = 8
QUICK = {"n_items": 8, "n_docs": 5, "causal_prompts": 4, "draws": 3}
EVIDENCE = ("mass_query", "mass_null", "score_unfiltered", "top1_gold")


def _window(pairs: Sequence[QRPair]) -> tuple[int, int]:
    """The query rows a batch of pairs needs: from the earliest query span to the longest
    prompt's end."""
    lo = min(p.query_start for p in pairs)
    hi = max(max(p.enc.n_tokens, p.null.n_tokens) for p in pairs)
    return lo, hi


def items_per_batch(lm: LoadedModel, pairs: Sequence[QRPair], batch_size: int | str) -> int:
    """Items (two prompts each) per forward: ``batch_size``, or for ``"auto"`` the most that
    fit both the forward's memory (:func:`workbench.batching.auto_batch_size`) and the capture
    budget for the widest window any batch can have."""
    size = check_batch_size(batch_size)
    if size != "auto":
        return int(size)
    longest = max(max(p.enc.n_tokens, p.null.n_tokens) for p in pairs)
    size = max(1, auto_batch_size(lm, longest) // 2)
    probe = lm.capture(maps=True, query_window=_window(pairs))
    while size > 1:
        try:
            probe.check_fits(longest, batch=2 * size)
            break
        except CaptureTooLargeError:
            size //= 2
    return size


def _fits(capture: Any, batch: Sequence[Any]) -> None:
    """Refuse (CaptureTooLargeError) a batch whose kept query rows would not fit in memory."""
    capture.check_fits(max(e.n_tokens for e in batch), batch=len(batch))


def _key_attention(records: Any, n_layers: int, window_start: int, query_start: int) -> Tensor:
    """(layers, heads, n_keys): mean over one prompt's query-span rows, from its records of a
    capture whose window starts at ``window_start``."""
    skip = query_start - window_start
    return torch.stack(
        [key_attention(records[layer].maps[0][:, skip:]) for layer in range(n_layers)]
    )


def query_key_attention(
    lm: LoadedModel, pairs: Sequence[QRPair], batch_size: int | str = "auto"
) -> Iterator[tuple[Tensor, Tensor]]:
    """Per pair, in order: ``(query, null)`` key attention ``(layers, heads, n_keys)`` of its
    two prompts (:func:`~workbench.analyzers.qr_rule.key_attention`), computed a batch of
    :func:`items_per_batch` consecutive pairs at a time (both prompts of each in one
    right-padded forward; the capture keeps only the rows from the batch's earliest query span
    on). Memory of every batch is checked before its forward."""
    pairs = list(pairs)
    if not pairs:
        return
    size = items_per_batch(lm, pairs, batch_size)
    n_layers = lm.info.n_layers
    for first in range(0, len(pairs), size):
        chunk = pairs[first : first + size]
        window = _window(chunk)
        encs = [e for p in chunk for e in (p.enc, p.null)]
        records = run_batched(
            lm,
            encs,
            lambda window=window: lm.capture(maps=True, query_window=window),
            batch_size=len(encs),
            check=_fits,
            progress=False,
        )
        for i, p in enumerate(chunk):
            yield (
                _key_attention(records[2 * i], n_layers, window[0], p.query_start),
                _key_attention(records[2 * i + 1], n_layers, window[0], p.query_start),
            )


def qa_item(item: dict[str, Any], gold: Sequence[int]) -> dict[str, Any]:
    """The multi-document QA item of a QR item (:func:`workbench.analyzers.mdqa.build_prompt`),
    the first gold document as the relevant one, for the causal metric."""
    prompt, chars = build_prompt(item["documents"], item["question"])
    return {**item, "prompt": prompt, "doc_chars": chars, "relevant": gold[0]}


def _check_items(items: list[dict[str, Any]], causal: bool) -> None:
    need = ("documents", "relevant", "question", *(("answer",) if causal else ()))
    for i, it in enumerate(items):
        missing = [k for k in need if k not in it]
        if missing:
            raise AnalyzerError(
                f"qr_retrieval: prompt item {i} lacks {missing}; items need 'documents' (the "
                "document texts), 'relevant' (gold index or indices), 'question' and, for the "
                "causal check, 'answer'"
            )


@register_analyzer
class QRRetrievalAnalyzer(Analyzer):
    """Query-focused retrieval heads (Zhang et al. 2025, arXiv 2506.09944; reference
    princeton-pli/QRHead). See the module docstring and :mod:`workbench.analyzers.qr_rule`.

    ``score``: the QR score, mean over queries of the gold documents' calibrated, outlier-
    filtered attention of the query span (``score_lo``/``score_hi``: bootstrap over queries).
    Evidence (means over queries): ``mass_query`` / ``mass_null`` (the gold documents' mean
    query-row attention with the query / the null query), ``score_unfiltered`` (their
    difference: the score with every token kept), ``top1_gold`` (share of queries where the
    head alone, as the reference's re-ranker, ranks a gold document first; chance is
    1 / ``n_docs`` for one gold document).

    Prompts: None (``n_items`` bundled MDQA items with ``n_docs`` documents, the gold one at
    every position in turn; :func:`workbench.analyzers.mdqa.make_items`), or items with
    ``documents``, ``question``, ``relevant`` (an index or a list: the reference sums over
    several gold documents) and ``answer`` (for the causal check; optional ``aliases``).
    ``null_query``: the calibration query (the reference's ``"N/A"``). ``batch_size``: items
    per forward (two prompts each). Causal check: gold answer log-prob (nats/token) on the QA
    prompts of the first ``causal_prompts`` items, top-k vs ``draws`` random same-layer sets,
    uniform ablation; ``ranking`` gives the heads instead of this run's top-k (report shards).
    ``quick``: :data:`QUICK`.
    """

    name = "qr_retrieval"
    summary = "query-focused retrieval heads (QRHead): query-calibrated attention on gold documents"
    shard_rule = "mean"
    causal_prompts = CAUSAL_PROMPTS
    item_fields = ("documents", "relevant", "question", "answer")
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "n_items": count(1),
        "n_docs": count(2),
        "null_query": words(optional=False, allow_empty=False),
        "causal_prompts": count(1),
    }

    def default_items(
        self,
        lm: LoadedModel,
        *,
        n_items: int | None = None,
        n_docs: int | None = None,
        seed: int = 0,
        quick: bool = False,
        **_: Any,
    ) -> list[Any]:
        """The bundled task's items (deterministic under ``seed``)."""
        sizes = QUICK if quick else {"n_items": N_ITEMS, "n_docs": N_DOCS}
        n_items = sizes["n_items"] if n_items is None else n_items
        n_docs = sizes["n_docs"] if n_docs is None else n_docs
        return make_items(n_items, n_docs, seed)

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_items: int = N_ITEMS,
        n_docs: int = N_DOCS,
        null_query: str = NULL_QUERY,
        chat: bool = True,
        causal: bool = True,
        top_k: int = 5,
        draws: int = CHEAP_DRAWS,
        causal_prompts: int = CAUSAL_PROMPTS,
        seed: int = 0,
        ranking: Sequence[tuple[int, int]] | None = None,
        quick: bool = False,
        batch_size: int | str = "auto",
    ) -> pd.DataFrame:
        items = as_items(prompts)
        user = bool(items)
        if user:
            _check_items(items, causal)
        else:
            items = self.default_items(lm, n_items=n_items, n_docs=n_docs, seed=seed)
        # every prompt encoded and checked before the first forward
        pairs = [encode_pair(lm, it, null_query=null_query, chat=chat) for it in items]
        held: list[EncodedItem] = []
        if causal:
            held = [
                encode_item(lm, qa_item(p.item, p.gold), chat=chat) for p in pairs[:causal_prompts]
            ]
        per_item: list[dict[str, Tensor]] = []
        stream = query_key_attention(lm, pairs, batch_size)
        with Scan(pairs, self.name, progress) as scan:
            for pair, (query, null) in zip(scan, stream, strict=False):
                per_item.append(pair_scores(query, null, pair.spans, pair.gold))
        require_done(scan, self.name)
        stacked = {k: torch.stack([d[k] for d in per_item]) for k in per_item[0]}
        means = {k: v.mean(0) for k, v in stacked.items()}
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "mean over queries of the gold documents' attention from the query span minus "
                "that with the null query, summed over gold-document tokens above mean - 2 std "
                "(QRHead, Zhang et al. 2025)"
            ),
            "params": {
                "n_items": len(items),
                "n_docs": None if user else n_docs,
                "null_query": null_query,
                "chat": chat,
                "seed": seed,
                "causal_prompts": causal_prompts,
                "task": "user prompts" if user else "bundled mdqa_facts",
            },
            "chance_top1": None if user else 1.0 / n_docs,
            "query_rows": [p.enc.n_tokens - p.query_start for p in pairs[: scan.done]],
            **scan.attrs(),
        }
        evidence = {k: means[k] for k in EVIDENCE}
        df = head_frame(lm, means["score"], evidence, attrs, per_item=stacked["score"])
        if causal and not scan.interrupted:
            df.attrs["causal"] = causal_evidence(
                lm,
                top_heads(df, top_k) if ranking is None else [tuple(h) for h in ranking],
                lambda m: answer_logprobs(m, held),
                metric_name=f"gold answer log-prob (nats/token), {len(held)} MDQA prompts",
                k=top_k,
                draws=draws,
                seed=seed,
                mode="uniform",
            )
        return df


__all__ = ["QRRetrievalAnalyzer", "items_per_batch", "qa_item", "query_key_attention"]
