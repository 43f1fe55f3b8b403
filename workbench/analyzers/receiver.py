"""Receiver heads (Bogdan, Macar, Nanda & Conmy 2025, "Thought Anchors: Which LLM Reasoning
Steps Matter?", arXiv:2506.19143; reference code interp-reasoning/thought-anchors,
``whitebox-analyses/attention_analysis/attn_funcs.py`` and ``receiver_head_funcs.py``).

A receiver head narrows its attention onto a few "broadcasting" sentences that every later
sentence reads. Per prompt (a multi-sentence text) and head:

1. the attention map is pooled to a sentence x sentence matrix ``S[i, j]``: the mean over the
   token pairs of the block (query tokens of sentence i, key tokens of sentence j), the
   reference's ``_compute_averaged_matrix`` (``pool="mean"``); ``pool="mass"`` keeps the
   attention *mass* on sentence j instead (the block mean times sentence j's length);
2. sentence j's vertical score is the mean of its column over the rows at least ``proximity``
   sentences later, ``i >= j + proximity`` (the reference's ``get_vertical_scores`` with
   ``proximity_ignore=4``, ``control_depth=False``, ``score_type="mean"``: the cells with
   ``i - j < proximity`` are masked, so the last ``proximity`` sentences have no score);
3. the head's score for the prompt is the kurtosis of its vertical scores: Fisher's (excess,
   0 for a normal distribution), biased (population moments), NaN scores omitted, NaN when the
   scores are all equal (``scipy.stats.kurtosis(fisher=True, bias=True, nan_policy="omit")``,
   the reference's ``get_3d_ar_kurtosis``).

The head's ``score`` is the mean of that kurtosis over prompts (the reference's
``layer_head_kurts_mean``), the receiver heads are the top-k. Everything comes from the kernels'
span-mass statistic (one key span per sentence gives each query's mass on each sentence; rows
are pooled here): no L x L map is built.

Where ours differs from the reference, and why:

- Sentences (:func:`split_sentences`) follow the reference's ``split_solution_into_chunks``
  rule but keep the text after the last boundary as a final sentence (the reference drops it);
  their tokens come from the tokenizer's offsets on the whole text (:func:`sentence_spans`), not
  from re-tokenizing each prefix, and the text's last token stays in the last sentence (the
  reference clips every block end to ``L - 1``). Tokens between sentences (whitespace) and
  special tokens belong to no sentence, as in the reference.
- The first token belongs to no sentence (``exclude_bos=True``). The reference's models
  (DeepSeek-R1 distills) prepend a BOS token, which is outside every sentence; a tokenizer
  without one (SmolLM2) puts the text's first token, the attention sink taking most of every
  head's attention, into sentence 0; a head's vertical scores are then one spike at sentence
  0, whose kurtosis is the largest n values allow ((n-1)^3 + 1) / (n (n-1)) - 3 (measured on
  SmolLM2-135M, 6 texts: 74 of 270 heads above 4.0, the top ones tied within 3e-4 of 4.125,
  the spike's value for 9 scored sentences: the top of the ranking is the sink's).
- The mean over prompts skips a prompt whose kurtosis is NaN for that head (the reference's
  plain mean would make the head NaN; it asserts that this does not happen past layer 0).

Causal check: next-token loss on each of the first ``causal_prompts`` texts from sentence
``proximity`` on (the tokens whose rows the score reads) with the top-k receiver heads vs k
random same-layer heads zero-ablated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

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
from workbench.analyzers.metrics import next_token_losses
from workbench.analyzers.params import Check, count, flag, one_of
from workbench.analyzers.prompts import as_items, bundled_text
from workbench.batching import auto_batch_size, check_batch_size, run_batched
from workbench.interventions.spans import Span, char_spans_to_tokens
from workbench.lm import Encoded, LoadedModel

#: The reference's ``proximity_ignore``: a column is read from rows at least this many
#: sentences later.
PROXIMITY = 4
#: The reference merges chunks shorter than this many characters into the next one.
MIN_CHARS = 10
SENTENCE_ENDS = ".?!"
PARAGRAPH_BREAKS = ("\n\n", "\r\n\r\n")

TEXTS: tuple[str, ...] = tuple(json.loads(bundled_text("receiver_texts.json"))["texts"])
N_PROMPTS = len(TEXTS)  # every bundled text
CAUSAL_PROMPTS = 8
QUICK = {"n_prompts": 6, "causal_prompts": 4, "draws": 3}


#: ``pool`` values: ``pool(row-averaged mass (..., n, n), key sentence lengths (n,))``.
#: ``"mean"``, the reference's: the mean over the block's token pairs, mass / len(sentence j);
#: ``"mass"``: the attention mass on sentence j, averaged over sentence i's query tokens.
POOLS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": lambda mass, lengths: mass / lengths,
    "mass": lambda mass, lengths: mass,
}


# -- sentences ----------------------------------------------------------------------------------
def split_sentences(text: str) -> list[Span]:
    """Character spans ``[start, end)`` of the sentences of ``text`` (surrounding whitespace
    excluded), by the rule of Bogdan et al.'s ``split_solution_into_chunks``: a sentence ends
    after ``.``, ``?`` or ``!`` followed by a space or a newline, or at a paragraph break
    (``\\n\\n``); a sentence shorter than :data:`MIN_CHARS` characters is merged into the next one
    (the last into the one before), its length counted as the reference counts it (the parts
    joined by one space). Unlike the reference, the text after the last boundary is a sentence
    too."""
    spans: list[Span] = []
    start = 0
    for i, ch in enumerate(text):
        after = text[i + 1 : i + 2]
        if (ch in SENTENCE_ENDS and after in (" ", "\n")) or text.startswith(PARAGRAPH_BREAKS, i):
            spans.append((start, i + 1))
            start = i + 1
    spans.append((start, len(text)))
    stripped = []
    for a, b in spans:
        part = text[a:b]
        if part.strip():
            lead = len(part) - len(part.lstrip())
            stripped.append((a + lead, a + len(part.rstrip())))
    sizes = [b - a for a, b in stripped]
    i = 0
    while i < len(stripped) and len(stripped) > 1:
        if sizes[i] >= MIN_CHARS:
            i += 1
            continue
        j = i - 1 if i == len(stripped) - 1 else i + 1  # the last merges back, others forward
        lo, hi = min(i, j), max(i, j)
        stripped[lo : hi + 1] = [(stripped[lo][0], stripped[hi][1])]
        sizes[lo : hi + 1] = [sizes[lo] + 1 + sizes[hi]]
        i = lo
    return stripped


def sentence_spans(tokenizer: Any, text: str, exclude_bos: bool = True) -> list[Span]:
    """Token spans ``[start, end)`` of the sentences of ``text`` (:func:`split_sentences`) in
    its tokenization with the tokenizer's defaults (as :meth:`LoadedModel.encode`), from the
    tokenizer's character offsets (:func:`~workbench.interventions.spans.char_spans_to_tokens`:
    a token belongs to a sentence its characters overlap; two sentences sharing a token become
    one). ``exclude_bos``: token 0 belongs to no sentence (a sentence left empty is dropped)."""
    spans = char_spans_to_tokens(tokenizer, text, split_sentences(text))
    if exclude_bos:
        spans = [(max(a, 1), b) for a, b in spans if b > 1]
    return spans


# -- the score ----------------------------------------------------------------------------------
def pool_sentences(mass: torch.Tensor, spans: Sequence[Span], pool: str = "mean") -> torch.Tensor:
    """Sentence x sentence matrix from per-query sentence masses.

    Args:
        mass: ``(..., T, n)``: each query token's attention mass on each of the ``n`` sentences
            (the kernels' span mass with one key span per sentence).
        spans: the ``n`` sentences' token spans ``(start, end)`` (rows of ``mass``).
        pool: ``"mean"`` (the reference: mean over the block's token pairs) or ``"mass"``
            (:data:`POOLS`).

    Returns:
        ``(..., n, n)``: ``[i, j]`` = mean over the query tokens of sentence i of their mass on
        sentence j, divided by sentence j's length for ``"mean"``.
    """
    n_tokens = mass.shape[-2]
    rows = torch.zeros(len(spans), n_tokens, dtype=mass.dtype, device=mass.device)
    for i, (a, b) in enumerate(spans):
        rows[i, a:b] = 1.0 / (b - a)
    lengths = torch.tensor([b - a for a, b in spans], dtype=mass.dtype, device=mass.device)
    return POOLS[pool](rows @ mass, lengths)


def vertical_scores(pooled: torch.Tensor, proximity: int = PROXIMITY) -> torch.Tensor:
    """``(..., n, n)`` -> ``(..., n)``: column j's mean over rows ``i >= j + proximity``
    (Bogdan et al.'s ``get_vertical_scores``); NaN for the last ``proximity`` sentences, which
    have no such row."""
    n = pooled.shape[-1]
    idx = torch.arange(n, device=pooled.device)
    keep = ((idx[:, None] - idx[None, :]) >= proximity).to(pooled.dtype)  # (i, j)
    return (pooled * keep).sum(-2) / keep.sum(0)  # 0 / 0 = NaN where no row is read


def excess_kurtosis(x: torch.Tensor) -> torch.Tensor:
    """Fisher's excess kurtosis over the last axis, population moments, NaNs omitted:
    ``m4 / m2**2 - 3``; NaN where no value is left or the values are all equal
    (``m2 <= (eps * mean)**2``, scipy's rule). As ``scipy.stats.kurtosis(x, axis=-1,
    fisher=True, bias=True, nan_policy="omit")``, the reference's ``get_3d_ar_kurtosis``.

    ``x``: ``(..., n)`` (float64 advised) -> ``(...)``."""
    ok = ~torch.isnan(x)
    n = ok.sum(-1)
    mean = torch.where(ok, x, 0.0).sum(-1) / n
    dev = torch.where(ok, x - mean[..., None], 0.0)
    m2 = (dev**2).sum(-1) / n
    m4 = (dev**4).sum(-1) / n
    flat = m2 <= (torch.finfo(x.dtype).eps * mean) ** 2
    out = m4 / m2**2 - 3.0
    return torch.where(flat | (n == 0), torch.nan, out)


# -- model runs ---------------------------------------------------------------------------------
def sentence_masses(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    spans: Sequence[Sequence[Span]],
    batch_size: int | str = "auto",
) -> Iterator[torch.Tensor]:
    """Per prompt, in order: ``(layers, heads, T, n)`` float64, each query token's attention
    mass on each of the prompt's ``n`` sentences, from the statistics probe's span mass
    (no L x L maps). Prompts run ``batch_size`` at a time, right-padded
    (:func:`workbench.batching.run_batched`); a batch asks for the segments between every
    sentence boundary of its prompts, and each prompt adds up its sentences' segments."""
    size = check_batch_size(batch_size)
    if size == "auto":
        size = auto_batch_size(lm, max(e.n_tokens for e in encodings))
    n_layers = lm.info.n_layers
    for c0 in range(0, len(encodings), int(size)):
        chunk = range(c0, min(c0 + int(size), len(encodings)))
        bounds = sorted({b for i in chunk for span in spans[i] for b in span})
        segments = list(pairwise(bounds))

        def probe(segments=segments):
            return lm.statistics(
                received=False, entropy=False, argmax=False, distance=False, spans=segments
            )

        batch = [encodings[i] for i in chunk]
        records = run_batched(lm, batch, probe, batch_size=len(batch), progress=False)
        seg = torch.tensor(segments, dtype=torch.long)
        for i, rec in zip(chunk, records, strict=True):
            sent = torch.tensor(spans[i], dtype=torch.long)
            member = (seg[:, None, 0] >= sent[None, :, 0]) & (seg[:, None, 1] <= sent[None, :, 1])
            mass = torch.stack([rec[layer].stats["span_mass"][0] for layer in range(n_layers)])
            yield mass.double() @ member.double()


def _check_sentences(spans: Sequence[Sequence[Span]], proximity: int) -> None:
    """Refuse, before any forward, a prompt with too few sentences to score."""
    need = proximity + 2
    for i, s in enumerate(spans):
        if len(s) < need:
            raise AnalyzerError(
                f"receiver: prompt {i} has {len(s)} sentence(s); the score needs at least "
                f"proximity + 2 = {need} (two sentences with a row {proximity} sentences "
                "later): give longer multi-sentence texts or a smaller proximity"
            )


@register_analyzer
class ReceiverAnalyzer(Analyzer):
    """Receiver heads (Bogdan et al. 2025, "Thought Anchors"); see the module docstring for the
    definition, the reference code and where ours differs from it.

    ``score``: kurtosis of the head's vertical sentence scores, mean over prompts (default
    task: the bundled reasoning texts, ``workbench/data/receiver_texts.json``).
    Evidence columns: ``vertical_peak`` (the largest vertical score of a prompt, mean over
    prompts: how much the most-read sentence receives), ``scored_prompts`` (prompts with a
    finite kurtosis). ``attrs["anchors"]``: per prompt, its sentence count and the sentence
    the top-k receiver heads read most (mean vertical score over them, the reference's
    ``get_receiver_head_scores``). ``score_lo``/``score_hi``: bootstrap interval over prompts.
    """

    name = "receiver"
    summary = "receiver heads (Thought Anchors): kurtosis of attention to earlier sentences"
    shard_rule = "mean"
    causal_prompts = CAUSAL_PROMPTS
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "proximity": count(0),
        "pool": one_of(*POOLS),
        "exclude_bos": flag(),
        "causal_prompts": count(1),
    }

    def default_items(
        self, lm: LoadedModel, *, n_prompts: int | None = None, quick: bool = False, **_: Any
    ) -> list[Any]:
        """The default task: the first ``n_prompts`` bundled reasoning texts (all of them when
        there are fewer)."""
        if n_prompts is None:
            n_prompts = QUICK["n_prompts"] if quick else N_PROMPTS
        return as_items(list(TEXTS[:n_prompts]))

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_prompts: int = N_PROMPTS,
        proximity: int = PROXIMITY,
        pool: str = "mean",
        exclude_bos: bool = True,
        causal: bool = True,
        top_k: int = 5,
        draws: int = CHEAP_DRAWS,
        causal_prompts: int = CAUSAL_PROMPTS,
        seed: int = 0,
        ranking: Sequence[tuple[int, int]] | None = None,
        quick: bool = False,
        batch_size: int | str = "auto",
    ) -> pd.DataFrame:
        """``proximity``: rows read are at least this many sentences below the column (the
        reference's 4). ``pool``: ``"mean"`` (reference) or ``"mass"``. ``exclude_bos``: the
        first token (the attention sink) belongs to no sentence (default; see the module
        docstring). ``ranking``: heads for
        the causal check, best first (default: this run's top-k). ``quick``: the small task of
        :data:`QUICK`. ``batch_size``: prompts per forward (``"auto"``: from free memory)."""
        items = as_items(prompts) or self.default_items(lm, n_prompts=n_prompts)
        encoded = [lm.encode(item["prompt"]) for item in items]  # checked before any forward
        spans = [sentence_spans(lm.tokenizer, enc.text, exclude_bos) for enc in encoded]
        _check_sentences(spans, proximity)
        per_item, peaks, verticals = [], [], []
        stream = sentence_masses(lm, encoded, spans, batch_size)
        with Scan(encoded, "receiver", progress) as scan:
            for _, (mass, s) in zip(scan, zip(stream, spans, strict=False), strict=False):
                vert = vertical_scores(pool_sentences(mass, s, pool), proximity)  # (L, H, n)
                per_item.append(excess_kurtosis(vert))
                peaks.append(vert.nan_to_num(nan=-torch.inf).max(-1).values)
                verticals.append(vert)
        require_done(scan, "receiver")
        n = scan.done
        kurt = torch.stack(per_item[:n])  # (prompts, layers, heads)
        score = kurt.nanmean(0)
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "params": {
                "n_prompts": n_prompts,
                "proximity": proximity,
                "pool": pool,
                "exclude_bos": exclude_bos,
                "causal_prompts": causal_prompts,
            },
            "kurtosis": "Fisher (excess), biased, NaN scores omitted (scipy nan_policy='omit')",
            "sentences": [len(s) for s in spans[:n]],
            **scan.attrs(),
        }
        evidence = {
            "vertical_peak": torch.stack(peaks[:n]).mean(0),
            "scored_prompts": (~torch.isnan(kurt)).sum(0).double(),
        }
        df = head_frame(lm, score, evidence, attrs, per_item=kurt)
        heads = top_heads(df, top_k) if ranking is None else [tuple(h) for h in ranking]
        df.attrs["anchors"] = _anchors(lm, encoded[:n], spans, verticals, heads[:top_k])
        if causal and not scan.interrupted:
            first = min(causal_prompts, n)
            starts = [s[proximity][0] for s in spans[:first]]
            df.attrs["causal"] = causal_evidence(
                lm,
                heads,
                lambda m: next_token_losses(m, encoded[:first], start=starts),
                metric_name=(
                    f"next-token loss (nats) from sentence {proximity} on, {first} prompts"
                ),
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=False,
            )
        return df


