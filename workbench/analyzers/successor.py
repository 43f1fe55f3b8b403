"""Successor heads (Gould et al. 2023): heads whose OV circuit maps an ordinal token (Monday, 3,
March, C) to its successor (Tuesday, 4, April, D)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from probes.checks import choice
from workbench.analyzers.base import (
    Analyzer,
    AnalyzerArgumentError,
    AnalyzerError,
    Progress,
    Scan,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import CHEAP_DRAWS, causal_evidence
from workbench.analyzers.logit_attribution import metric_values
from workbench.analyzers.ov_circuit import EMBEDDINGS, effective_embeddings, head_values, readout
from workbench.analyzers.params import Check, count, one_of, word_list
from workbench.analyzers.prompts import as_items, bundled_text
from workbench.lm import LoadedModel

QUICK = {"draws": 3, "causal_prompts": 16}
#: Continuation prompts of the causal check, spread over the classes (the bundled classes give
#: 89 on SmolLM2; 48 keep 6 per class and halve the check's cost: each of the 2 + draws runs
#: is a forward over every prompt).
CAUSAL_PROMPTS = 48
CONTEXT = 3  # elements shown before the one to predict in the causal task


def bundled_ordinals() -> dict[str, dict[str, Any]]:
    """The project's ordinal lists (``workbench/data/ordinals.json``): ``{class: {"items":
    [words in order], "cyclic": bool}}`` (numbers, number words, ordinal words, days and
    their prefixes, months and their prefixes, capital letters; after Gould et al.'s tasks)."""
    return json.loads(bundled_text("ordinals.json"))["classes"]


@dataclass(frozen=True)
class OrdinalClass:
    """One ordinal sequence as tokens.

    ``words``: the sequence as written; ``ids``: the token of each word (None where it is
    several tokens with or without a leading space); ``candidates``: the distinct single
    tokens, among which the successor must come first; ``pairs``: ``(source, successor)``
    token ids of consecutive words that are both single tokens (last -> first too when
    ``cyclic``)."""

    name: str
    words: tuple[str, ...]
    ids: tuple[int | None, ...]
    cyclic: bool

    @property
    def candidates(self) -> list[int]:
        return list(dict.fromkeys(i for i in self.ids if i is not None))

    @property
    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.ids)
        steps = range(n if self.cyclic else n - 1)
        out = [(self.ids[i], self.ids[(i + 1) % n]) for i in steps]
        return [(a, b) for a, b in out if a is not None and b is not None and a != b]

    @property
    def dropped(self) -> list[str]:
        return [w for w, i in zip(self.words, self.ids, strict=True) if i is None]


def single_token(tokenizer, word: str) -> int | None:
    """The one token of ``" " + word``, else of ``word``, else None."""
    for form in (" " + word, word):
        ids = tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    return None


def ordinal_classes(tokenizer, sequences: Mapping[str, Mapping[str, Any]]) -> list[OrdinalClass]:
    """``sequences`` (``{name: {"items": [...], "cyclic": bool}}``) tokenized."""
    out = []
    for name, spec in sequences.items():
        words = tuple(str(w) for w in spec["items"])
        ids = tuple(single_token(tokenizer, w) for w in words)
        out.append(OrdinalClass(name, words, ids, bool(spec.get("cyclic", False))))
    return out


