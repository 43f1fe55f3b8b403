"""One-line plain-text accounts of how far to trust a head table: its score intervals, the
split-half stability of its ranking and the verdict of its causal check. The command line
prints them and the report page shows them next to the scores (no plotly, no model).

The quantities come from the analyzers (:mod:`workbench.analyzers.uncertainty`):
``attrs["uncertainty"]`` (percentile bootstrap over the task items), ``attrs["stability"]``
(split-half Spearman and top-k overlap) and ``attrs["causal"]`` (top-k vs random-k effects,
interval, empirical p-value, verdict).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.analyzers.base import QUICK_NOTE
from workbench.serialize import finite_or_none


def interval_text(attrs: Mapping[str, Any]) -> str | None:
    """``"score intervals: 95% percentile bootstrap over 12 items (1000 resamples)"``; None
    when the table has no intervals."""
    unc = attrs.get("uncertainty") or {}
    if "items" not in unc:
        return None
    level = finite_or_none(unc.get("level")) or 0.95
    resamples = unc.get("resamples")
    tail = f" ({resamples} resamples)" if resamples else ""
    return f"score intervals: {level:.0%} percentile bootstrap over {unc['items']} items{tail}"


def stability_text(attrs: Mapping[str, Any]) -> str | None:
    """``"ranking stability: split-half Spearman 0.95 (min 0.91), top-10 overlap 0.90 (20
    splits, 6 items a half)"``, a line saying why it is missing when the task had too few items,
    or None when the table has no stability at all."""
    stab = attrs.get("stability")
    if not stab:
        return None
    rho, overlap = finite_or_none(stab.get("spearman")), finite_or_none(stab.get("top_k_overlap"))
    half = stab.get("items_per_half")
    if rho is None or overlap is None:
        return f"ranking stability: not measurable ({half} item(s) a half; needs 2 or more)"
    low = finite_or_none(stab.get("spearman_min"))
    low_text = f" (min {low:.2f})" if low is not None else ""
    return (
        f"ranking stability: split-half Spearman {rho:.2f}{low_text}, top-{stab.get('k')} "
        f"overlap {overlap:.2f} ({stab.get('splits')} splits, {half} items a half)"
    )


def causal_text(causal: Mapping[str, Any] | None) -> str | None:
    """The causal check's verdict with the top-k effect's interval and the random effect:
    ``"top-5 hurts 3.1x more than random-5 (p = 0.025); top-5 effect 0.41, 95% CI [0.2, 0.6];
    random-5 effect 0.13"``; the reason when the check was skipped; None without a check."""
    if not causal:
        return None
    if "verdict" not in causal:
        skipped = causal.get("skipped")
        return f"no causal check: {skipped}" if skipped else None
    k = causal.get("k", "k")
    parts = [str(causal["verdict"])]
    top, lo, hi = (finite_or_none(causal.get(f"effect_top{end}")) for end in ("", "_lo", "_hi"))
    if top is not None:
        level = finite_or_none(causal.get("level")) or 0.95
        ci = f", {level:.0%} CI [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else ""
        parts.append(f"top-{k} effect {top:.3g}{ci}")
    random = finite_or_none(causal.get("effect_random"))
    if random is not None:
        parts.append(f"random-{k} effect {random:.3g} (mean of {causal.get('draws')} draws)")
    return "; ".join(parts)


def quick_text(attrs: Mapping[str, Any]) -> str | None:
    """The weak-evidence note of a quick run (``attrs["note"]``), None otherwise."""
    if not attrs.get("quick"):
        return None
    return str(attrs.get("note") or QUICK_NOTE)


def brief_line(attrs: Mapping[str, Any]) -> str | None:
    """The ranking's split-half stability and the causal verdict on one line (None when the
    table has neither): what the report shows under each grid and prints per analyzer."""
    found = [t for t in (stability_text(attrs), causal_text(attrs.get("causal"))) if t]
    return "; ".join(found) or None


def evidence_lines(attrs: Mapping[str, Any]) -> list[str]:
    """Every line above that applies to a table with ``attrs``, in reading order."""
    lines = [interval_text(attrs), stability_text(attrs), causal_text(attrs.get("causal"))]
    for key, value in attrs.items():  # companion checks, e.g. contextual's causal_logprob
        if key.startswith("causal_") and isinstance(value, Mapping) and "verdict" in value:
            lines.append(f"{key}: {causal_text(value)}")
    lines.append(quick_text(attrs))
    return [line for line in lines if line]
