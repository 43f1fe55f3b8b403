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

Layout: the model runs (greedy answers, span masses, accuracy, log-probs) are
:mod:`workbench.analyzers.contextual_runs`; training and measuring focus directions is
:mod:`workbench.analyzers.focus_training`; this module holds the analyzer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch

from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    check_room,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import GENERATION_DRAWS, causal_evidence
from workbench.analyzers.contextual_batches import item_runs
from workbench.analyzers.contextual_runs import (
    aggregate,
    answer_logprobs,
    item_scores,
    qa_hits,
    scored,
)
from workbench.analyzers.focus_training import focus_effect, train_focus_directions
from workbench.analyzers.mdqa import (
    ANSWER_ROWS,
    EncodedItem,
    encode_item,
    is_correct,
    load_facts,
    make_items,
    split_facts,
)
from workbench.analyzers.params import Check, all_heads, count, flag, one_of, output_file, real
from workbench.analyzers.prompts import as_items
from workbench.heads import Head
from workbench.interventions import FOCUS_SCALE

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


#: Default task sizes, chosen by measurement (workbench.analyzers.stability_sizes); quick mode
#: keeps the earlier small task.
N_ITEMS = 24
N_CAUSAL = 8
QUICK = {"n_items": 10, "n_causal": 8, "draws": 3}