@torch.no_grad()
def successor_items(
    lm: LoadedModel,
    classes: Sequence[OrdinalClass],
    embedding: str = "mlp0",
    progress: Progress = False,
) -> tuple[Tensor, list[str], Scan]:
    """Per (source, successor) pair and head, whether the head's OV circuit ranks the successor
    strictly first among its class's tokens.

    For head (l, h) and pair (s, t) of class C: ``OV[s, c]`` for every candidate token c of C
    (:mod:`workbench.analyzers.ov_circuit`, effective embedding ``embedding``); a hit when
    ``OV[s, t] > OV[s, c]`` for every other c in C (the source s itself included).

    Returns ``(hits (n_pairs, L, H) float64, class name of each pair, scan)``; NaN for layers
    an interrupted scan did not reach.
    """
    pairs = [(c.name, s, t, c.candidates) for c in classes for s, t in c.pairs]
    if not pairs:
        raise AnalyzerError("successor: no pair of consecutive single-token elements to score")
    columns = list(dict.fromkeys(c for _, _, _, cand in pairs for c in cand))
    col = {tok: i for i, tok in enumerate(columns)}
    sources = list(dict.fromkeys(s for _, s, _, _ in pairs))
    row = {tok: i for i, tok in enumerate(sources)}
    member = torch.zeros(len(pairs), len(columns), dtype=torch.bool)
    for p, (_, _, _, cand) in enumerate(pairs):
        member[p, [col[c] for c in cand]] = True
    src = torch.tensor([row[s] for _, s, _, _ in pairs])
    succ = torch.tensor([col[t] for _, _, t, _ in pairs])
    n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
    hits = torch.full((len(pairs), n_layers, n_heads), float("nan"), dtype=torch.float64)
    resid = effective_embeddings(lm, sources, embedding)
    with Scan(list(range(n_layers)), "successor", progress) as scan:
        for layer in scan:
            circuit = readout(lm, layer, columns, dtype=torch.float64).cpu()  # (H, D, C)
            values = head_values(lm, layer, resid).double().cpu()  # (n_src, H, D)
            logits = torch.einsum("nhd,hdc->nhc", values, circuit)[src]  # (P, H, C)
            logits = logits.masked_fill(~member[:, None, :], float("-inf"))
            index = succ[:, None, None].expand(-1, n_heads, 1)
            target = logits.gather(-1, index)[..., 0]
            others = logits.scatter(-1, index, float("-inf")).amax(-1)
            hits[:, layer] = (target > others).double()
    return hits, [name for name, _, _, _ in pairs], scan


def continuation_task(lm: LoadedModel, classes: Sequence[OrdinalClass], limit: int) -> list:
    """``(input_ids (L,), target id)`` prompts "w1, w2, w3," -> w4 from each class (wrapping for
    cyclic ones), kept where the prompt's tokens followed by the target are exactly how the
    tokenizer splits the text with w4 appended; at most ``limit``, spread over the classes."""
    per_class = []
    for c in classes:
        n = len(c.words)
        found = []
        for i in range(n if c.cyclic else max(n - CONTEXT, 0)):
            target = c.ids[(i + CONTEXT) % n]
            if target is None:
                continue
            words = [c.words[(i + j) % n] for j in range(CONTEXT)]
            text = ", ".join([*words, c.words[(i + CONTEXT) % n]])
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids[-1] != target:
                continue
            found.append((torch.tensor(ids[:-1]), int(target)))
        per_class.append(found)
    out, depth = [], 0
    while len(out) < limit and any(depth < len(f) for f in per_class):
        out.extend(f[depth] for f in per_class if depth < len(f))
        depth += 1
    return out[:limit]


def _class_names(name: str, value: Any, lm: LoadedModel | None) -> list[str] | None:
    """None or a non-empty list of bundled class names (checked without the model)."""
    values = word_list()(name, value, lm)
    if values is not None:
        known = tuple(bundled_ordinals())
        for i, v in enumerate(values):
            choice(f"{name}[{i}]", v, known)
    return values


def _column(name: str) -> str:
    return "share_" + re.sub(r"\W+", "_", name).strip("_").lower()


