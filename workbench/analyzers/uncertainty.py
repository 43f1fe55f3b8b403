"""How far to trust a head ranking and a causal effect, from values already collected.

Every analyzer whose score is a mean over prompts (or test items) keeps the per-item values of
every head, an array ``(n_items, n_layers, n_heads)``; every causal check keeps the per-item
metric with nothing ablated, with the top-k heads ablated and with each random draw ablated.
This module turns those into what a reviewer asks for, with no extra forward pass:

* :func:`bootstrap_interval` - percentile bootstrap confidence interval of each head's mean
  over items (Efron & Tibshirani 1993, ch. 13): items resampled with replacement.
* :func:`split_half_stability` - the ranking computed from two disjoint random halves of the
  items: Spearman correlation of the two halves' scores over all heads and the overlap of their
  top-k sets, averaged over several random splits (a split-half reliability in the sense of
  psychometrics; cf. the stability analyses of attention-head rankings in Zheng et al. 2024,
  "Attention Heads of Large Language Models: A Survey", arXiv:2409.03752).
* :func:`causal_significance` - the effect of ablating the top-k heads against the effects of
  the random draws: both effects, their ratio, a bootstrap interval over items, an empirical
  p-value (the share of random sets that hurt at least as much, with the +1 correction of
  Davison & Hinkley 1997, eq. 4.11, so it is never 0) and a one-line verdict.

NaN per-item values (an item that does not define a head's value) are skipped in every mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Defaults shared by every analyzer (stored in ``df.attrs`` next to the results).
LEVEL = 0.95
RESAMPLES = 1000
SPLITS = 20
ALPHA = 0.05


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        count = np.sum(~np.isnan(x), axis=axis)
        total = np.nansum(x, axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def bootstrap_interval(
    per_item: np.ndarray,
    *,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over items, for every trailing entry.

    Args:
        per_item: ``(n_items, ...)``, e.g. ``(n_items, n_layers, n_heads)``; NaN = no value.
        level: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        resamples: bootstrap resamples of the items.
        seed: seed of the resampling (results are reproducible).

    Returns:
        ``(lo, hi)``, each of shape ``per_item.shape[1:]``. With one item both equal its value.
    """
    x = np.asarray(per_item, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        nan = np.full(x.shape[1:], np.nan)
        return nan, nan.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    flat = x.reshape(n, -1)
    means = np.stack([_nanmean(flat[i], axis=0) for i in idx])  # (resamples, prod(rest))
    tail = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"):
        lo = np.nanquantile(means, tail, axis=0) if np.isfinite(means).any() else means[0]
        hi = np.nanquantile(means, 1.0 - tail, axis=0) if np.isfinite(means).any() else means[0]
    return lo.reshape(x.shape[1:]), hi.reshape(x.shape[1:])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (average ranks for ties; NaN pairs
    dropped); NaN when either side is constant."""
    s = pd.DataFrame({"a": np.ravel(a), "b": np.ravel(b)}).dropna()
    if len(s) < 2 or s["a"].nunique() < 2 or s["b"].nunique() < 2:
        return float("nan")
    return float(s["a"].rank().corr(s["b"].rank()))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the top-``k`` entries of ``a`` that are also top-``k`` in ``b`` (NaN last)."""
    fa = np.nan_to_num(np.ravel(a), nan=-np.inf)
    fb = np.nan_to_num(np.ravel(b), nan=-np.inf)
    k = min(k, fa.size)
    if k <= 0:
        return float("nan")
    ta = set(np.argsort(-fa, kind="stable")[:k].tolist())
    tb = set(np.argsort(-fb, kind="stable")[:k].tolist())
    return len(ta & tb) / k


def split_half_stability(
    per_item: np.ndarray, *, k: int = 10, splits: int = SPLITS, seed: int = 0
) -> dict[str, Any]:
    """Rank stability of the head ranking under a change of task items.

    Each split puts the items in random order and cuts them into two disjoint halves (the odd
    item, if any, is left out); both halves' means rank the heads.

    Args:
        per_item: ``(n_items, n_layers, n_heads)`` (any trailing shape) of per-item scores.
        k: size of the top set compared.
        splits: random splits averaged.

    Returns:
        ``{"spearman": mean over splits, "spearman_min", "top_k_overlap": mean share,
        "k", "splits", "items_per_half"}``; NaN values (and ``splits=0``) with fewer than 4
        items, where a half holds a single item.
    """
    x = np.asarray(per_item, dtype=np.float64)
    n = x.shape[0]
    half = n // 2
    out: dict[str, Any] = {"k": int(k), "items_per_half": int(half)}
    if half < 2:
        return {**out, "spearman": float("nan"), "spearman_min": float("nan"),
                "top_k_overlap": float("nan"), "splits": 0}  # fmt: skip
    rng = np.random.default_rng(seed)
    rhos, overlaps = [], []
    for _ in range(splits):
        order = rng.permutation(n)
        a = _nanmean(x[order[:half]], axis=0)
        b = _nanmean(x[order[half : 2 * half]], axis=0)
        rhos.append(spearman(a, b))
        overlaps.append(top_k_overlap(a, b, k))
    rho = np.array(rhos, dtype=np.float64)
    finite = rho[np.isfinite(rho)]
    return {
        **out,
        "spearman": float(finite.mean()) if finite.size else float("nan"),
        "spearman_min": float(finite.min()) if finite.size else float("nan"),
        "top_k_overlap": float(np.mean(overlaps)),
        "splits": int(splits),
    }


def causal_significance(
    base: Sequence[float] | np.ndarray,
    top: Sequence[float] | np.ndarray,
    random: Sequence[Sequence[float]] | np.ndarray,
    *,
    higher_is_better: bool = True,
    k: int,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    alpha: float = ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """How much more ablating the top-k heads hurts than ablating random sets of k heads.

    The *effect* of an ablation is how much it worsens the metric, averaged over items:
    ``mean(base - ablated)`` when higher is better, ``mean(ablated - base)`` otherwise, so a
    positive effect always means "hurts".

    Args:
        base: ``(n_items,)`` metric per item with nothing ablated.
        top: ``(n_items,)`` metric per item with the top-k heads ablated.
        random: ``(draws, n_items)`` metric per item with each random set ablated.
        higher_is_better: orientation of the metric.
        k: size of the ablated sets (for the verdict).

    Returns:
        ``effect_top``, ``effect_random`` (mean over draws), ``effect_random_each``, ``ratio``
        (NaN unless the random effect is positive), ``effect_top_lo/hi`` and
        ``difference_lo/hi`` (bootstrap over items of the top effect, and of the top effect
        minus the mean random effect), ``p_value`` ((1 + #random effects >= the top effect) /
        (draws + 1)), ``p_min`` (the smallest p-value ``draws`` allows), ``significant`` and a
        one-line ``verdict``.
    """
    sign = 1.0 if higher_is_better else -1.0
    b = np.asarray(base, dtype=np.float64).ravel()
    t = np.asarray(top, dtype=np.float64).ravel()
    r = (
        np.asarray(random, dtype=np.float64).reshape(-1, b.size)
        if len(random)
        else np.zeros((0, b.size))
    )
    if t.size != b.size:
        raise ValueError(f"base has {b.size} items but top has {t.size}")
    hurt_top = sign * (b - t)  # (n_items,)
    hurt_random = sign * (b[None, :] - r)  # (draws, n_items)
    effect_top = float(np.nanmean(hurt_top)) if b.size else float("nan")
    each = [float(np.nanmean(row)) for row in hurt_random]
    draws = len(each)
    effect_random = float(np.mean(each)) if draws else float("nan")
    ratio = effect_top / effect_random if draws and effect_random > 0 else float("nan")
    as_bad = sum(e >= effect_top for e in each)  # random sets that hurt at least as much
    p_value = (1 + as_bad) / (draws + 1) if draws else float("nan")
    lo, hi = bootstrap_interval(hurt_top, level=level, resamples=resamples, seed=seed)
    diff_items = hurt_top - (hurt_random.mean(axis=0) if draws else np.nan)
    dlo, dhi = bootstrap_interval(diff_items, level=level, resamples=resamples, seed=seed + 1)
    significant = bool(draws and p_value < alpha and effect_top > 0)
    return {
        "effect_top": effect_top,
        "effect_random": effect_random,
        "effect_random_each": each,
        "ratio": ratio,
        "effect_top_lo": float(lo),
        "effect_top_hi": float(hi),
        "difference_lo": float(dlo),
        "difference_hi": float(dhi),
        "level": level,
        "resamples": resamples,
        "p_value": p_value,
        "p_min": 1.0 / (draws + 1) if draws else float("nan"),
        "alpha": alpha,
        "significant": significant,
        "verdict": verdict(effect_top, effect_random, p_value, k=k, draws=draws, alpha=alpha),
    }


def verdict(
    effect_top: float, effect_random: float, p_value: float, *, k: int, draws: int, alpha: float
) -> str:
    """One line for a causal check: ``"top-5 hurts 3.1x more than random-5 (p = 0.01)"`` or
    ``"no evidence: ..."`` saying why."""
    if not draws or not math.isfinite(p_value):
        return f"no evidence: no random draws to compare top-{k} with"
    p_text = f"p = {p_value:.2g}" if p_value >= 0.001 else "p < 0.001"
    if not effect_top > 0:
        return f"no evidence: ablating the top-{k} heads does not hurt the metric ({p_text})"
    how_much = (
        f"top-{k} hurts {effect_top / effect_random:.1f}x more than random-{k}"
        if effect_random > 0
        else f"top-{k} hurts, random-{k} does not"
    )
    if p_value >= alpha:
        floor = 1.0 / (draws + 1)
        if floor < alpha:
            return f"no evidence: top-{k} hurts no more than random-{k} ({p_text})"
        if p_value <= floor:  # no random set hurt as much: only the draws are too few
            return (
                f"no evidence yet: {how_much}, but {draws} draws cannot reach p < {alpha} "
                f"({p_text})"
            )
        return (
            f"no evidence: top-{k} hurts no more than random-{k} ({p_text}, and {draws} draws "
            f"cannot reach p < {alpha})"
        )
    return f"{how_much} ({p_text})"


#: Size of the top set the split-half stability of a head table compares.
STABILITY_K = 10


def item_uncertainty(
    per_item: np.ndarray, *, seed: int = 0, k: int = STABILITY_K
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The interval columns and attrs of a head table from its per-item values.

    Args:
        per_item: ``(n_items, n_layers, n_heads)``; the table's score is their mean over items.
        seed: seed of the bootstrap and of the random splits.
        k: top set compared by the split-half stability.

    Returns:
        ``(lo, hi, attrs)``: :func:`bootstrap_interval` of each head's mean, and
        ``{"uncertainty": {"level", "resamples", "seed", "items", "method"},
        "stability": split_half_stability(...)}``.
    """
    x = np.asarray(per_item, dtype=np.float64)
    with warnings.catch_warnings():  # heads with no value at all (NaN) stay NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = bootstrap_interval(x, seed=seed)
        stability = split_half_stability(x, k=k, seed=seed)
    attrs = {
        "uncertainty": {
            "level": LEVEL,
            "resamples": RESAMPLES,
            "seed": int(seed),
            "items": int(x.shape[0]),
            "method": "percentile bootstrap of each head's mean over items",
        },
        "stability": stability,
    }
    return lo, hi, attrs
