"""Safety heads: Ships and Sahara (Zhou et al. 2025, "On the Role of Attention Heads in Large
Language Model Safety", ICLR 2025, arXiv:2410.13708).

* Ships (Safety Head ImPortant Score) of head h on a harmful request q: ablate h by scaling its
  query by ``eps`` (1e-5), which makes its attention uniform over the visible keys, and measure
  ``KL(p(.|q) || p_ablated(.|q))`` of the next-token distribution at the last prompt position
  (chat template applied, so the position is the start of the assistant's answer). A head's
  ``score`` is that KL averaged over the harmful prompt set. Only the query is scaled: scaling
  the key would change every query head sharing the KV head under GQA.
* Sahara (Safety Attention Head AttRibution Algorithm), dataset level: stack the final hidden
  state (after the final norm) at the last prompt position of N harmful prompts into a matrix
  ``M`` (N x d); greedily add to a head set G the head whose ablation (together with G) most
  rotates the top singular vector of ``M``, measured as the principal angle (degrees) between
  the top-``rank`` left singular subspaces of the base and ablated matrices, as in the authors'
  code (``torch.linalg.svd(M)``, ``U[:, :1]``). ``sahara_space="hidden"`` uses the right
  singular vectors (directions in the d-dimensional hidden space) instead. To stay cheap the
  search considers only the ``sahara_pool`` heads with the highest Ships (the paper searches all
  heads); ``sahara_pool=None`` searches every scanned head.
* Causal evidence: refusal rate (greedy generations judged by
  :func:`workbench.analyzers.refusal.is_refusal`) on held-out harmful prompts with nothing
  ablated, the top-k Ships heads uniform-ablated, and k random same-layer heads ablated
  (``df.attrs["causal"]``, with the harmless prompts' refusal rate with nothing, the top-k and
  the first 3 random sets ablated in ``["harmless"]``), and with the Sahara set ablated
  (``df.attrs["sahara"]["refusal"]``).

The embedded SmolLM2-135M-Instruct hardly refuses, so the analysis is meant for a model that
does, e.g. the refusal organism of :mod:`workbench.organisms.refusal`.

Cost: one batched forward per head over the N prompts (N = ``n_prompts``, 8 by default), run
only from the ablated head's layer upward (the residual stream below it is cached from the base
pass; checked against a full forward, with a full-forward fallback for models where the suffix
trick does not reproduce it: :class:`workbench.layer_suffix.SuffixRunner`). ``layers=``
restricts the scan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    top_heads,
)
from workbench.analyzers.causal import GENERATION_DRAWS, causal_evidence
from workbench.analyzers.params import Check, count, flag, layer_list, one_of, real, word_list
from workbench.analyzers.principal_angles import principal_angle
from workbench.analyzers.prompts import as_items
from workbench.analyzers.refusal import (
    harmful_prompts,
    harmless_prompts,
    is_refusal,
    measure_refusal,
)
from workbench.batching import auto_batch_size
from workbench.distributions import kl_divergence
from workbench.generation import encode_batch
from workbench.heads import head_id
from workbench.interventions import UniformAblation
from workbench.interventions.ablation import UNIFORM_EPS
from workbench.layer_suffix import SuffixRunner

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


N_PROMPTS = 8  #: default task size, chosen by measurement (analyzers.stability_sizes)
QUICK = {"n_prompts": 8, "draws": 3}  #: quick mode: the earlier small task
HARMLESS_DRAWS = 3  #: random sets whose harmless-prompt refusal rate is measured too


def _check_heads_scan(lm: LoadedModel, layers: Sequence[int] | None) -> list[tuple[int, int]]:
    chosen = lm.layout.check_layers(layers)
    return [(layer, h) for layer in chosen for h in range(lm.info.n_heads)]


@register_analyzer
class SafetyAnalyzer(Analyzer):
    """Safety heads by Ships and Sahara (Zhou et al. 2025, ICLR 2025); see the module docstring.

    Task: harmful requests (default: the first ``n_prompts`` of the bundled
    ``workbench/data/harmful.txt``), chat template applied (``chat=True``, default system
    prompt unless ``system`` is given). ``score`` = Ships, the mean over prompts of
    KL(p_base || p_ablated) at the last prompt position under uniform ablation (query * eps);
    ``score_lo``/``score_hi``: its bootstrap interval over the prompts.
    Evidence: ``ships_max`` (max over prompts), ``top1_changed`` (share of prompts whose most
    likely next token changes), ``sahara_angle`` (degrees the head alone rotates the top
    singular vector; pool heads only), ``sahara_order`` (1-based Sahara pick, else NaN).
    ``attrs``: params, counts (``prompts_used``; ``prompts_passed`` = Ships prompts the model
    refuses), ``sahara`` (chosen heads, angle after each step, every candidate's angle per step,
    refusal rates with the set ablated) and ``causal`` (refusal rates, top-k vs random-k).

    Parameters: ``n_prompts`` (:data:`N_PROMPTS`, default task only; user prompts are all
    used), ``quick`` (8 prompts and 3 random draws: weak evidence), ``layers``
    (restrict the scan; default all), ``eps`` (1e-5), ``batch_size`` (prompts per forward;
    ``"auto"``: from free memory, at most 8),
    ``sahara`` / ``sahara_steps`` (3) / ``sahara_pool`` (12 top-Ships heads; None = all scanned)
    / ``sahara_rank`` (1) / ``sahara_space`` ("prompts" as in the authors' code, or "hidden"),
    ``causal`` / ``top_k`` (5) / ``draws`` (20) / ``seed``, ``n_eval`` (16 held-out harmful
    prompts: the bundled ones after the Ships prompts; and the first 16 harmless ones),
    ``max_new_tokens`` (16, generation length judged by the detector), ``eval_harmful`` /
    ``eval_harmless`` (own evaluation prompts).
    """

    name = "safety"
    summary = "safety heads: Ships (KL after uniform ablation) and Sahara (Zhou et al. 2025)"
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "layers": layer_list(),
        "eps": real(above=0, below=1),
        "sahara": flag(),
        "sahara_steps": count(0),
        "sahara_pool": count(1, optional=True),
        "sahara_rank": count(1),
        "sahara_space": one_of("prompts", "hidden"),
        "n_eval": count(1),
        "eval_harmful": word_list(),
        "eval_harmless": word_list(),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        n_prompts: int = N_PROMPTS,
        layers: Sequence[int] | None = None,
        chat: bool = True,
        system: str | None = None,
        eps: float = UNIFORM_EPS,
        batch_size: int | str = "auto",
        sahara: bool = True,
        sahara_steps: int = 3,
        sahara_pool: int | None = 12,
        sahara_rank: int = 1,
        sahara_space: str = "prompts",
        causal: bool = True,
        top_k: int = 5,
        draws: int = GENERATION_DRAWS,
        seed: int = 0,
        n_eval: int = 16,
        max_new_tokens: int = 16,
        eval_harmful: Sequence[str] | None = None,
        eval_harmless: Sequence[str] | None = None,
        quick: bool = False,
    ) -> pd.DataFrame:
        if sahara and sahara_pool is not None and sahara_pool < sahara_steps:
            raise AnalyzerError(
                f"sahara_pool ({sahara_pool}) must be >= sahara_steps ({sahara_steps})"
            )
        user_items = as_items(prompts)
        default_task = not user_items
        items = user_items or as_items(harmful_prompts()[:n_prompts])
        texts = [item["prompt"] for item in items]
        if sahara and sahara_space == "prompts" and sahara_rank > len(texts):
            raise AnalyzerError(
                f"sahara_rank ({sahara_rank}) exceeds the number of prompts ({len(texts)})"
            )
        heads = _check_heads_scan(lm, layers)
        harmful_eval: list[str] = []
        harmless_eval: list[str] = []
        if causal:  # held-out evaluation sets, checked before the scan
            if eval_harmful is not None:
                harmful_eval = [item["prompt"] for item in as_items(list(eval_harmful))]
            else:
                pool = harmful_prompts()
                rest = pool[n_prompts:] if default_task else [p for p in pool if p not in texts]
                harmful_eval = rest[:n_eval]
            if eval_harmless is not None:
                harmless_eval = [item["prompt"] for item in as_items(list(eval_harmless))]
            else:
                harmless_eval = harmless_prompts()[:n_eval]
            if not harmful_eval or not harmless_eval:
                raise AnalyzerError(
                    "the held-out evaluation prompt sets are empty (all bundled harmful prompts "
                    "used for Ships? pass eval_harmful=...)"
                )

        every = [*texts, *harmful_eval, *harmless_eval]  # all encoded before any forward
        longest = max(lm.encode(t, chat=chat, system=system).n_tokens for t in every)
        check_room(lm, longest, max_new_tokens, self.name)
        if batch_size == "auto":  # Ships keeps every prompt's suffix states: at most 8
            batch_size = min(8, auto_batch_size(lm, longest))
        runners = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            ids, mask = encode_batch(lm, chunk, chat=chat, system=system)
            runners.append(SuffixRunner(lm, ids, mask))
        base_hidden = torch.cat([r.base_hidden for r in runners])
        refused = measure_refusal(
            lm, texts, max_new_tokens=max_new_tokens, chat=chat, system=system
        )

        n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
        nan = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
        ships, ships_max, flipped = nan.clone(), nan.clone(), nan.clone()
        per_prompt = torch.full((len(texts), n_layers, n_heads), float("nan"), dtype=torch.float64)
        with Scan(heads, "safety: Ships", progress) as scan:
            for layer, head in scan:
                kls, flips = [], []
                with UniformAblation(lm, [(layer, head)], eps=eps):
                    for runner in runners:
                        logp, _ = runner.run(layer)
                        kls.append(kl_divergence(runner.base_logp, logp))
                        flips.append(logp.argmax(-1) != runner.base_logp.argmax(-1))
                kl = torch.cat(kls).double()
                per_prompt[:, layer, head] = kl
                ships[layer, head] = kl.mean()
                ships_max[layer, head] = kl.max()
                flipped[layer, head] = torch.cat(flips).double().mean()
        if scan.done == 0:
            raise AnalyzerError("safety: interrupted before any head finished; nothing to report")

        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "Ships = mean over harmful prompts of KL(p_base || p_ablated) of the next-token "
                "distribution at the last prompt position; ablation = query * eps (Zhou et al. "
                "2025)"
            ),
            "params": {
                "n_prompts": len(texts),
                "layers": sorted({layer for layer, _ in heads}),
                "chat": chat,
                "system": system,
                "eps": eps,
                "sahara_steps": sahara_steps if sahara else 0,
                "sahara_pool": sahara_pool,
                "sahara_rank": sahara_rank,
                "sahara_space": sahara_space,
                "default_task": "bundled harmful.txt" if default_task else "user prompts",
            },
            "prompts_total": len(texts),
            "prompts_used": len(texts),
            "prompts_passed": refused["refused"],
            "passed_means": "Ships prompts the model refuses (greedy, refusal detector)",
            "heads_total": len(heads),
            "heads_scanned": scan.done,
            "interrupted": scan.interrupted,
            "seconds": round(scan.seconds, 3),
            "suffix_shortcut": all(r.suffix_ok for r in runners),
        }
        angle_col, order_col = nan.clone(), nan.clone()
        df = head_frame(
            lm,
            ships,
            {
                "ships_max": ships_max,
                "top1_changed": flipped,
                "sahara_angle": angle_col,
                "sahara_order": order_col,
            },
            attrs,
            per_item=per_prompt,
        )
        if scan.interrupted:
            return df

        sahara_heads: list[tuple[int, int]] = []
        if sahara and sahara_steps:
            ranked = top_heads(df, len(heads) if sahara_pool is None else sahara_pool)
            result = self._sahara(
                lm, runners, base_hidden, ranked, sahara_steps, sahara_rank, sahara_space, eps
            )
            sahara_heads = [tuple(h) for h in result["heads_lh"]]
            for (layer, head), angle in result["single"].items():
                df.loc[(df["layer"] == layer) & (df["head"] == head), "sahara_angle"] = angle
            for order, (layer, head) in enumerate(sahara_heads, start=1):
                df.loc[(df["layer"] == layer) & (df["head"] == head), "sahara_order"] = order
            del result["heads_lh"], result["single"]
            df.attrs["sahara"] = result

        if causal:
            records: list[dict[str, Any]] = []

            def refusal_metric(model: LoadedModel, harmless: bool = False) -> list[float]:
                kw = {"max_new_tokens": max_new_tokens, "chat": chat, "system": system}
                h = measure_refusal(model, harmful_eval, **kw)
                # harmless prompts: base, top-k and the first HARMLESS_DRAWS random sets only
                s = (
                    measure_refusal(model, harmless_eval, **kw)["rate"]
                    if harmless or len(records) < 2 + HARMLESS_DRAWS
                    else None
                )
                records.append(
                    {"harmful": h["rate"], "harmless": s, "examples": h["responses"][:3]}
                )
                return [float(is_refusal(r)) for r in h["responses"]]

            try:
                evidence = causal_evidence(
                    lm,
                    top_heads(df, top_k),
                    refusal_metric,
                    metric_name="refusal rate on held-out harmful prompts",
                    k=top_k,
                    draws=draws,
                    seed=seed,
                    mode="uniform",
                    higher_is_better=True,
                    mode_params={"eps": eps},
                )
            except ValueError as exc:  # no same-layer head left for the random control
                raise AnalyzerError(f"safety causal check: {exc}; lower top_k") from None
            evidence["harmless"] = {
                "metric": "refusal rate on harmless prompts",
                "base": records[0]["harmless"],
                "top_k": records[1]["harmless"],
                "random_k": [r["harmless"] for r in records[2 : 2 + HARMLESS_DRAWS]],
                "random_draws": min(draws, HARMLESS_DRAWS),
            }
            evidence["examples"] = {
                "base": records[0]["examples"],
                "top_k": records[1]["examples"],
            }
            evidence["n_eval_harmful"] = len(harmful_eval)
            evidence["n_eval_harmless"] = len(harmless_eval)
            evidence["max_new_tokens"] = max_new_tokens
            df.attrs["causal"] = evidence
            if sahara_heads:
                with UniformAblation(lm, sahara_heads, eps=eps):
                    refusal_metric(lm, harmless=True)
                df.attrs["sahara"]["refusal"] = {
                    "harmful": records[-1]["harmful"],
                    "harmless": records[-1]["harmless"],
                    "base_harmful": records[0]["harmful"],
                    "base_harmless": records[0]["harmless"],
                }
        return df

    @staticmethod
    def _sahara(
        lm: LoadedModel,
        runners: list[SuffixRunner],
        base_hidden: torch.Tensor,
        pool: list[tuple[int, int]],
        steps: int,
        rank: int,
        space: str,
        eps: float,
    ) -> dict[str, Any]:
        """Greedy Sahara search over ``pool``; returns chosen heads and the angle per step."""
        chosen: list[tuple[int, int]] = []
        angles: list[float] = []
        single: dict[tuple[int, int], float] = {}
        candidates_log = []
        for step in range(min(steps, len(pool))):
            scores: dict[tuple[int, int], float] = {}
            for cand in pool:
                if cand in chosen:
                    continue
                group = [*chosen, cand]
                with UniformAblation(lm, group, eps=eps):
                    hidden = torch.cat([r.run(min(g[0] for g in group))[1] for r in runners])
                scores[cand] = principal_angle(base_hidden, hidden, rank, space)
                if step == 0:
                    single[cand] = scores[cand]
            best = max(scores, key=lambda h: (scores[h], -h[0], -h[1]))
            chosen.append(best)
            angles.append(scores[best])
            candidates_log.append({head_id(*h): round(a, 4) for h, a in scores.items()})
        return {
            "heads": [head_id(*h) for h in chosen],
            "heads_lh": chosen,
            "angles": angles,
            "pool": [head_id(*h) for h in pool],
            "candidates": candidates_log,
            "single": single,
            "measure": f"largest principal angle (degrees) between top-{rank} singular "
            f"subspaces ({space} side) of final-token hidden states, base vs ablated",
        }