def _anchors(
    lm: LoadedModel,
    encoded: Sequence[Encoded],
    spans: Sequence[Sequence[Span]],
    verticals: Sequence[torch.Tensor],
    heads: Sequence[tuple[int, int]],
) -> list[dict[str, Any]]:
    """Per prompt: its sentence count and the sentence with the highest mean vertical score over
    ``heads`` (the text's "broadcasting" sentence by the receiver heads)."""
    out = []
    layers = [h[0] for h in heads]
    cols = [h[1] for h in heads]
    for enc, s, vert in zip(encoded, spans, verticals, strict=False):
        mean = vert[layers, cols].nanmean(0).numpy()  # (n,)
        best = int(np.nanargmax(mean)) if np.isfinite(mean).any() else None
        text = None
        if best is not None:
            a, b = s[best]
            text = lm.tokenizer.decode(enc.input_ids[0, a:b]).strip()
        out.append({"sentences": len(s), "anchor": best, "anchor_text": text})
    return out


__all__ = [
    "MIN_CHARS",
    "POOLS",
    "PROXIMITY",
    "TEXTS",
    "ReceiverAnalyzer",
    "excess_kurtosis",
    "pool_sentences",
    "sentence_masses",
    "sentence_spans",
    "split_sentences",
    "vertical_scores",
]
