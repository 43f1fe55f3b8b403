"""Classic head detectors: previous-token, duplicate-token and induction heads.

Defined as TransformerLens's ``head_detector`` defines them: a binary detection pattern P over
(query, key) pairs and the score ``sum(A * P) / sum(A)`` (error measure "mul"), averaged over
prompts. These need the full pattern of every head, so they capture maps (short prompts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

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
from workbench.analyzers.params import Check, count, flag
from workbench.analyzers.prompts import as_items, bundled_text
from workbench.analyzers.sinks import corpus_windows
from workbench.batching import captures_over
from workbench.lm import LoadedModel

#: Default task sizes, chosen by measurement (workbench.analyzers.stability_sizes); quick mode
#: keeps the earlier small task.
N_PROMPTS = 12
CAUSAL_PROMPTS = 8
QUICK = {"n_prompts": 8, "causal_prompts": 4, "draws": 3}


def previous_token_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """(T, T) with P[i, i-1] = 1."""
    n = tokens.shape[-1]
    return torch.diag(torch.ones(n - 1), -1)


def duplicate_token_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """(T, T) with P[i, j] = 1 for j < i holding the same token as i."""
    t = tokens.reshape(-1)
    same = (t.view(-1, 1) == t.view(1, -1)).float()
    return torch.tril(same, diagonal=-1)


def induction_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """(T, T) with P[i, j] = 1 when token j-1 equals token i and j <= i: the key right after
    an earlier occurrence of the current token (TransformerLens: duplicate pattern shifted one
    key to the right, first column zero, lower triangle)."""
    dup = duplicate_token_pattern(tokens)
    shifted = torch.zeros_like(dup)
    shifted[:, 1:] = dup[:, :-1]
    return torch.tril(shifted)


def pattern_score(
    maps: torch.Tensor,
    pattern: torch.Tensor,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> torch.Tensor:
    """``sum(A * P) / sum(A)`` per head for maps (..., T, T) -> (...)."""
    a = maps.double()
    if exclude_bos or exclude_current_token:
        a = a.clone()
        if exclude_bos:
            a[..., :, 0] = 0
        if exclude_current_token:
            a.diagonal(dim1=-2, dim2=-1).zero_()
    return (a * pattern.double()).sum((-1, -2)) / a.sum((-1, -2))


def repeated_word_prompts(lm: LoadedModel, n_prompts: int, n_words: int, seed: int) -> list[str]:
    """Random word sequences from the bundled corpus, each repeated twice (induction task)."""
    words = sorted(set(bundled_text("corpus.txt").split()))
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n_prompts):
        idx = torch.randperm(len(words), generator=gen)[:n_words].tolist()
        seq = " ".join(words[i] for i in idx)
        prompts.append(f"{seq} {seq}")
    return prompts


class PatternAnalyzer(Analyzer):
    """Shared driver: capture every head's map per prompt, score it against a pattern.

    ``score``: the pattern score averaged over prompts, with ``score_lo``/``score_hi`` its
    bootstrap interval over prompts. Causal check: next-token loss of each of the first
    ``causal_prompts`` prompts (on the repeated half for the repeated-sequence task) with the
    top-k heads vs k random same-layer heads zero-ablated (``draws`` random sets)."""

    pattern_fn: ClassVar[Any]
    default_task: ClassVar[str] = "corpus"
    shard_rule = "mean"
    causal_prompts = CAUSAL_PROMPTS
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "exclude_bos": flag(),
        "exclude_current_token": flag(),
        "causal_prompts": count(1),
    }

    def default_items(
        self,
        lm: LoadedModel,
        *,
        n_prompts: int | None = None,
        prompt_tokens: int = 64,
        n_words: int = 20,
        seed: int = 0,
        quick: bool = False,
        **_: Any,
    ) -> list[Any]:
        """The default task's prompts (repeated word sequences or corpus windows)."""
        if n_prompts is None:
            n_prompts = QUICK["n_prompts"] if quick else N_PROMPTS
        if self.default_task == "repeated":
            return as_items(repeated_word_prompts(lm, n_prompts, n_words, seed))
        return as_items(corpus_windows(lm, n_prompts, prompt_tokens))

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_prompts: int = N_PROMPTS,
        prompt_tokens: int = 64,
        n_words: int = 20,
        exclude_bos: bool = False,
        exclude_current_token: bool = False,
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
        ``batch_size``: prompts per forward (``"auto"``: from free memory, and every batch's
        maps must fit); batched scores equal one-prompt-at-a-time scores."""
        items = as_items(prompts)
        if not items:
            items = self.default_items(
                lm, n_prompts=n_prompts, prompt_tokens=prompt_tokens, n_words=n_words, seed=seed
            )
        # every prompt encoded (and checked) before the first forward
        encoded = [lm.encode(item["prompt"]) for item in items]
        for i, enc in enumerate(encoded):
            if enc.n_tokens < 2:
                raise AnalyzerError(
                    f"{self.name}: prompt {i} ({items[i]['prompt']!r:.60}) has {enc.n_tokens} "
                    "token(s); the pattern needs at least 2"
                )
        n_layers = lm.info.n_layers
        scores: list[torch.Tensor] = []  # (layers, heads) per prompt
        encodings = []
        stream = captures_over(lm, encoded, batch_size=batch_size, stream=True)
        with Scan(encoded, self.name, progress) as scan:
            for _, (enc, rec) in zip(scan, stream, strict=False):
                pattern = type(self).pattern_fn(enc.input_ids[0])
                one = [
                    pattern_score(
                        rec[layer].maps[0],
                        pattern,
                        exclude_bos=exclude_bos,
                        exclude_current_token=exclude_current_token,
                    )
                    for layer in range(n_layers)
                ]
                scores.append(torch.stack(one))
                encodings.append(enc)
        require_done(scan, self.name)
        per_item = torch.stack(scores[: scan.done])
        score = per_item.mean(0)
        df = head_frame(
            lm,
            score,
            attrs={
                "analyzer": self.name,
                "definition": "sum(A * P) / sum(A), TransformerLens head_detector ('mul')",
                "params": {
                    "exclude_bos": exclude_bos,
                    "exclude_current_token": exclude_current_token,
                    "default_task": self.default_task if not prompts else "user prompts",
                    "causal_prompts": causal_prompts,
                },
                **scan.attrs(),
            },
            per_item=per_item,
        )
        if causal and not scan.interrupted:
            repeated = self.default_task == "repeated"
            used = encodings[:causal_prompts]
            starts = [e.n_tokens // 2 for e in used] if repeated else 0
            df.attrs["causal"] = causal_evidence(
                lm,
                top_heads(df, top_k) if ranking is None else [tuple(h) for h in ranking],
                lambda m: next_token_losses(m, used, starts),
                metric_name=(
                    f"loss on the repeated half (nats), {len(used)} prompts"
                    if repeated
                    else f"next-token loss (nats), {len(used)} prompts"
                ),
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=False,
            )
        return df


@register_analyzer
class PreviousTokenAnalyzer(PatternAnalyzer):
    """Previous-token heads: attention share on key i-1 (TransformerLens head_detector)."""

    name = "previous_token"
    summary = "share of attention on the previous token"
    pattern_fn = staticmethod(previous_token_pattern)


@register_analyzer
class DuplicateTokenAnalyzer(PatternAnalyzer):
    """Duplicate-token heads: attention share on earlier copies of the current token."""

    name = "duplicate_token"
    summary = "share of attention on earlier copies of the current token"
    pattern_fn = staticmethod(duplicate_token_pattern)
    default_task = "repeated"


@register_analyzer
class InductionAnalyzer(PatternAnalyzer):
    """Induction heads: attention share on the token after an earlier copy of the current one
    (Olsson et al. 2022; TransformerLens head_detector pattern)."""

    name = "induction"
    summary = "share of attention on the token after an earlier copy of the current one"
    pattern_fn = staticmethod(induction_pattern)
    default_task = "repeated"
