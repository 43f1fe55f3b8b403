"""Attention sinks: first-token sink heads (Gu et al.) and hidden sinks (ACT, Yu et al.)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from probes.checks import integer, number
from workbench.analyzers.base import (
    Analyzer,
    Progress,
    Scan,
    head_frame,
    merge_mean_frames,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import CHEAP_DRAWS, causal_evidence
from workbench.analyzers.frames import INTERVAL_COLUMNS
from workbench.analyzers.metrics import next_token_losses
from workbench.analyzers.params import Check, count, one_of, real
from workbench.analyzers.prompts import as_items, bundled_text
from workbench.batching import statistics_over
from workbench.gate_means import recording_gate_means
from workbench.lm import LoadedModel
from workbench.model_parts import sink_logits

FIRST_TOKEN_THRESHOLD = 0.3  # Gu et al.'s epsilon for the Sink metric
HIDDEN_SINK_THRESHOLD = 0.1  # ACT's threshold for non-initial sinks
#: The fewest queries that must see a key before :func:`sink_rules` judges it, for reading one
#: prompt (the explorer): 2 / HIDDEN_SINK_THRESHOLD, so that no two queries alone (each gives a
#: key at most weight 1) can lift a key's mean over the hidden-sink threshold. Measured on the
#: embedded model (64 and 200 corpus tokens): with ACT's rule (1) every previous-token head has
#: 8 of its last 20 keys marked; with 20, none.
MIN_QUERIES = 20
#: The codes of :func:`sink_rules`: which rule marks a key.
NOT_JUDGED, NO_SINK, FIRST_TOKEN_SINK, HIDDEN_SINK = -1, 0, 1, 2
#: Default task sizes, chosen by measurement (workbench.analyzers.stability_sizes): the
#: split-half Spearman of the ranking and the causal check's resolution at these sizes are in
#: the module docstring of stability_sizes; quick mode keeps the earlier small task.
N_PROMPTS = 16
CAUSAL_PROMPTS = 8
QUICK = {"n_prompts": 16, "causal_prompts": 4, "draws": 3}


def sink_rules(
    sink: Any,
    *,
    offset: int = 0,
    n_tokens: int | None = None,
    first_threshold: float = FIRST_TOKEN_THRESHOLD,
    hidden_threshold: float = HIDDEN_SINK_THRESHOLD,
    min_queries: int = 1,
) -> np.ndarray:
    """Which rule marks each key as a sink, from its sink score.

    A key j's sink score is ``sum_i A[i, j] / (T - j)``, the mean attention it receives from
    the ``T - j`` queries that can see it. Key 0 is a first-token sink when its score exceeds
    ``first_threshold`` (Gu et al. 2024, "When Attention Sink Emerges in Language Models");
    a later key is a hidden sink when its score exceeds ``hidden_threshold`` (Yu et al. 2024,
    "Unveiling and Harnessing Hidden Attention Sinks", ACT).

    Where ours differs from ACT's code (``models/llama_modelling_aug.py``:
    ``nonzero(sum(A, 0) / arange(L, 0, -1) > THRES)`` then ``indices[1:]``): a key seen by
    fewer than ``min_queries`` queries is not judged (code :data:`NOT_JUDGED`), because its
    score averages over a handful of weights (the last key's score is one query's weight), so
    a previous-token head would otherwise mark its last ~10 keys. ``min_queries=1`` is ACT's
    rule. ACT's ``indices[1:]`` drops the first key that passes, which is key 0 whenever key 0
    passes (on the models it studies, always); we drop key 0 by position.

    Args:
        sink: ``(..., K)`` sink scores of the keys ``offset .. offset + K - 1``.
        offset: position of the first key of ``sink``.
        n_tokens: tokens of the prompt ``T`` (default ``offset + K``); key j is seen by
            ``T - j`` queries.
        first_threshold, hidden_threshold: the two thresholds, in [0, 1].
        min_queries: the fewest queries that must see a key for it to be judged (>= 1).

    Returns:
        ``(..., K)`` int8: :data:`FIRST_TOKEN_SINK`, :data:`HIDDEN_SINK`, :data:`NO_SINK` or
        :data:`NOT_JUDGED`.
    """
    sink = np.asarray(sink, dtype=np.float64)
    offset = integer("offset", offset, minimum=0)
    n_keys = sink.shape[-1] if sink.ndim else 0
    if n_tokens is None:
        n_tokens = offset + n_keys
    n_tokens = integer("n_tokens", n_tokens, minimum=offset + n_keys)
    first_threshold = number("first_threshold", first_threshold, minimum=0, maximum=1)
    hidden_threshold = number("hidden_threshold", hidden_threshold, minimum=0, maximum=1)
    min_queries = integer("min_queries", min_queries, minimum=1)
    positions = offset + np.arange(n_keys)
    seen_by = n_tokens - positions
    first = positions == 0
    above = sink > np.where(first, first_threshold, hidden_threshold)
    codes = np.where(above, np.where(first, FIRST_TOKEN_SINK, HIDDEN_SINK), NO_SINK)
    return np.where(seen_by >= min_queries, codes, NOT_JUDGED).astype(np.int8)


SinkRule = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, float]]


def _on_mean(score: np.ndarray, share: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """The workbench's rule: a sink head when the mean first-token score over prompts exceeds
    the threshold; Sink rate = share of sink heads."""
    is_sink = np.asarray(score) > threshold
    return is_sink, float(is_sink.mean())


def _on_each_prompt(
    score: np.ndarray, share: np.ndarray, threshold: float
) -> tuple[np.ndarray, float]:
    """The reference's rule (sail-sg/Attention-Sink ``compute_attention_sink``): the threshold
    applied per prompt and the indicator averaged over (prompt, layer, head), i.e. the mean of
    ``sink_prompt_share``; a sink head is one above the threshold on more than half the
    prompts."""
    share = np.asarray(share, dtype=np.float64)
    return share > 0.5, float(share.mean())


#: ``threshold_on`` values: ``rule(score, sink_prompt_share, threshold) -> (is_sink, rate)``,
#: arrays of any one shape.
SINK_RULES: dict[str, SinkRule] = {"mean": _on_mean, "each_prompt": _on_each_prompt}


def corpus_windows(lm: LoadedModel, n_prompts: int, n_tokens: int) -> list:
    """``n_prompts`` consecutive ``n_tokens``-token windows of the bundled corpus (decoded
    back to text), the default sink task (Gu et al. use 64-token prompts)."""
    ids = lm.tokenizer(bundled_text("corpus.txt"), add_special_tokens=False)["input_ids"]
    windows = []
    for i in range(n_prompts):
        chunk = ids[(i * n_tokens) % max(1, len(ids) - n_tokens) :][:n_tokens]
        windows.append(lm.tokenizer.decode(chunk))
    return windows


@register_analyzer
class SinkAnalyzer(Analyzer):
    """Sink score of key j: the mean attention it receives from the queries that can see it,
    ``sum_i A[i, j] / (T - j)`` (Gu et al. 2024, "When Attention Sink Emerges in Language
    Models"). A head's ``score`` is its first-token sink score averaged over prompts; heads
    above ``first_threshold`` (0.3) are sink heads and their share is the model's Sink rate.
    ``threshold_on="mean"`` (default) applies the threshold to that mean over prompts;
    ``threshold_on="each_prompt"`` is the reference code's rule (sail-sg/Attention-Sink
    ``compute_attention_sink``): the threshold applied to each prompt's score and the indicator
    averaged over prompts, layers and heads for ``sink_rate``; a head is then a sink head when
    it is one on more than half of the prompts (:data:`SINK_RULES`). ``score`` is the same
    either way.
    Hidden sinks (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks", ACT): keys
    after the first whose sink score exceeds ``hidden_threshold`` (0.1), judged by
    :func:`sink_rules` (the explorer's marks use the same function); ``min_queries``: only keys
    seen by at least that many queries count (default 1, ACT's rule, which also counts the last
    keys of a prompt, whose score averages over a few queries; :data:`MIN_QUERIES` leaves them
    out).

    Evidence columns: ``is_sink_head``, ``sink_prompt_share`` (share of prompts whose
    first-token score exceeds ``first_threshold``), ``hidden_sinks`` (mean count per prompt),
    ``hidden_sink_max`` (largest non-initial sink score among the judged keys, averaged over
    prompts), and on models
    with a learned sink logit per head (gpt-oss: OpenAI 2025, "gpt-oss-120b & gpt-oss-20b Model
    Card") ``learned_sink_mass``: the probability the learned sink takes, averaged over queries
    and prompts (0 for layers without one; ``attrs["learned_sinks"]`` says whether any exists),
    and ``learned_sink_logit``, the learned parameter itself. On gated-attention models (Qiu et
    al. 2025, "Gated Attention for Large Language Models"; AFMoE) ``output_gate_mean``: the mean
    of ``sigmoid(g)`` over positions, the head's dimensions and prompts (a gate near 0 switches
    the head off, the gated model's way to attend to nothing); ``attrs["output_gates"]`` says
    whether the model has gates (:mod:`workbench.gate_means`).
    ``attrs["hidden_sink_tokens"]``: the tokens most often acting as hidden sinks (token, count
    of (prompt, head) pairs). Read through the kernels' statistics: no L x L maps.
    Causal check: next-token loss of each of the first ``causal_prompts`` prompts with the
    top-k sink heads vs k random same-layer heads zero-ablated (``draws`` random sets).
    ``score_lo``/``score_hi``: bootstrap interval of the score over prompts.
    """

    name = "sinks"
    summary = "first-token sink heads (Gu et al.) and hidden sinks (ACT)"
    shard_rule = "mean"
    causal_prompts = CAUSAL_PROMPTS
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {  # sink scores are attention shares in [0, 1]
        "first_threshold": real(minimum=0, maximum=1),
        "hidden_threshold": real(minimum=0, maximum=1),
        "threshold_on": one_of(*SINK_RULES),
        "min_queries": count(1),
        "causal_prompts": count(1),
    }

    def default_items(
        self,
        lm: LoadedModel,
        *,
        n_prompts: int | None = None,
        prompt_tokens: int = 64,
        quick: bool = False,
        **_: Any,
    ) -> list[Any]:
        """The default task's prompts: consecutive corpus windows."""
        if n_prompts is None:
            n_prompts = QUICK["n_prompts"] if quick else N_PROMPTS
        return as_items(corpus_windows(lm, n_prompts, prompt_tokens))

    def merge(self, frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
        """Weighted means of the shards, then ``is_sink_head`` / ``sink_rate`` recomputed from
        the merged score and the hidden-sink token counts added up (each shard keeps its
        top 25 tokens, so the merged list is exact for tokens in every shard's top 25)."""
        flags = [f.drop(columns="is_sink_head") for f in frames]
        for flat, frame in zip(flags, frames, strict=True):
            flat.attrs = dict(frame.attrs)
        out = merge_mean_frames(flags)
        params = out.attrs["params"]
        rule = SINK_RULES[params.get("threshold_on", "mean")]
        share = out["sink_prompt_share"] if "sink_prompt_share" in out.columns else out["score"]
        is_sink, rate = rule(
            out["score"].to_numpy(), share.to_numpy(), float(params["first_threshold"])
        )
        after = [c for c in ("score", *INTERVAL_COLUMNS) if c in out.columns]
        out.insert(out.columns.get_loc(after[-1]) + 1, "is_sink_head", is_sink)
        out.attrs["sink_rate"] = rate
        counts: Counter[str] = Counter()
        for frame in frames:
            for entry in frame.attrs.get("hidden_sink_tokens", []):
                counts[entry["token"]] += int(entry["count"])
        out.attrs["hidden_sink_tokens"] = [
            {"token": t, "count": c} for t, c in counts.most_common(25)
        ]
        return out

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_prompts: int = N_PROMPTS,
        prompt_tokens: int = 64,
        first_threshold: float = FIRST_TOKEN_THRESHOLD,
        hidden_threshold: float = HIDDEN_SINK_THRESHOLD,
        threshold_on: str = "mean",
        min_queries: int = 1,
        causal: bool = True,
        top_k: int = 5,
        draws: int = CHEAP_DRAWS,
        causal_prompts: int = CAUSAL_PROMPTS,
        seed: int = 0,
        ranking: Sequence[tuple[int, int]] | None = None,
        quick: bool = False,
        batch_size: int | str = "auto",
    ) -> pd.DataFrame:
        """``ranking``: heads for the causal check, best first (default: this run's top-k).
        ``quick``: the small task of :data:`QUICK` (weak evidence, said in ``attrs``).
        ``batch_size``: prompts per forward (``"auto"``: from free memory); batched scores
        equal one-prompt-at-a-time scores (:mod:`workbench.batching`)."""
        items = as_items(prompts) or self.default_items(
            lm, n_prompts=n_prompts, prompt_tokens=prompt_tokens
        )
        encoded = [lm.encode(item["prompt"]) for item in items]  # checked before any forward
        n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
        first_items: list[torch.Tensor] = []  # (layers, heads) per prompt
        hidden_count = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        hidden_max = torch.zeros_like(hidden_count)
        learned = torch.zeros_like(hidden_count)
        has_learned = False
        token_counts: Counter[str] = Counter()
        encodings = []
        stream = statistics_over(
            lm, encoded, batch_size=batch_size, stream=True, received=True, entropy=False,
            argmax=False, distance=False,
        )  # fmt: skip
        with (
            recording_gate_means(lm.model, n_heads) as gates,
            Scan(encoded, "sinks", progress) as scan,
        ):
            for _, (enc, rec) in zip(scan, stream, strict=False):
                sink = torch.stack([rec[layer].stats["sink"][0] for layer in range(n_layers)])
                sink = sink.double()  # (layers, heads, T)
                first_items.append(sink[..., 0])
                rules = torch.from_numpy(
                    sink_rules(
                        sink.numpy(),
                        first_threshold=first_threshold,
                        hidden_threshold=hidden_threshold,
                        min_queries=min_queries,
                    )[..., 1:]
                )
                is_hidden = rules == HIDDEN_SINK
                hidden_count += is_hidden.sum(-1)
                judged = sink[..., 1:].masked_fill(rules == NOT_JUDGED, 0.0)
                hidden_max += judged.max(-1).values if judged.shape[-1] else 0.0
                per_token = is_hidden.sum((0, 1))  # (T-1,) heads where token is a hidden sink
                for pos in torch.nonzero(per_token).flatten().tolist():
                    token_counts[enc.tokens[pos + 1]] += int(per_token[pos])
                for layer in range(n_layers):
                    mass = rec[layer].stats.get("sink_mass")
                    if mass is not None:
                        has_learned = True
                        learned[layer] += mass[0].double().mean(-1)
                encodings.append(enc)
        require_done(scan, "sinks")
        n = scan.done
        per_item = torch.stack(first_items[:n])  # an interrupted prompt is not counted
        score = per_item.mean(0)
        share = (per_item > first_threshold).double().mean(0)
        is_sink, rate = SINK_RULES[threshold_on](
            score.numpy(), share.numpy(), float(first_threshold)
        )
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "params": {
                "n_prompts": n_prompts,
                "prompt_tokens": prompt_tokens,
                "first_threshold": first_threshold,
                "hidden_threshold": hidden_threshold,
                "threshold_on": threshold_on,
                "min_queries": min_queries,
                "causal_prompts": causal_prompts,
            },
            "sink_rate": rate,
            "learned_sinks": has_learned,
            "output_gates": gates is not None,
            "hidden_sink_tokens": [
                {"token": t, "count": c} for t, c in token_counts.most_common(25)
            ],
            **scan.attrs(),
        }
        evidence = {
            "is_sink_head": is_sink,
            "sink_prompt_share": share,
            "hidden_sinks": hidden_count / n,
            "hidden_sink_max": hidden_max / n,
        }
        if has_learned:
            evidence["learned_sink_mass"] = learned / n
            logits = sink_logits(lm.model)  # the parameters behind that mass, from the table
            if logits is not None:
                evidence["learned_sink_logit"] = torch.stack([x.detach().float() for x in logits])
        if gates is not None:
            evidence["output_gate_mean"] = gates.result()[:n].mean(0)
        df = head_frame(lm, score, evidence, attrs, per_item=per_item)
        if causal and not scan.interrupted:
            df.attrs["causal"] = causal_evidence(
                lm,
                top_heads(df, top_k) if ranking is None else [tuple(h) for h in ranking],
                lambda m: next_token_losses(m, encodings[:causal_prompts]),
                metric_name=f"next-token loss (nats), {len(encodings[:causal_prompts])} prompts",
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=False,
            )
        return df
