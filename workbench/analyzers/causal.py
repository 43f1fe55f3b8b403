"""Causal evidence: ablate the top-k heads and k random heads, compare a task metric.

An attention score alone is not an explanation. Every analyzer reports, next to its scores,
what happens to its task metric (NIAH accuracy, QA accuracy, refusal rate, KL, loss...) when its
top-k heads are ablated, and when k random heads drawn from the same layers are ablated
instead (``draws`` random sets with a fixed seed). The result lives in ``df.attrs["causal"]``.

A metric returns one value per task item (a list), so the comparison carries its uncertainty
(:func:`workbench.analyzers.uncertainty.causal_significance`): the effect of the top-k and of
the random sets, their ratio, a bootstrap interval over items, an empirical p-value against the
random draws and a one-line verdict. A metric that returns one number still works, without an
interval over items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probes.checks import choice, integer
from workbench.analyzers.base import AnalyzerError, checked, phase
from workbench.analyzers.uncertainty import causal_significance
from workbench.heads import head_id
from workbench.interventions import INTERVENTIONS, head_pairs
from workbench.interventions import make as make_intervention

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

Metric = Callable[[Any], "float | Sequence[float]"]
"""``metric(lm)``: the task metric of every item (a sequence), or one number for the task."""

#: Random draws of the causal checks whose metric is a few forwards (losses, logit
#: differences): the smallest p-value they allow is 1 / (draws + 1) = 0.025.
CHEAP_DRAWS = 39
#: Random draws of the causal checks that generate text (accuracy, refusal): the fewest that
#: let the p-value go below 0.05 (1 / 21 = 0.048: no random set may hurt as much as the top-k).
GENERATION_DRAWS = 20


def random_heads_like(
    heads: Sequence[tuple[int, int]],
    n_heads: int,
    generator: torch.Generator,
    n_layers: int | None = None,
) -> list[tuple[int, int]]:
    """For each head, a random head of the same layer, none of them in ``heads``, no repeats.

    Keeps the layer distribution of the top-k set, as a fair control must: ablating late-layer
    heads is not comparable with ablating early ones. When a layer has no free head left (the
    top set holds nearly all of it), the draw moves to the nearest layer with one (the layer
    below first on equal distance); ``n_layers`` bounds that search (default: the highest layer
    in ``heads`` + 1).
    """
    taken = set(heads)
    top_layer = max((layer for layer, _ in heads), default=0)
    n_layers = top_layer + 1 if n_layers is None else n_layers
    out: list[tuple[int, int]] = []
    for layer, _ in heads:
        free: list[tuple[int, int]] = []
        for distance in range(n_layers):
            for near in (layer - distance, layer + distance):
                if 0 <= near < n_layers and not free:
                    free = [(near, h) for h in range(n_heads) if (near, h) not in taken]
            if free:
                break
        if not free:
            raise ValueError("every head is in the top set: no random heads to draw")
        pick = free[int(torch.randint(len(free), (1,), generator=generator))]
        taken.add(pick)
        out.append(pick)
    return out


def _values(value: Any, what: str) -> tuple[float, list[float] | None]:
    """A metric's result as ``(mean, per-item values or None)``."""
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        value = float(value)
    if isinstance(value, (int, float, np.number)):
        return float(value), None
    items = [float(v) for v in value]
    if not items:
        raise AnalyzerError(f"the causal metric returned no value ({what})")
    return float(np.mean(items)), items


def causal_evidence(
    lm: LoadedModel,
    ranked_heads: Sequence[tuple[int, int]],
    metric: Metric,
    *,
    metric_name: str,
    k: int = 5,
    draws: int = CHEAP_DRAWS,
    seed: int = 0,
    mode: str = "uniform",
    higher_is_better: bool = True,
    mode_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metric with nothing ablated, with the top-``k`` heads ablated, and with ``draws`` sets of
    ``k`` random same-layer heads ablated (ablation ``mode``: zero / uniform / mean / scale).

    ``metric(lm)`` returns the metric of every task item (a sequence) or one number.

    Returns a JSON-serialisable dict that analyzers put in ``df.attrs["causal"]``: ``base``,
    ``top_k``, ``random_k`` (list), ``random_k_mean`` (means over items), the head ids used,
    the parameters; the per-item values ``base_items``, ``top_k_items``, ``random_k_items``
    (None for a one-number metric) and ``items`` (their count); and the keys of
    :func:`~workbench.analyzers.uncertainty.causal_significance` (``effect_top``,
    ``effect_random``, ``ratio``, ``effect_top_lo/hi``, ``difference_lo/hi``, ``p_value``,
    ``p_min``, ``significant``, ``verdict``...). For a one-number metric the intervals are NaN
    and ``interval_note`` says why. ``mode_params`` go to the ablation (``means=`` for mean
    ablation, ``factor=`` for scale). Its ``draws + 2`` metric runs report progress as the phase
    ``"causal check"`` of the running analyzer (:func:`~workbench.analyzers.base.phase`).
    """
    k = integer("k", k, minimum=1, error=AnalyzerError)
    draws = integer("draws", draws, minimum=1, error=AnalyzerError)  # 0 draws: a NaN control
    seed = integer("seed", seed, minimum=0, error=AnalyzerError)
    checked(choice, "mode", mode, options=INTERVENTIONS)
    ranked_heads = head_pairs(lm.layout, ranked_heads, name="ranked_heads")
    mode_params = dict(mode_params or {})
    k = min(k, len(ranked_heads))
    top = [tuple(h) for h in ranked_heads[:k]]
    gen = torch.Generator().manual_seed(seed)
    random_values, random_items, random_sets = [], [], []
    with phase("causal check", draws + 2) as step:  # nothing, top-k, then the random sets
        base, base_items = _values(metric(lm), "nothing ablated")
        step()
        with make_intervention(mode, lm, heads=top, **mode_params):
            top_value, top_items = _values(metric(lm), "top-k ablated")
        step()
        for _ in range(draws):
            heads = random_heads_like(top, lm.info.n_heads, gen, lm.info.n_layers)
            with make_intervention(mode, lm, heads=heads, **mode_params):
                value, items = _values(metric(lm), "random heads ablated")
            random_values.append(value)
            random_items.append(items)
            random_sets.append([head_id(*h) for h in heads])
            step()
    per_item = base_items is not None
    if per_item and any(v is None or len(v) != len(base_items) for v in [top_items, *random_items]):
        raise AnalyzerError("the causal metric returned a different number of items per run")
    out: dict[str, Any] = {
        "metric": metric_name,
        "higher_is_better": higher_is_better,
        "mode": mode,
        "k": k,
        "draws": draws,
        "seed": seed,
        "base": base,
        "top_k": top_value,
        "random_k": random_values,
        "random_k_mean": sum(random_values) / len(random_values),
        "top_heads": [head_id(*h) for h in top],
        "random_heads": random_sets,
        "items": len(base_items) if per_item else None,
        "base_items": base_items,
        "top_k_items": top_items,
        "random_k_items": random_items if per_item else None,
    }
    significance = causal_significance(
        base_items if per_item else [base],
        top_items if per_item else [top_value],
        random_items if per_item else [[v] for v in random_values],
        higher_is_better=higher_is_better,
        k=k,
        seed=seed,
    )
    if not per_item:
        for key in ("effect_top_lo", "effect_top_hi", "difference_lo", "difference_hi"):
            significance[key] = float("nan")
        significance["interval_note"] = (
            "the metric gives one number for the task, not one per item: no interval over items"
        )
    out.update(significance)
    return out
