"""Causal evidence: ablate the top-k heads and k random heads, compare a task metric.

An attention score alone is not an explanation. Every analyzer reports, next to its scores,
what happens to its task metric (NIAH accuracy, QA accuracy, refusal rate, KL, loss...) when its
top-k heads are ablated, and when k random heads drawn from the same layers are ablated
instead (several draws with a fixed seed). The result lives in ``df.attrs["causal"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from workbench.heads import head_id
from workbench.interventions import make as make_intervention

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

Metric = Callable[[Any], float]


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


def causal_evidence(
    lm: LoadedModel,
    ranked_heads: Sequence[tuple[int, int]],
    metric: Metric,
    *,
    metric_name: str,
    k: int = 5,
    draws: int = 3,
    seed: int = 0,
    mode: str = "uniform",
    higher_is_better: bool = True,
    mode_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metric with nothing ablated, with the top-``k`` heads ablated, and with ``draws`` sets of
    ``k`` random same-layer heads ablated (ablation ``mode``: zero / uniform / mean / scale).

    Returns a JSON-serialisable dict (``base``, ``top_k``, ``random_k`` list, ``random_k_mean``,
    the head ids used, parameters) that analyzers put in ``df.attrs["causal"]``.
    ``mode_params`` go to the ablation (``means=`` for mean ablation, ``factor=`` for scale).
    """
    mode_params = dict(mode_params or {})
    k = min(k, len(ranked_heads))
    top = [tuple(h) for h in ranked_heads[:k]]
    base = float(metric(lm))
    with make_intervention(mode, lm, heads=top, **mode_params):
        top_value = float(metric(lm))
    gen = torch.Generator().manual_seed(seed)
    random_values, random_sets = [], []
    for _ in range(draws):
        heads = random_heads_like(top, lm.info.n_heads, gen, lm.info.n_layers)
        with make_intervention(mode, lm, heads=heads, **mode_params):
            random_values.append(float(metric(lm)))
        random_sets.append([head_id(*h) for h in heads])
    mean_random = sum(random_values) / len(random_values) if random_values else float("nan")
    return {
        "metric": metric_name,
        "higher_is_better": higher_is_better,
        "mode": mode,
        "k": k,
        "draws": draws,
        "seed": seed,
        "base": base,
        "top_k": top_value,
        "random_k": random_values,
        "random_k_mean": mean_random,
        "top_heads": [head_id(*h) for h in top],
        "random_heads": random_sets,
    }
