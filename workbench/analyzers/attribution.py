"""Head attribution for a next-token metric: direct logit attribution, attribution patching, and
exact per-head ablation to check them.

The metric is, by default, the logit difference ``logit(target) - logit(foil)`` at the last
prompt position (the IOI measure of Wang et al. 2022, "Interpretability in the Wild: a Circuit
for Indirect Object Identification in GPT-2 small"); any differentiable function of the
last-position logits can be given instead. For every (layer, query head):

* ``dla`` - direct logit attribution (Elhage et al. 2021, "A Mathematical Framework for
  Transformer Circuits"; TransformerLens ``cache.stack_head_results`` + ``apply_ln_to_stack``):
  the head's output ``z_h`` at the last position, through its slice ``W_O[:, hD:(h+1)D]`` of the
  output projection, through the final norm with its scale *frozen* at the value the clean
  residual stream has at the last position (the one approximation; RMSNorm:
  ``s = 1/sqrt(mean(x^2) + eps)``, LayerNorm: also centred), dotted with the metric's direction
  in the final hidden space (``W_U[target] - W_U[foil]`` for the logit difference; the metric's
  gradient w.r.t. the last-position logits, pulled back through the unembedding, for any other
  metric). With the scale frozen, the DLA of all heads, the embeddings and the MLPs add up to
  the metric exactly (biases aside). DLA counts only the direct path to the logits. Where the
  architecture normalises the attention output before the residual add (Gemma 2/3, OLMo 2),
  that norm is frozen the same way, so the heads still sum to their layer's attention block.
  Where it transforms the logits after the unembedding (Gemma 2's final softcap
  ``c * tanh(x / c)``, Cohere 2's logit scale; ``attrs["logits"]``), the metric is taken on the
  real logits and the direction is its gradient there (the cap linearised at the clean logits).
* ``attribution_patching`` - the first-order estimate of the metric change when the head is
  ablated (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale";
  Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery"):
  ``sum_positions grad_z(metric) . (z_baseline - z)``, with one forward and one backward pass
  per prompt. ``baseline``: ``"zero"`` (default: ``z_baseline = 0``, the estimate of a
  :class:`~workbench.interventions.ZeroAblation`), ``"mean"`` (the head's mean output over the
  task prompts, estimate of a ``MeanAblation``) or ``"corrupt"`` (the head's output on the
  item's ``corrupt`` prompt, same token count: activation patching corrupt -> clean). Gradients
  are taken w.r.t. each layer's output-projection input (the concatenated ``z``), through the
  full model, so they include every indirect path.
* ``ablation_effect`` (only with ``exact=True`` or ``exact_heads=...``; one forward per head and
  prompt, 270 per prompt on SmolLM2): the exact metric change under the same ablation, what
  ``attribution_patching`` estimates. ``attrs["agreement"]`` gives their correlations.

``score`` = ``|attribution_patching|``: how much the head matters to the metric, either way
(a negative name-mover head matters as much as a name mover); the signed values are in the
evidence columns. Causal check: the mean metric with the top-k heads by ``score`` zero-ablated
vs k random same-layer heads.

Prompt items: ``prompt``, ``target``, ``foil`` (strings; the first token of each is used: write
them with their leading space, ``" Mary"``), optional ``corrupt``. Items without target and foil
use the model's own top-1 vs top-2 next tokens. The default task is ``n_prompts`` IOI prompts
(:func:`workbench.analyzers.ioi.ioi_task`: the six hand-written :data:`DEFAULT_TASK` first).

Uncertainty: ``score_lo``/``score_hi`` are the bootstrap interval over prompts of the score
``|mean attribution_patching|``, from the per-prompt attribution-patching values oriented by the
sign of the head's mean (``attrs["per_item"]``; their mean is the score). A ``score_lo`` below
zero says that the direction of the head's effect is not settled by the prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    head_frame,
    register_analyzer,
    require_done,
)
from workbench.analyzers.causal import CHEAP_DRAWS, causal_evidence
from workbench.analyzers.ioi import DEFAULT_TASK, ioi_task
from workbench.analyzers.logit_attribution import (
    BASELINES,
    MetricFn,
    ablation_for,
    attribute,
    head_z,
    logit_diff,
    metric_value,
    metric_values,
)
from workbench.analyzers.params import Check, count, flag, head_list, metric_check, one_of
from workbench.analyzers.prompts import as_items
from workbench.model_parts import logit_transform

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

#: Default task sizes, chosen by measurement (workbench.analyzers.stability_sizes); quick mode
#: keeps the earlier task (the six hand-written prompts).
N_PROMPTS = 96
CAUSAL_PROMPTS = 32
QUICK = {"causal_prompts": len(DEFAULT_TASK), "draws": 3}  # and the six prompts of DEFAULT_TASK


# -- the analyzer ---------------------------------------------------------------------------
def _first_token(lm: LoadedModel, text: Any, field: str) -> tuple[int, bool]:
    if not isinstance(text, str) or not text:
        raise AnalyzerError(f"attribution: item field {field!r} must be a non-empty string")
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise AnalyzerError(f"attribution: {field} {text!r} tokenizes to nothing")
    return int(ids[0]), len(ids) > 1


def _bind(metric: Callable[[Tensor, dict], Tensor], item: dict) -> MetricFn:
    def bound(logits: Tensor) -> Tensor:
        return metric(logits, item)

    return bound


def _correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": len(a)}
    return {
        "pearson": float(np.corrcoef(a, b)[0, 1]),
        "spearman": float(pd.Series(a).corr(pd.Series(b), method="spearman")),
        "n": len(a),
    }


@register_analyzer
class AttributionAnalyzer(Analyzer):
    """Per-head direct logit attribution (Elhage et al. 2021) and attribution-patching estimate
    (Nanda 2023; Syed et al. 2023) of a last-position metric (default: the IOI logit difference
    of Wang et al. 2022), optionally checked against exact per-head ablation; see the module
    docstring for the definitions, the frozen-norm approximation and the baselines."""

    name = "attribution"
    summary = "direct logit attribution and attribution patching for a logit-difference metric"
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "metric": metric_check,
        "baseline": one_of(*BASELINES),
        "n_prompts": count(1, optional=True),
        "exact": flag(),
        "exact_heads": head_list(),
        "causal_prompts": count(1),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        metric: str | Callable[[Tensor, dict], Tensor] = "logit_diff",
        baseline: str = "zero",
        n_prompts: int | None = None,
        exact: bool = False,
        exact_heads: Sequence[Any] | None = None,
        causal: bool = True,
        top_k: int = 5,
        draws: int = CHEAP_DRAWS,
        seed: int = 0,
        causal_prompts: int = CAUSAL_PROMPTS,
        quick: bool = False,
    ) -> pd.DataFrame:
        """Score every head; see the module docstring. ``metric``: ``"logit_diff"`` or a
        callable ``(logits_last (V,), item) -> 0-d tensor``. ``exact`` / ``exact_heads``:
        measure the exact ablation effect of every head / of these heads. ``n_prompts``: use
        the first ``n_prompts`` prompts (None: all user prompts, or the default task of
        :data:`N_PROMPTS` IOI prompts). ``quick``: the six hand-written prompts of
        :data:`DEFAULT_TASK` and 3 random draws (weak evidence)."""
        default_size = len(DEFAULT_TASK) if quick else N_PROMPTS
        items = as_items(prompts) or ioi_task(n_prompts or default_size, seed)
        if n_prompts is not None:
            items = items[:n_prompts]
        exact_list = None
        if exact_heads is not None:
            exact_list = sorted(exact_heads)
        elif exact:
            exact_list = [(a, b) for a in range(lm.info.n_layers) for b in range(lm.info.n_heads)]

        # Tokenize and check every item up front (clear errors before any forward), then
        # resolve the metric of items without target and foil (the model's top-2).
        checked = [self._check_item(lm, item, baseline, metric) for item in items]
        prepared = []
        multi_token = 0
        for item, (enc, corrupt_ids, tokens) in zip(items, checked, strict=True):
            if callable(metric):
                fn, pair = _bind(metric, item), None
            else:
                if tokens is not None:
                    (t, mt), (f, mf) = tokens
                    multi_token += int(mt) + int(mf)
                else:
                    with torch.no_grad():
                        top2 = lm.forward(enc, last_only=True)[0, -1].topk(2).indices.tolist()
                    t, f = int(top2[0]), int(top2[1])
                fn, pair = logit_diff(t, f), (t, f)
            prepared.append((item, enc, corrupt_ids, fn, pair))

        means = None
        if baseline == "mean":
            from workbench.interventions import head_means

            means = head_means(lm, [item["prompt"] for item in items])

        n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
        dla = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        ap_items: list[torch.Tensor] = []  # (layers, heads) per prompt
        per_item = []
        norm_check = 0.0
        with Scan(prepared, self.name, progress) as scan:
            for item, enc, corrupt_ids, fn, pair in scan:
                res = attribute(
                    lm, enc.input_ids, fn, baseline=baseline, corrupt_ids=corrupt_ids, means=means
                )
                dla += res.dla
                ap_items.append(res.attribution_patching.double())
                norm_check = max(norm_check, res.norm_check)
                row = {"prompt": item["prompt"], "metric": res.metric}
                if pair is not None:
                    row["target"] = lm.tokenizer.decode([pair[0]])
                    row["foil"] = lm.tokenizer.decode([pair[1]])
                per_item.append(row)
        require_done(scan, self.name)
        n = scan.done
        done = prepared[:n]
        signed = torch.stack(ap_items[:n])  # (n, layers, heads)
        ap = signed.sum(0)
        oriented = signed * torch.where(ap < 0, -1.0, 1.0)  # mean over prompts = |mean| = score
        evidence: dict[str, Any] = {"dla": dla / n, "attribution_patching": ap / n}

        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "dla: head output at the last position through its W_O slice and the final "
                "norm with its scale frozen at the clean residual's value, dotted with the "
                "metric direction (W_U[target] - W_U[foil]); attribution_patching: "
                "sum over positions of grad_z(metric) . (z_baseline - z); score = "
                "|attribution_patching|; all averaged over prompts; the metric is on the "
                "model's real logits (after any logit scale or final softcap, attrs['logits']), "
                "the DLA direction its gradient w.r.t. the final hidden state"
            ),
            "logits": logit_transform(lm.model),
            "params": {
                "metric": metric if isinstance(metric, str) else getattr(metric, "__name__", "fn"),
                "baseline": baseline,
                "exact": exact_list is not None,
                "n_exact_heads": len(exact_list) if exact_list is not None else 0,
                "default_task": "IOI prompts" if not prompts else "user prompts",
            },
            "metric_mean": float(np.mean([r["metric"] for r in per_item])),
            "items": per_item,
            "prompts_passed": int(sum(r["metric"] > 0 for r in per_item)),
            "multi_token_targets": multi_token,
            "norm_check_max_abs": norm_check,
            **scan.attrs(),
        }

        if exact_list is not None and not scan.interrupted:
            effect = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
            total = torch.zeros_like(effect)
            pairs = [(head, i) for head in exact_list for i in range(len(done))]
            sources = [head_z(lm, e[2]) if baseline == "corrupt" else None for e in done]
            bases = [metric_value(lm, e[1].input_ids, e[3]) for e in done]
            counts: dict[tuple[int, int], int] = {}
            with Scan(pairs, f"{self.name} exact", progress) as exact_scan:
                for (layer, head), i in exact_scan:
                    _, enc, _, fn, _ = done[i]
                    with ablation_for(
                        lm, [(layer, head)], baseline, means=means, z_source=sources[i]
                    ):
                        value = metric_value(lm, enc.input_ids, fn)
                    total[layer, head] += value - bases[i]
                    counts[(layer, head)] = counts.get((layer, head), 0) + 1
            for (layer, head), c in counts.items():
                if c == len(done):  # only heads measured on every prompt
                    effect[layer, head] = total[layer, head] / c
            evidence["ablation_effect"] = effect
            e = effect.numpy().reshape(-1)
            attrs["agreement"] = {
                "attribution_patching_vs_ablation": _correlations((ap / n).numpy().reshape(-1), e),
                "minus_dla_vs_ablation": _correlations((-dla / n).numpy().reshape(-1), e),
                "exact_interrupted": exact_scan.interrupted,
            }

        score = (ap / n).abs()
        df = head_frame(lm, score, evidence, attrs, per_item=oriented)
        if causal and not scan.interrupted:
            ranked = df.sort_values("score", ascending=False)
            ranked_heads = [
                (int(a), int(b)) for a, b in zip(ranked["layer"], ranked["head"], strict=True)
            ]
            subset = done[:causal_prompts]
            inputs, fns = [e[1].input_ids for e in subset], [e[3] for e in subset]

            def item_metric(model: LoadedModel) -> list[float]:
                return metric_values(model, inputs, fns)

            df.attrs["causal"] = causal_evidence(
                lm,
                ranked_heads,
                item_metric,
                metric_name=f"mean {attrs['params']['metric']} over {len(subset)} prompts",
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=True,
            )
        return df

    @staticmethod
    def _check_item(lm: LoadedModel, item: dict[str, Any], baseline: str, metric: Any) -> tuple:
        """``(encoding, corrupt ids or None, ((target, multi), (foil, multi)) or None)`` of one
        item, every field checked; no forward."""
        enc = lm.encode(item["prompt"])
        corrupt_ids = None
        if baseline == "corrupt":
            if not isinstance(item.get("corrupt"), str):
                raise AnalyzerError(
                    "baseline='corrupt' needs a 'corrupt' prompt in every item; missing in "
                    f"{item['prompt']!r:.60}"
                )
            corrupt_ids = lm.encode(item["corrupt"]).input_ids
        if callable(metric):
            return enc, corrupt_ids, None
        has_t, has_f = "target" in item, "foil" in item
        if has_t != has_f:
            raise AnalyzerError(
                "attribution items need both 'target' and 'foil' (or neither, to use the "
                f"model's top-2 next tokens); got one in {item['prompt']!r:.60}"
            )
        if not has_t:
            return enc, corrupt_ids, None
        target = _first_token(lm, item["target"], "target")
        foil = _first_token(lm, item["foil"], "foil")
        if target[0] == foil[0]:
            raise AnalyzerError(f"target and foil are the same token in {item['prompt']!r:.60}")
        return enc, corrupt_ids, (target, foil)


__all__ = [
    "DEFAULT_TASK",
    "AttributionAnalyzer",
    "ablation_for",
    "attribute",
    "head_z",
    "ioi_task",
    "logit_diff",
    "metric_value",
]
