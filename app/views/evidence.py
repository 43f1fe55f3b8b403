"""How far to trust an atlas result, in words: the causal check's verdict with its interval and
p-value, the score intervals and the split-half stability of the ranking, and the warning of
a quick run. Part of the Head atlas view (:mod:`.atlas`).

The numbers come from the analyzer's ``df.attrs`` (after :func:`workbench.serialize.jsonable`,
so NaN arrives as None): ``causal`` (:func:`workbench.analyzers.causal.causal_evidence` with the
keys of :func:`workbench.analyzers.uncertainty.causal_significance`), ``uncertainty`` and
``stability`` (:func:`workbench.analyzers.uncertainty.item_uncertainty`), ``quick`` and
``note`` (:data:`workbench.analyzers.base.QUICK_NOTE`). The text functions are pure, so they
are tested without a browser; :func:`causal_view` and :func:`evidence_view` wrap them in
components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dash import html

from app import figures
from workbench.charts import causal_figure, verdict_line

#: Split-half Spearman from which a ranking counts as stable (issue 15's target for the
#: default task sizes).
STABLE_SPEARMAN = 0.9
#: Random head sets listed in the causal panel (the rest are counted).
SHOWN_RANDOM_SETS = 3
NO_CAUSAL = "No causal check run (tick 'causal check' and run again)."
CAUSAL_HEIGHT = 330


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, None from JSON, NaN, not a number)."""
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _g(value: Any, spec: str = ".3g") -> str:
    x = _num(value)
    return "n/a" if x is None else format(x, spec)


def has_causal_numbers(causal: Mapping[str, Any] | None) -> bool:
    """Whether ``causal`` holds a measured check (a metric and the top-k value), not a
    ``{"skipped": reason}`` marker or nothing."""
    if not causal:
        return False
    return causal.get("metric") is not None and _num(causal.get("top_k")) is not None


def causal_lines(causal: Mapping[str, Any] | None) -> list[str]:
    """The causal panel's text, first line the verdict.

    Measured check: the verdict with the top-k effect's interval
    (:func:`workbench.charts.verdict_line`), both effects (how much each ablation worsens the
    metric; positive = hurts), ratio and p-value, the metric, the heads. No check: one line
    saying so, with the analyzer's reason when it skipped the check.
    """
    if not causal:
        return [NO_CAUSAL]
    if not has_causal_numbers(causal):
        reason = causal.get("skipped") or causal.get("interval_note")
        return [f"No causal check in this result: {reason}" if reason else NO_CAUSAL]
    k = causal.get("k", "k")
    lines = [verdict_line(causal) or "no verdict (a check without random draws to compare)"]
    draws = causal.get("random_k") or []
    n_draws = causal.get("draws", len(draws))
    if _num(causal.get("effect_top")) is not None:
        lines.append(
            f"Effect (how much the ablation worsens the metric; positive = hurts): "
            f"top-{k} {_g(causal.get('effect_top'), '+.3g')}, random-{k} "
            f"{_g(causal.get('effect_random'), '+.3g')} (mean of {n_draws} draws)"
            + (
                f", ratio {_g(causal['ratio'], '.2g')}x"
                if (_num(causal.get("ratio")) or 0) > 0
                else ""
            )
        )
    if _num(causal.get("p_value")) is not None:
        lines.append(
            f"p = {_g(causal['p_value'], '.2g')}: share of random sets hurting at least as much "
            f"(+1 corrected; {n_draws} draws allow p >= {_g(causal.get('p_min'), '.2g')})"
        )
    if causal.get("interval_note"):
        lines.append(str(causal["interval_note"]))
    better = "higher is better" if causal.get("higher_is_better", True) else "lower is better"
    items = causal.get("items")
    lines.append(
        f"Metric: {causal.get('metric')} ({better}"
        + (f", {items} items" if items else "")
        + (f", {causal['mode']} ablation" if causal.get("mode") else "")
        + ")"
    )
    base, top = _num(causal.get("base")), _num(causal.get("top_k"))
    rand = _num(causal.get("random_k_mean"))
    if base is not None and top is not None:
        lines.append(
            f"Unablated {base:.4g}; top-{k} ablated {top:.4g} ({top - base:+.3g})"
            + (f"; random-{k} ablated {rand:.4g} ({rand - base:+.3g})" if rand is not None else "")
        )
    lines.append(f"Top heads: {', '.join(causal.get('top_heads') or [])}")
    sets = causal.get("random_heads") or []
    if sets:
        shown = "; ".join(", ".join(s) for s in sets[:SHOWN_RANDOM_SETS])
        more = len(sets) - SHOWN_RANDOM_SETS
        lines.append(f"Random heads: {shown}" + (f"; … ({len(sets)} sets)" if more > 0 else ""))
    return lines


