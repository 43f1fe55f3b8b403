"""From finished units to the report's tables: merged analyzer tables, the heads table and
the causal-evidence table. Pure functions of DataFrames (no model, no files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workbench.analyzers import Agreement, agreement, get_analyzer, top_heads
from workbench.analyzers.agreement import NOT_FAMILIES
from workbench.heads import parse_heads

KEYS = ["model", "layer", "head", "head_id"]


def merge_shards(analyzer: str, frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One table from an analyzer's shard tables (its own :meth:`Analyzer.merge`)."""
    if len(frames) == 1:
        out = frames[0].copy()
        out.attrs = dict(frames[0].attrs)
        return out
    return get_analyzer(analyzer).merge(list(frames))


def evidence_table(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One analyzer's tables of several models, stacked, with a leading ``model`` column."""
    parts = []
    for model, df in frames.items():
        part = df.copy()
        part.insert(0, "model", model)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    out.attrs = {}
    return out


def _membership(ids: Sequence[str], head_ids: pd.Series) -> np.ndarray:
    wanted = set(ids)
    return head_ids.isin(wanted).to_numpy()


def heads_table(results: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per (model, layer, head): every analyzer's score, evidence columns and flags
    as ``{analyzer}.{column}``, plus its rank and causal-evidence columns:
    ``{analyzer}.rank`` (1 = highest score), ``{analyzer}.causal_top_k`` (ablated in the top-k
    set), ``{analyzer}.causal_random_k`` (in how many random control sets it was ablated).

    ``results``: ``{model: {analyzer: merged table with attrs["causal"]}}``.
    """
    per_model = []
    for model, frames in results.items():
        base: pd.DataFrame | None = None
        for analyzer, df in frames.items():
            cols = df.drop(columns=["layer", "head", "head_id"]).add_prefix(f"{analyzer}.")
            order = df.sort_values("score", ascending=False, kind="stable").index
            rank = pd.Series(np.arange(1, len(df) + 1), index=order).sort_index()
            cols[f"{analyzer}.rank"] = rank.to_numpy()
            causal = df.attrs.get("causal") or {}
            if "top_heads" in causal:
                cols[f"{analyzer}.causal_top_k"] = _membership(causal["top_heads"], df["head_id"])
                counts = np.zeros(len(df), dtype=np.int64)
                for draw in causal.get("random_heads", []):
                    counts += _membership(draw, df["head_id"])
                cols[f"{analyzer}.causal_random_k"] = counts
            keys = df[["layer", "head", "head_id"]].copy()
            keys.insert(0, "model", model)
            table = pd.concat([keys.reset_index(drop=True), cols.reset_index(drop=True)], axis=1)
            base = table if base is None else base.merge(table, on=KEYS, how="outer")
        if base is not None:
            per_model.append(base)
    if not per_model:
        return pd.DataFrame(columns=KEYS)
    out = pd.concat(per_model, ignore_index=True)
    return out.sort_values(["model", "layer", "head"], kind="stable").reset_index(drop=True)


#: The keys of :func:`workbench.analyzers.uncertainty.causal_significance` in a causal check,
#: each a column of :func:`causal_table` (lists as comma-joined text).
SIGNIFICANCE_KEYS = (
    "effect_top",
    "effect_random",
    "effect_random_each",
    "ratio",
    "effect_top_lo",
    "effect_top_hi",
    "difference_lo",
    "difference_hi",
    "level",
    "resamples",
    "p_value",
    "p_min",
    "alpha",
    "significant",
    "verdict",
)


def _number(value: Any) -> float:
    """``value`` as a float; NaN for None or anything that is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _joined(values: Any) -> str:
    return ",".join(f"{_number(v):.6g}" for v in values or [])


def _significance(c: Mapping[str, Any]) -> dict[str, Any]:
    """The significance columns of one causal check (NaN / None where an older check lacks
    them)."""
    row: dict[str, Any] = {}
    for key in SIGNIFICANCE_KEYS:
        value = c.get(key)
        if key == "effect_random_each":
            row[key] = _joined(value)
        elif key == "verdict":
            row[key] = None if value is None else str(value)
        elif key == "significant":
            row[key] = None if value is None else bool(value)
        elif key == "resamples":
            row[key] = int(value) if value is not None else None
        else:
            row[key] = _number(value)
    row["interval_note"] = c.get("interval_note")
    return row


def causal_table(results: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per (model, analyzer) with a causal check: the metric with nothing ablated,
    with the top-k heads ablated and with k random same-layer heads ablated (mean and draws),
    the raw changes ``effect_top_k`` / ``effect_random_k`` (ablated minus base, in the metric's
    units and sign), the number of task ``items``, and the significance of the comparison
    (:data:`SIGNIFICANCE_KEYS`: ``effect_top`` / ``effect_random`` oriented so that positive
    means "hurts", their ``ratio``, the top-k effect's bootstrap interval ``effect_top_lo/hi``
    and that of the difference, the empirical ``p_value`` against the random draws, and the
    one-line ``verdict``; see :func:`workbench.analyzers.uncertainty.causal_significance`)."""
    rows: list[dict[str, Any]] = []
    for model, frames in results.items():
        for analyzer, df in frames.items():
            c = df.attrs.get("causal") or {}
            if "base" not in c:
                continue
            rows.append(
                {
                    "model": model,
                    "analyzer": analyzer,
                    "metric": c.get("metric"),
                    "higher_is_better": bool(c.get("higher_is_better", True)),
                    "mode": c.get("mode"),
                    "k": int(c.get("k", 0)),
                    "draws": int(c.get("draws", 0)),
                    "items": int(c["items"]) if c.get("items") is not None else None,
                    "base": float(c["base"]),
                    "top_k": float(c["top_k"]),
                    "random_k_mean": float(c["random_k_mean"]),
                    "random_k": _joined(c.get("random_k")),
                    "effect_top_k": float(c["top_k"]) - float(c["base"]),
                    "effect_random_k": float(c["random_k_mean"]) - float(c["base"]),
                    "top_heads": ",".join(c.get("top_heads", [])),
                    **_significance(c),
                    "quick": bool(df.attrs.get("quick", False)),
                }
            )
    return pd.DataFrame(rows)


def evidence_summary(results: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per (model, analyzer): how far to trust its ranking and its causal check.

    Columns: ``items`` (task items the scores average over) and ``level`` of the score
    intervals (``attrs["uncertainty"]``), the split-half rank stability (``attrs["stability"]``:
    ``spearman``, ``spearman_min``, ``top_k_overlap`` of the top ``stability_k``), ``quick``,
    and the causal check's ``verdict``, ``p_value``, ``ratio``, ``effect_top`` with its interval
    ``effect_top_lo/hi`` and ``effect_random`` (NaN / None where the analyzer has none)."""
    rows: list[dict[str, Any]] = []
    for model, frames in results.items():
        for analyzer, df in frames.items():
            unc = df.attrs.get("uncertainty") or {}
            stab = df.attrs.get("stability") or {}
            c = df.attrs.get("causal") or {}
            rows.append(
                {
                    "model": model,
                    "analyzer": analyzer,
                    "items": int(unc["items"]) if unc.get("items") is not None else None,
                    "level": _number(unc.get("level")),
                    "spearman": _number(stab.get("spearman")),
                    "spearman_min": _number(stab.get("spearman_min")),
                    "top_k_overlap": _number(stab.get("top_k_overlap")),
                    "stability_k": int(stab["k"]) if stab.get("k") is not None else None,
                    "quick": bool(df.attrs.get("quick", False)),
                    "verdict": c.get("verdict", c.get("skipped")),
                    "p_value": _number(c.get("p_value")),
                    "ratio": _number(c.get("ratio")),
                    "effect_top": _number(c.get("effect_top")),
                    "effect_top_lo": _number(c.get("effect_top_lo")),
                    "effect_top_hi": _number(c.get("effect_top_hi")),
                    "effect_random": _number(c.get("effect_random")),
                }
            )
    return pd.DataFrame(rows)


def top_heads_of(df: pd.DataFrame, n: int) -> list[tuple[int, int]]:
    """The ``n`` best heads of a merged table (the causal top set first when there is one)."""
    causal = df.attrs.get("causal") or {}
    if causal.get("top_heads"):
        return [tuple(h) for h in parse_heads(",".join(causal["top_heads"][:n]))]
    return top_heads(df, n)


def agreement_tables(
    results: Mapping[str, Mapping[str, pd.DataFrame]], k: int
) -> dict[str, Agreement]:
    """Per model with two or more head families (analyzers but the atlas,
    :data:`~workbench.analyzers.agreement.NOT_FAMILIES`): their :class:`Agreement` at top-``k``
    (at most the model's head count)."""
    out: dict[str, Agreement] = {}
    for model, frames in results.items():
        families = {a: df for a, df in frames.items() if a not in NOT_FAMILIES}
        if len(families) >= 2:
            n_heads = min(len(df) for df in families.values())
            out[model] = agreement(families, k=min(k, n_heads))
    return out
