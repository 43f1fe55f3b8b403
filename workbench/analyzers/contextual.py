"""Contextual heads and focus directions (Zhu et al. 2025, "Focus Directions Make Your Language
Models Pay More Attention to Relevant Contexts", arXiv 2503.23306).

Contextual scoring: on multi-document QA prompts (one relevant document among distractors, at
varying positions; :mod:`workbench.analyzers.mdqa`), a head's score is the attention mass it
puts on the relevant document while the answer is produced, averaged over the answer tokens
and over the prompts. Heads with the highest score are the contextual heads.

Answer tokens. The paper scores the attention of the response tokens while the model answers
(on a labelled dataset with known relevant context); here the default (``answer="generated"``)
takes the tokens the model generates greedily and averages over the prompts it answers
correctly (falling back to all prompts when it answers none, said in ``attrs["score_over"]``).
The attention of the step that *produces* answer token t is read, i.e. query rows
``n_prompt - 1 .. n_prompt + n_answer - 2`` of a teacher-forced forward over prompt +
generated tokens, which equals the decode-step attention of greedy generation.
``answer="gold"`` teacher-forces the gold answer instead (every prompt counts). The mass comes
from the statistics probe's span mass (kernels; no L x L maps).

Focus directions: for the top contextual heads, a vector ``d_q`` per head added to the
post-RoPE query (``q += scale * d_q``), trained with the model frozen to maximise the log
attention mass on the relevant document at the answer rows (gold answers teacher-forced) of
training prompts whose facts never appear in the evaluation prompts. The paper also learns a
key direction ``d_k``; adding one vector to every key adds the same ``(q + d_q) . d_k`` to all
scores of a row and cancels in the softmax, so it is saved as zeros (the interventions'
:class:`~workbench.interventions.FocusDirections` does not apply it either). Directions are
trained at full strength and applied scaled (0.2 - 0.3, the design's range); the effect is
reported at the application scale and at 1.0.

Causal evidence: QA accuracy (answer containment, greedy) with the top-k contextual heads
uniform-ablated (query scaled by 1e-5) vs k random heads of the same layers
(``attrs["causal"]``), and the gold answer's mean log-probability likewise
(``attrs["causal_logprob"]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    check_positive_int,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import causal_evidence
from workbench.analyzers.mdqa import (
    EncodedItem,
    answer_rows,
    encode_item,
    is_correct,
    load_facts,
    make_items,
    split_facts,
)
from workbench.analyzers.prompts import as_items
from workbench.heads import Head, parse_head
from workbench.interventions import FocusDirections, FocusDirectionSet
from workbench.interventions.base import Intervention
from workbench.lm import Encoded

FOCUS_SCALE = 0.25


# -- model runs -------------------------------------------------------------------------------
def _with_answer(ei: EncodedItem, answer_ids: Sequence[int]) -> Encoded:
    """The prompt followed by ``answer_ids`` (the assistant turn's first tokens)."""
    extra = torch.tensor([list(answer_ids)], dtype=ei.enc.input_ids.dtype)
    ids = torch.cat([ei.enc.input_ids, extra], dim=1)
    mask = torch.ones_like(ids)
    return Encoded(ids, mask, [], ei.enc.text, ei.enc.chat)


@torch.no_grad()
def greedy_ids(lm, enc: Encoded, max_new_tokens: int = 24) -> list[int]:
    """Greedy continuation ids (as :meth:`LoadedModel.generate`), cut at the first special
    token (the end of the assistant turn)."""
    out = lm.model.generate(
        input_ids=enc.input_ids.to(lm.device),
        attention_mask=enc.attention_mask.to(lm.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
    )
    special = set(lm.tokenizer.all_special_ids)
    ids: list[int] = []
    for t in out[0, enc.n_tokens :].tolist():
        if t in special:
            break
        ids.append(int(t))
    return ids


def answer_span_mass(lm, ei: EncodedItem, answer_ids: Sequence[int]) -> torch.Tensor:
    """(layers, heads, n_answer, n_docs): attention mass of every head on every document at
    the rows producing each answer token (teacher-forced; statistics probe span mass)."""
    if not answer_ids:
        raise AnalyzerError("no answer tokens to score")
    enc = _with_answer(ei, answer_ids)
    rows = answer_rows(ei.n_prompt, len(answer_ids))
    with lm.statistics(
        received=False, entropy=False, argmax=False, distance=False, spans=ei.spans
    ) as stats:
        lm.forward(enc)
    rec = stats.records
    return torch.stack(
        [rec[layer].stats["span_mass"][0][:, rows].double() for layer in range(lm.info.n_layers)]
    )


def qa_accuracy(lm, eitems: Sequence[EncodedItem], max_new_tokens: int = 24) -> float:
    """Share of items whose greedy answer contains the gold answer (or an alias)."""
    hits = 0
    for ei in eitems:
        text = lm.tokenizer.decode(greedy_ids(lm, ei.enc, max_new_tokens))
        hits += is_correct(text, ei.item)
    return hits / max(len(eitems), 1)


@torch.no_grad()
def answer_logprob(lm, eitems: Sequence[EncodedItem]) -> float:
    """Mean log-probability (nats per token) of the gold answer tokens teacher-forced as the
    first tokens of the assistant turn (a smooth companion of the containment accuracy)."""
    total, count = 0.0, 0
    for ei in eitems:
        enc = _with_answer(ei, ei.answer_ids)
        logits = lm.forward(enc)[0].double()
        rows = answer_rows(ei.n_prompt, len(ei.answer_ids))
        logp = torch.log_softmax(logits[rows], dim=-1)
        target = torch.tensor(ei.answer_ids)
        total += float(logp.gather(1, target.view(-1, 1)).sum())
        count += len(ei.answer_ids)
    return total / max(count, 1)


def relevant_mass(lm, eitems: Sequence[EncodedItem], heads: Sequence[tuple[int, int]]) -> float:
    """Mean attention mass of ``heads`` on the relevant document at the gold answer rows."""
    values = []
    for ei in eitems:
        mass = answer_span_mass(lm, ei, ei.answer_ids)
        for layer, head in heads:
            values.append(float(mass[layer, head, :, ei.relevant].mean()))
    return sum(values) / max(len(values), 1)


def item_scores(mass: torch.Tensor, relevant: int) -> dict[str, torch.Tensor]:
    """Per-head numbers of one prompt from its answer-row span masses ``mass``
    (layers, heads, n_answer, n_docs): each averaged over the answer tokens, the mass on the
    relevant document, on all documents, on the irrelevant ones, and the relevant share."""
    m = mass.double().mean(2)
    rel = m[..., relevant]
    all_docs = m.sum(-1)
    return {
        "relevant": rel,
        "all_docs": all_docs,
        "irrelevant": all_docs - rel,
        "share": rel / all_docs.clamp_min(1e-12),
    }


def aggregate(
    per_item: Sequence[dict[str, torch.Tensor]], counted: Sequence[bool]
) -> tuple[dict[str, torch.Tensor], str]:
    """Mean of :func:`item_scores` over the ``counted`` prompts (those answered correctly),
    or over all prompts when none is counted; also ``relevant_all_prompts`` over all prompts.
    Returns the means and a note saying which prompts were averaged."""
    if not per_item:
        raise AnalyzerError("no scored prompts")
    chosen = [d for d, c in zip(per_item, counted, strict=True) if c]
    note = "correct prompts"
    if not chosen:
        chosen, note = list(per_item), "all prompts (none answered correctly)"
    means = {k: torch.stack([d[k] for d in chosen]).mean(0) for k in per_item[0]}
    means["relevant_all_prompts"] = torch.stack([d["relevant"] for d in per_item]).mean(0)
    return means, note


def span_log_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    span: tuple[int, int],
    scaling: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable log attention mass on keys ``span = [a, b)`` of causal query rows.

    ``query`` (n, D) are the queries at absolute positions ``rows`` (n,), ``key`` (Lk, D);
    ``mask`` (n, Lk) optional bool (True = may attend). Returns (n,):
    ``logsumexp(s[:, a:b]) - logsumexp(s[:, visible])`` with ``s = q k^T * scaling``.
    """
    a, b = span
    scores = (query.float() @ key.float().T) * scaling
    keys = torch.arange(key.shape[0], device=key.device)
    visible = keys.view(1, -1) <= rows.view(-1, 1).to(key.device)
    if mask is not None:
        visible = visible & mask.bool()
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(scores[:, a:b], dim=-1) - torch.logsumexp(scores, dim=-1)


# -- focus directions -------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised after the last layer a training step needs: the rest of the forward is skipped."""


class _FocusTraining(Intervention):
    """Adds ``scale * d_q`` to the chosen heads' queries (as :class:`FocusDirections` does) and
    records, differentiably, each head's log attention mass on the relevant span at the answer
    rows: ``logsumexp(s[rows, span]) - logsumexp(s[rows, visible])``, only (rows x keys)."""

    name = "focus-training"

    def __init__(self, lm, directions: dict[Head, torch.Tensor], scale: float) -> None:
        super().__init__(lm, list(directions))
        self.directions = directions
        self.scale = float(scale)
        self.last_layer = max(h.layer for h in directions)
        self.rows = torch.zeros(0, dtype=torch.long)
        self.span = (0, 0)
        self.log_mass: list[torch.Tensor] = []

    def edit(self, call, heads):
        query = call.query.clone()
        group = call.n_heads // call.key.shape[1]
        local = self.rows - call.query_offset
        mask = None
        if call.mask is not None:
            mask = call.mask[0, 0].expand(call.n_queries, call.n_keys)[local]
        for h in heads:
            dq = self.directions[Head(call.layer, h)]
            query[:, h] = query[:, h] + self.scale * dq.to(query.dtype)
            self.log_mass.append(
                span_log_mass(
                    query[0, h, local],
                    call.key[0, h // group],
                    self.rows,
                    self.span,
                    call.scaling,
                    mask,
                )
            )
        call.query = query

    def edit_output(self, call, heads, output):
        if call.layer == self.last_layer:
            raise _StopForward
        return None


def _as_heads(heads) -> list[Head]:
    out = []
    for h in heads:
        out.append(parse_head(h) if isinstance(h, str) else Head(*h))
    if not out:
        raise AnalyzerError("train_focus_directions needs at least one head")
    return list(dict.fromkeys(out))


def train_focus_directions(
    lm,
    heads,
    items,
    steps: int = 15,
    lr: float = 0.05,
    seed: int = 0,
    *,
    scale: float = 1.0,
    history: list[float] | None = None,
    progress: bool = False,
) -> FocusDirectionSet:
    """Learn a focus direction ``d_q`` for each of ``heads`` on MDQA ``items``.

    Objective: maximise the mean over heads and answer rows of ``log`` attention mass on the
    relevant document, with the gold answer teacher-forced; model parameters frozen (their
    ``requires_grad`` restored afterwards), directions are leaf tensors initialised at zero
    and trained with Adam, one item per step in seeded order. The forward stops after the
    last layer holding a head. ``scale`` is the strength used during training (the learned
    vector is applied as ``q += scale * d_q``). Per-step losses go to ``history``. Key
    directions are zeros (softmax-invariant, see the module docstring).
    """
    steps = check_positive_int("steps", steps)
    if not lr > 0 or not math.isfinite(lr):
        raise AnalyzerError(f"lr must be > 0, got {lr}")
    head_list = _as_heads(heads)
    eitems = [it if isinstance(it, EncodedItem) else encode_item(lm, it) for it in items]
    if not eitems:
        raise AnalyzerError("train_focus_directions needs at least one training item")
    gen = torch.Generator().manual_seed(seed)
    dim = lm.info.head_dim
    directions = {h: torch.zeros(dim, requires_grad=True) for h in head_list}
    opt = torch.optim.Adam(list(directions.values()), lr=lr)
    params = list(lm.model.parameters())
    flags = [p.requires_grad for p in params]
    trainer = _FocusTraining(lm, directions, scale)
    order: list[int] = []
    try:
        for p in params:
            p.requires_grad_(False)
        for step in range(steps):
            if not order:
                order = torch.randperm(len(eitems), generator=gen).tolist()
            ei = eitems[order.pop()]
            enc = _with_answer(ei, ei.answer_ids)
            trainer.rows = answer_rows(ei.n_prompt, len(ei.answer_ids))
            trainer.span = ei.relevant_span
            trainer.log_mass = []
            with torch.enable_grad():
                try:
                    with trainer:
                        lm.model(input_ids=enc.input_ids.to(lm.device), use_cache=False)
                except _StopForward:
                    pass
                loss = -torch.cat(trainer.log_mass).mean()
                opt.zero_grad()
                loss.backward()
            opt.step()
            if history is not None:
                history.append(loss.item())
            if progress:
                print(f"focus step {step + 1}/{steps}: loss {loss.item():.4f}")
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return FocusDirectionSet(
        {h: (d.detach().clone(), torch.zeros(dim)) for h, d in directions.items()},
        model=lm.info.name,
    )


def focus_effect(
    lm,
    directions: FocusDirectionSet,
    eitems: Sequence[EncodedItem],
    scales: Sequence[float] = (FOCUS_SCALE,),
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """QA accuracy and the focus heads' relevant-document mass without and with the
    directions at each of ``scales``, on ``eitems`` (held-out prompts)."""
    heads = [tuple(h) for h in directions.directions]
    out: dict[str, Any] = {
        "before": {
            "accuracy": qa_accuracy(lm, eitems, max_new_tokens),
            "relevant_mass": relevant_mass(lm, eitems, heads),
        }
    }
    for scale in scales:
        with FocusDirections(lm, directions, scale=scale):
            out[f"scale_{scale:g}"] = {
                "accuracy": qa_accuracy(lm, eitems, max_new_tokens),
                "relevant_mass": relevant_mass(lm, eitems, heads),
            }
    return out


# -- the analyzer -----------------------------------------------------------------------------
def _check_items(items: list[dict[str, Any]]) -> None:
    for it in items:
        missing = [k for k in ("documents", "relevant", "answer") if k not in it]
        if missing:
            raise AnalyzerError(
                "contextual prompts must be MDQA items with 'prompt', 'documents' (the "
                "document texts as they appear in the prompt), 'relevant' (index) and "
                f"'answer'; an item lacks {missing}"
            )


@register_analyzer
class ContextualAnalyzer(Analyzer):
    """Contextual heads (Zhu et al. 2025, arXiv 2503.23306): mean attention mass on the
    relevant document over answer tokens of multi-document QA prompts; focus directions for
    the top heads; causal check by ablation. See the module docstring for the definitions.

    ``score``: relevant-document mass (mean over answer tokens, then prompts). Evidence:
    ``mass_all_docs`` (on all documents), ``mass_irrelevant`` (on the distractors together),
    ``relevant_share`` (relevant / all-documents mass), ``score_all_prompts`` (relevant mass
    over every prompt, correct or not). ``attrs``: ``accuracy`` (answer containment of the
    greedy answers), ``prompts_passed``, per-position accuracy, ``causal``, ``causal_logprob``
    and ``focus`` (training losses, before/after on held-out prompts, saved path).

    Prompts: None (``n_items`` bundled MDQA items with ``n_docs`` documents, facts of the
    evaluation split) or MDQA items (``prompt``, ``documents``, ``relevant``, ``answer``,
    optional ``aliases``), e.g. a JSONL file. Focus directions are always trained on items
    built from the bundled training split (``n_train_facts`` facts, never in the default
    evaluation items) and evaluated on the first ``n_causal`` scored prompts; ``focus_out``
    saves them (safetensors). ``focus=False`` / ``causal=False`` skip those parts.
    """

    name = "contextual"
    summary = "attention on the relevant document in multi-document QA; focus directions"
    item_fields = ("documents", "relevant", "answer")

    def run(
        self,
        lm,
        prompts=None,
        *,
        progress: Progress = True,
        n_items: int = 10,
        n_docs: int = 5,
        n_train_facts: int = 8,
        answer: str = "generated",
        max_new_tokens: int = 24,
        chat: bool = True,
        causal: bool = True,
        top_k: int = 5,
        draws: int = 3,
        n_causal: int = 8,
        focus: bool = True,
        focus_heads: int = 3,
        focus_items: int = 6,
        focus_steps: int = 15,
        focus_lr: float = 0.05,
        focus_scale: float = FOCUS_SCALE,
        focus_out: str | None = None,
        seed: int = 0,
        **_: Any,
    ) -> pd.DataFrame:
        n_items = check_positive_int("n_items", n_items)
        n_docs = check_positive_int("n_docs", n_docs, minimum=2)
        max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
        top_k = check_positive_int("top_k", top_k)
        n_causal = check_positive_int("n_causal", n_causal)
        focus_heads = check_positive_int("focus_heads", focus_heads)
        if answer not in ("generated", "gold"):
            raise AnalyzerError(f"answer must be 'generated' or 'gold', got {answer!r}")
        if not 0 < focus_scale <= 10:
            raise AnalyzerError(f"focus_scale must be in (0, 10], got {focus_scale}")
        facts, fillers = load_facts()
        train_facts, eval_facts = split_facts(facts, n_train_facts, seed)
        items = as_items(prompts)
        user_prompts = bool(items)
        if user_prompts:
            _check_items(items)
        else:
            items = make_items(n_items, n_docs, seed, facts=eval_facts, fillers=fillers)

        per_item: list[dict[str, torch.Tensor]] = []
        counted: list[bool] = []
        per_position: dict[int, list[int]] = {}
        eitems: list[EncodedItem] = []
        outcomes: list[dict[str, Any]] = []
        with Scan(items, self.name, progress) as scan:
            for item in scan:
                ei = encode_item(lm, item, chat=chat)
                gen = greedy_ids(lm, ei.enc, max_new_tokens)
                text = lm.tokenizer.decode(gen)
                correct = is_correct(text, item)
                ids = gen if answer == "generated" else ei.answer_ids
                eitems.append(ei)
                hits = per_position.setdefault(ei.relevant, [0, 0])
                hits[0] += int(correct)
                hits[1] += 1
                outcomes.append(
                    {
                        "question": item.get("question", ""),
                        "fact_id": item.get("fact_id", ""),
                        "relevant": ei.relevant,
                        "answer": text,
                        "correct": correct,
                    }
                )
                if ids:
                    per_item.append(item_scores(answer_span_mass(lm, ei, ids), ei.relevant))
                    counted.append(correct or answer == "gold")
        require_done(scan, self.name)
        if not per_item:
            raise AnalyzerError("the model produced no answer tokens on any prompt")
        passed = sum(o["correct"] for o in outcomes)
        means, score_over = aggregate(per_item, counted)
        if answer == "gold":
            score_over = "all prompts (gold answers teacher-forced)"
        accuracy = passed / scan.done
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "mean over answer tokens of the attention mass on the relevant document "
                "(Zhu et al. 2025, contextual scoring)"
            ),
            "params": {
                "n_items": n_items,
                "n_docs": n_docs,
                "answer": answer,
                "max_new_tokens": max_new_tokens,
                "chat": chat,
                "seed": seed,
                "task": "user prompts" if user_prompts else "bundled mdqa_facts (eval split)",
            },
            "accuracy": accuracy,
            "prompts_passed": passed,
            "prompts_scored": sum(counted) or len(counted),
            "score_over": score_over,
            "accuracy_by_position": {str(k): v[0] / v[1] for k, v in sorted(per_position.items())},
            "answers": outcomes,
            **scan.attrs(),
        }
        df = head_frame(
            lm,
            means["relevant"],
            {
                "mass_all_docs": means["all_docs"],
                "mass_irrelevant": means["irrelevant"],
                "relevant_share": means["share"],
                "score_all_prompts": means["relevant_all_prompts"],
            },
            attrs,
        )
        if scan.interrupted:
            return df
        held = eitems[:n_causal]
        if causal:
            ranked = top_heads(df, top_k)
            common = {"k": top_k, "draws": draws, "seed": seed, "mode": "uniform"}
            df.attrs["causal"] = causal_evidence(
                lm,
                ranked,
                lambda m: qa_accuracy(m, held, max_new_tokens),
                metric_name="MDQA accuracy (answer containment, greedy)",
                **common,
            )
            df.attrs["causal_logprob"] = causal_evidence(
                lm,
                ranked,
                lambda m: answer_logprob(m, held),
                metric_name="gold answer log-prob (nats/token)",
                **common,
            )
        if focus:
            df.attrs["focus"] = self._focus(
                lm,
                df,
                held,
                train_facts,
                fillers,
                n_docs=n_docs,
                focus_heads=focus_heads,
                focus_items=focus_items,
                steps=focus_steps,
                lr=focus_lr,
                scale=focus_scale,
                out=focus_out,
                seed=seed,
                max_new_tokens=max_new_tokens,
            )
        return df

    @staticmethod
    def _focus(
        lm,
        df,
        held,
        train_facts,
        fillers,
        *,
        n_docs,
        focus_heads,
        focus_items,
        steps,
        lr,
        scale,
        out,
        seed,
        max_new_tokens,
    ) -> dict[str, Any]:
        heads = top_heads(df, focus_heads)
        train_items = make_items(focus_items, n_docs, seed + 1, facts=train_facts, fillers=fillers)
        history: list[float] = []
        start = time.perf_counter()
        directions = train_focus_directions(
            lm, heads, train_items, steps=steps, lr=lr, seed=seed, history=history
        )
        seconds = time.perf_counter() - start
        if out:
            directions.save(out)
        scales = sorted({float(scale), 1.0})
        effect = focus_effect(lm, directions, held, scales, max_new_tokens)
        return {
            "heads": [Head(*h).id for h in heads],
            "train_items": len(train_items),
            "train_facts": [it["fact_id"] for it in train_items],
            "steps": steps,
            "lr": lr,
            "train_seconds": round(seconds, 3),
            "loss_first": history[0],
            "loss_last": history[-1],
            "direction_norms": {
                h.id: float(dq.norm()) for h, (dq, _) in directions.directions.items()
            },
            "scale": scale,
            "eval_prompts": len(held),
            "effect": effect,
            "path": str(out) if out else None,
        }