def causal_view(causal: Mapping[str, Any] | None) -> tuple[Any, list[Any]]:
    """The causal chart and its text (the verdict line first, in bold)."""
    lines = causal_lines(causal)
    if not has_causal_numbers(causal):
        figure = figures.empty_figure("No causal check for this result.", height=CAUSAL_HEIGHT)
        return figure, [html.Div(lines[0], className="verdict none")]
    significant = bool(causal and causal.get("significant"))
    head = html.Div(lines[0], className="verdict " + ("yes" if significant else "no"))
    return causal_figure(causal, height=CAUSAL_HEIGHT), [head, *[html.Div(t) for t in lines[1:]]]


def quick_text(attrs: Mapping[str, Any]) -> str | None:
    """The weak-evidence warning of a quick run (its ``note``), None for a full run."""
    if not attrs.get("quick"):
        return None
    return str(attrs.get("note") or "quick mode: weak evidence (small tasks)")


def stability_text(attrs: Mapping[str, Any]) -> str | None:
    """The ranking's split-half stability in one line (None when the analyzer gives none).

    Spearman of the scores of two disjoint halves of the items, mean (and min) over random
    splits, and the mean overlap of the halves' top-k sets; "too few items" under 4 items.
    """
    st = attrs.get("stability")
    if isinstance(st, Mapping):
        rho = _num(st.get("spearman"))
        if rho is None:
            return (
                "Ranking stability: too few items for a split-half check "
                f"({st.get('items_per_half', 0)} per half; 2 per half are needed)"
            )
        judged = (
            "stable" if rho >= STABLE_SPEARMAN else "unstable: the ranking depends on the prompts"
        )
        return (
            f"Ranking stability ({judged}): split-half Spearman {rho:.2f} "
            f"(min {_g(st.get('spearman_min'), '.2f')} over {st.get('splits')} splits of "
            f"{st.get('items_per_half')} items per half), top-{st.get('k')} overlap "
            f"{_g(st.get('top_k_overlap'), '.0%')}"
        )
    features = attrs.get("feature_stability")
    if isinstance(features, Mapping) and features:
        parts = [
            f"{name} {_g((st or {}).get('spearman'), '.2f')}"
            for name, st in features.items()
            if isinstance(st, Mapping) or st is None
        ]
        return "Features' split-half Spearman: " + ", ".join(parts)
    return None


def interval_text(attrs: Mapping[str, Any]) -> str | None:
    """What ``score_lo``/``score_hi`` are (level, items, resamples), or why there are none."""
    unc = attrs.get("uncertainty")
    if not isinstance(unc, Mapping):
        return None
    if "none" in unc:
        return f"No score intervals: {unc['none']}"
    level = _num(unc.get("level")) or 0.95
    return (
        f"score_lo / score_hi: {level:.0%} interval, {unc.get('method', 'bootstrap')} "
        f"({unc.get('items')} items, {unc.get('resamples')} resamples)"
    )


def evidence_view(attrs: Mapping[str, Any] | None) -> list[Any]:
    """The lines above the ranking: the quick warning, the stability and the intervals."""
    attrs = attrs or {}
    out: list[Any] = []
    quick = quick_text(attrs)
    if quick:
        out.append(html.Div(quick, className="weak"))
    for text in (stability_text(attrs), interval_text(attrs)):
        if text:
            out.append(html.Div(text))
    return out