#: The analyzer's ``score_over`` values: ``counts(correct, answer) -> bool``, whether a prompt
#: enters ``score`` (``answer`` is the analyzer's ``answer`` parameter).
SCORE_OVER = {
    "correct": lambda correct, answer: correct or answer == "gold",
    "all": lambda correct, answer: True,
}


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

    ``score``: relevant-document mass (mean over answer tokens, then prompts; ``score_lo`` /
    ``score_hi``: its bootstrap interval over those prompts). Evidence:
    ``mass_all_docs`` (on all documents), ``mass_irrelevant`` (on the distractors together),
    ``relevant_share`` (relevant / all-documents mass), ``score_all_prompts`` (relevant mass
    over every prompt, correct or not). ``attrs``: ``accuracy`` (answer containment of the
    greedy answers), ``prompts_passed``, per-position accuracy, ``causal``, ``causal_logprob``
    and ``focus`` (training losses, before/after on held-out prompts, saved path).

    Two settings differ deliberately from the reference code (billzyx/focus_direction
    ``get_contextual_heads``); a parameter selects the reference's, the defaults are the
    workbench's rule:

    * ``score_over``: ``"correct"`` (default) averages over the prompts answered correctly
      (all of them with ``answer="gold"`` or when none is); ``"all"`` averages over every
      prompt, as the reference (:data:`SCORE_OVER`).
    * ``rows``: ``"producing"`` (default) reads the rows that produce the answer tokens (the
      decode-step attention); ``"response"`` reads the rows at the answer tokens themselves,
      one position later, as the reference's ``extract_attention_with_range``
      (:data:`~workbench.analyzers.mdqa.ANSWER_ROWS`). Scoring only: focus training and the
      causal checks keep the producing rows.

    Prompts: None (``n_items`` bundled MDQA items with ``n_docs`` documents, facts of the
    evaluation split) or MDQA items (``prompt``, ``documents``, ``relevant``, ``answer``,
    optional ``aliases``), e.g. a JSONL file. Focus directions are always trained on items
    built from the bundled training split (``n_train_facts`` facts, never in the default
    evaluation items) and evaluated on the first ``n_causal`` scored prompts; ``focus_out``
    saves them (safetensors). ``focus=False`` / ``causal=False`` skip those parts. The causal
    checks score each of the ``n_causal`` prompts (correct or not; log-prob per prompt) with
    ``draws`` random sets. ``quick``: the small task of :data:`QUICK` (weak evidence).
    """

    name = "contextual"
    summary = "attention on the relevant document in multi-document QA; focus directions"
    item_fields = ("documents", "relevant", "answer")
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "n_items": count(1),
        "n_docs": count(2),
        "n_train_facts": count(0),
        "answer": one_of("generated", "gold"),
        "score_over": one_of(*SCORE_OVER),
        "rows": one_of(*ANSWER_ROWS),
        "n_causal": count(1),
        "focus": flag(),
        "focus_heads": count(1, all_heads),
        "focus_items": count(1),
        "focus_steps": count(1),
        "focus_lr": real(above=0),
        "focus_scale": real(above=0, maximum=10),
        "focus_out": output_file(),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_items: int = N_ITEMS,
        n_docs: int = 5,
        n_train_facts: int = 8,
        answer: str = "generated",
        score_over: str = "correct",
        rows: str = "producing",
        max_new_tokens: int = 24,
        chat: bool = True,
        causal: bool = True,
        top_k: int = 5,
        draws: int = GENERATION_DRAWS,
        n_causal: int = N_CAUSAL,
        focus: bool = True,
        focus_heads: int = 3,
        focus_items: int = 6,
        focus_steps: int = 15,
        focus_lr: float = 0.05,
        focus_scale: float = FOCUS_SCALE,
        focus_out: str | None = None,
        seed: int = 0,
        quick: bool = False,
        batch_size: int | str = "auto",
    ) -> pd.DataFrame:
        """``batch_size``: items per batched greedy decode and teacher-forced forward
        (``"auto"``: up to :data:`~workbench.analyzers.contextual_batches.MAX_BATCH`, sized
        from free memory); batched runs equal one-item runs
        (:mod:`workbench.analyzers.contextual_batches`)."""
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
        encoded = [encode_item(lm, item, chat=chat) for item in items]  # before any forward
        check_room(lm, max(ei.enc.n_tokens for ei in encoded), max_new_tokens, self.name)
        runs = item_runs(
            lm,
            encoded,
            answer=answer,
            rows=rows,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        with Scan(list(zip(items, encoded, strict=True)), self.name, progress) as scan:
            for (item, ei), done in zip(scan, runs, strict=False):
                text = lm.tokenizer.decode(done.generated)
                correct = is_correct(text, item)
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
                if done.mass is not None:
                    per_item.append(item_scores(done.mass, ei.relevant))
                    counted.append(SCORE_OVER[score_over](correct, answer))
        require_done(scan, self.name)
        if not per_item:
            raise AnalyzerError("the model produced no answer tokens on any prompt")
        passed = sum(o["correct"] for o in outcomes)
        means, score_over_note = aggregate(per_item, counted)
        relevant_items = torch.stack([d["relevant"] for d in scored(per_item, counted)[0]])
        note = score_over_note
        if answer == "gold":
            note = "all prompts (gold answers teacher-forced)"
        elif score_over == "all":
            note = "all prompts (score_over='all', the reference setting)"
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
                "score_over": score_over,
                "rows": rows,
                "max_new_tokens": max_new_tokens,
                "chat": chat,
                "seed": seed,
                "n_causal": n_causal,
                "batch_size": batch_size,
                "task": "user prompts" if user_prompts else "bundled mdqa_facts (eval split)",
            },
            "accuracy": accuracy,
            "prompts_passed": passed,
            "prompts_scored": sum(counted) or len(counted),
            "score_over": note,
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
            per_item=relevant_items,
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
                lambda m: qa_hits(m, held, max_new_tokens),
                metric_name="MDQA accuracy (answer containment, greedy)",
                **common,
            )
            df.attrs["causal_logprob"] = causal_evidence(
                lm,
                ranked,
                lambda m: answer_logprobs(m, held),
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
        lm: LoadedModel,
        df: pd.DataFrame,
        held: list[EncodedItem],
        train_facts: list[dict[str, Any]],
        fillers: list[dict[str, Any]],
        *,
        n_docs: int,
        focus_heads: int,
        focus_items: int,
        steps: int,
        lr: float,
        scale: float,
        out: str | None,
        seed: int,
        max_new_tokens: int,
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