@register_analyzer
class SuccessorAnalyzer(Analyzer):
    """Successor heads (Gould et al. 2023, "Successor Heads: Recurring, Interpretable Attention
    Heads In The Wild", arXiv:2312.09230; no released code: the succession score of its
    section 2, as re-implemented by Tigges et al. 2024, "LLM Circuit Analyses Are Consistent
    Across Training and Scale").

    ``score`` (succession score): the share of ordinal pairs (s, t), t the successor of s in a
    class (numbers, number words, ordinal words, days, months, their prefixes, letters;
    bundled in ``workbench/data/ordinals.json``), for which the head's full OV circuit
    ``OV[s, :] = W_U g_f (W_O^h W_V^{g(h)} norm_l(W_EE[s]))`` gives t the highest logit
    among the class's tokens. ``W_EE`` is the effective embedding (``embedding``, default
    ``"mlp0"``: ``W_E + MLP0(W_E)``, every layer-0 head zero-ablated; the paper's
    ``MLP0(W_E)``). Differs: a tie with another class token is a miss (the re-implementation
    counts ``==`` as a hit, so an all-zero circuit scores 1.0); the residual ``W_E`` is kept
    next to ``MLP0(W_E)``; the unembedding goes through the final norm's weight. Words are
    scored as single tokens (with a leading space when that is one token, else bare; a word
    that is neither is left out, with the pairs it is in: SmolLM2 splits numbers into digits,
    so only 1-9 remain; ``attrs["dropped"]``). ``score_lo``/``score_hi``: bootstrap over pairs.

    Evidence columns: ``share_<class>``, the score within each class. Weights only.

    ``prompts``: your own sequences instead of the bundled ones, as items with a ``sequence``
    (list of words, or one string split on whitespace) and an optional ``cyclic`` flag; the
    item's ``prompt`` names the class. ``classes``: a subset of the bundled classes.

    Causal check: log-probability of the next element after three consecutive ones
    ("Monday, Tuesday, Wednesday," -> " Thursday", at most ``causal_prompts`` prompts spread
    over the classes) with the top-k heads vs k random same-layer heads zero-ablated
    (``draws`` random sets).
    """

    name = "successor"
    summary = "successor heads (Gould et al.): OV circuit maps an ordinal token to the next one"
    item_fields = ("sequence",)
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "embedding": one_of(*EMBEDDINGS),
        "classes": _class_names,
        "causal_prompts": count(1),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        embedding: str = "mlp0",
        classes: Sequence[str] | None = None,
        causal: bool = True,
        top_k: int = 5,
        draws: int = CHEAP_DRAWS,
        causal_prompts: int = CAUSAL_PROMPTS,
        seed: int = 0,
        quick: bool = False,
    ) -> pd.DataFrame:
        """``quick``: fewer random draws and continuation prompts (:data:`QUICK`)."""
        sequences = self._sequences(prompts, classes)
        tokenized = ordinal_classes(lm.tokenizer, sequences)
        hits, names, scan = successor_items(lm, tokenized, embedding, progress)
        require_done(scan, self.name)
        evidence = {}
        for c in tokenized:
            rows = torch.tensor([n == c.name for n in names])
            if rows.any():
                evidence[_column(c.name)] = hits[rows].mean(0)
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "share of ordinal pairs (s, t) with OV[s, t] > OV[s, c] for every other token "
                "c of the class, OV = full OV circuit (Gould et al. 2023)"
            ),
            "params": {
                "embedding": embedding,
                "classes": list(sequences),
                "sequences": "user sequences" if prompts is not None else "bundled",
                "causal_prompts": causal_prompts,
            },
            "pairs": {c.name: len(c.pairs) for c in tokenized},
            # a head that ranks the class at random: 1 / (class size), mean over pairs
            "chance": sum(len(c.pairs) / len(c.candidates) for c in tokenized if c.pairs)
            / len(names),
            "dropped": {c.name: c.dropped for c in tokenized if c.dropped},
            "prompts_total": len(names),
            "prompts_used": len(names),
            "layers_done": scan.done,
            "interrupted": scan.interrupted,
            "seconds": round(scan.seconds, 3),
        }
        df = head_frame(lm, hits.mean(0), evidence, attrs, per_item=hits)
        if causal and not scan.interrupted:
            task = continuation_task(lm, tokenized, causal_prompts)
            if not task:
                df.attrs["causal"] = None
                df.attrs["causal_note"] = "no continuation prompt tokenizes cleanly"
                return df
            inputs = [ids for ids, _ in task]
            metrics = [lambda logits, t=t: torch.log_softmax(logits, -1)[t] for _, t in task]
            df.attrs["causal"] = causal_evidence(
                lm,
                top_heads(df, top_k),
                lambda m: metric_values(m, inputs, metrics),
                metric_name=f"log-prob of the next ordinal after three, {len(task)} prompts",
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=True,
            )
        return df

    def _sequences(self, prompts, classes) -> dict[str, dict[str, Any]]:
        """The classes to score: the user's sequences, or the bundled ones (``classes`` of
        them)."""
        items = as_items(prompts)
        if items:
            out = {}
            for i, item in enumerate(items):
                seq = item.get("sequence")
                if isinstance(seq, str):
                    seq = seq.split()
                if (
                    not isinstance(seq, list)
                    or len(seq) < 2
                    or not all(isinstance(w, str) and w.strip() for w in seq)
                ):
                    raise AnalyzerArgumentError(
                        f"{self.name}: prompts[{i}] needs a 'sequence' of at least two words "
                        f"(a list of strings or one whitespace-separated string), got {seq!r:.80}"
                    )
                out[item["prompt"]] = {"items": seq, "cyclic": bool(item.get("cyclic", False))}
            return out
        bundled = bundled_ordinals()
        return bundled if classes is None else {c: bundled[c] for c in classes}
