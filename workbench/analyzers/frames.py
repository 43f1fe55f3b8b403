"""Head tables: the tidy per-head DataFrame every analyzer returns, with the score's interval
over items, and the merge of report shards of per-prompt-mean analyzers.

A table has one row per (layer, query head): ``layer, head, head_id, score``, and, for an
analyzer whose score is a mean over prompts (or test items), ``score_lo, score_hi`` (percentile
bootstrap over the items) with ``attrs["uncertainty"]``, ``attrs["stability"]`` (split-half
rank stability) and ``attrs["per_item"]`` (every item's value of every head), then the
analyzer's evidence columns (:mod:`workbench.analyzers.uncertainty` has the statistics).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from workbench.analyzers.uncertainty import item_uncertainty
from workbench.heads import head_id

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


def head_frame(
    lm: LoadedModel,
    score: torch.Tensor | np.ndarray,
    evidence: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    *,
    per_item: torch.Tensor | np.ndarray | None = None,
) -> pd.DataFrame:
    """Tidy DataFrame from per-head arrays of shape (n_layers, n_heads).

    Columns: ``layer, head, head_id, score`` then each evidence column; ``attrs`` copied into
    ``df.attrs`` (keep them JSON-serialisable: they go into reports).

    ``per_item``: ``(n_items, n_layers, n_heads)``, each item's value of every head, of which
    ``score`` is the mean over items (NaN = no value; checked). Adds the columns ``score_lo``,
    ``score_hi`` after ``score`` (percentile bootstrap over items) and ``attrs["uncertainty"]``,
    ``attrs["stability"]`` (split-half rank stability) and ``attrs["per_item"]`` (the values as
    a nested list, so that report shards can be merged with their intervals); see
    :func:`workbench.analyzers.uncertainty.item_uncertainty`.
    """
    n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
    layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")

    def flat(x):
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.shape != (n_layers, n_heads):
            raise ValueError(f"expected shape {(n_layers, n_heads)}, got {arr.shape}")
        return arr.reshape(-1)

    data: dict[str, Any] = {
        "layer": layers.reshape(-1),
        "head": heads.reshape(-1),
        "head_id": [head_id(int(a), int(b)) for a, b in zip(layers.flat, heads.flat, strict=True)],
        "score": flat(score).astype(np.float64),
    }
    extra: dict[str, Any] = {}
    if per_item is not None:
        items = _as_array(per_item).reshape(-1, n_layers, n_heads)
        _check_mean(data["score"], items)
        lo, hi, extra = item_uncertainty(items, seed=UNCERTAINTY_SEED)
        data["score_lo"], data["score_hi"] = lo.reshape(-1), hi.reshape(-1)
        extra["per_item"] = items.tolist()
    for name, values in (evidence or {}).items():
        data[name] = flat(values)
    df = pd.DataFrame(data)
    df.attrs.update({"model": lm.info.name, **dict(attrs or {}), **extra})
    return df


UNCERTAINTY_SEED = 0
"""Seed of every head table's bootstrap and splits (so merged shards reproduce a whole run)."""
INTERVAL_COLUMNS = ("score_lo", "score_hi")


def _as_array(x: torch.Tensor | np.ndarray | Sequence[Any]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_mean(score: np.ndarray, items: np.ndarray) -> None:
    """The score must be the mean of the per-item values (else the interval is of another
    quantity); an empty item set (no item passed) has nothing to check."""
    if items.shape[0] == 0:
        return
    with warnings.catch_warnings():  # heads without any value are NaN in both
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(items, axis=0).reshape(-1)
    if not np.allclose(mean, score, rtol=1e-6, atol=1e-9, equal_nan=True):
        worst = float(np.nanmax(np.abs(mean - score)))
        raise ValueError(f"score is not the mean of per_item (largest difference {worst:.3g})")


SUMMED_ATTRS = ("prompts_total", "prompts_used", "prompts_passed", "seconds")


def merge_mean_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """``prompts_used``-weighted mean of the numeric columns of per-prompt-mean head tables
    (same heads, same order); see :meth:`Analyzer.merge`. The interval columns are not means:
    they are recomputed from the shards' per-item values put together (the same interval and
    split-half stability as one run over all the prompts), or dropped, with the reason in
    ``attrs["uncertainty"]["merged"]``, when a shard has no per-item values."""
    if not frames:
        raise ValueError("no frames to merge")
    weights = np.array([float(f.attrs.get("prompts_used", 0)) for f in frames])
    if weights.sum() <= 0:
        raise ValueError("no shard used any prompt")
    first = frames[0]
    flags = [c for c in first.columns if first[c].dtype == bool]
    if flags:
        raise NotImplementedError(f"boolean columns {flags}: override Analyzer.merge")
    out = first.copy()
    keys = ("layer", "head", "head_id")
    for frame in frames[1:]:
        if not frame[list(keys)].equals(first[list(keys)]):
            raise ValueError("shard tables cover different heads")
    for col in first.columns:
        if col in keys or col in INTERVAL_COLUMNS or not pd.api.types.is_numeric_dtype(first[col]):
            continue
        stacked = np.stack([f[col].to_numpy(dtype=np.float64) for f in frames])
        out[col] = (weights @ stacked) / weights.sum()
    attrs = dict(first.attrs)
    for key in SUMMED_ATTRS:
        if all(key in f.attrs for f in frames):
            attrs[key] = sum(f.attrs[key] for f in frames)
    if "seconds" in attrs:
        attrs["seconds"] = round(float(attrs["seconds"]), 3)
    attrs["interrupted"] = any(f.attrs.get("interrupted", False) for f in frames)
    attrs["shards"] = len(frames)
    attrs.pop("causal", None)
    out.attrs = attrs
    _merge_intervals(out, frames)
    return out


def _merge_intervals(out: pd.DataFrame, frames: Sequence[pd.DataFrame]) -> None:
    """``score_lo``/``score_hi``, ``uncertainty``, ``stability`` and ``per_item`` of merged
    shards, from the shards' per-item values in order."""
    if not all(c in out.columns for c in INTERVAL_COLUMNS):
        return
    shape = (int(out["layer"].max()) + 1, int(out["head"].max()) + 1)
    if any(f.attrs.get("per_item") is None for f in frames):
        out.drop(columns=list(INTERVAL_COLUMNS), inplace=True)
        for key in ("stability", "per_item"):
            out.attrs.pop(key, None)
        out.attrs["uncertainty"] = {
            "merged": "a shard table has no per-item values (attrs['per_item']): the interval "
            "and the split-half stability of the merged table cannot be computed"
        }
        return
    items = np.concatenate([_as_array(f.attrs["per_item"]).reshape(-1, *shape) for f in frames])
    seed = int((out.attrs.get("uncertainty") or {}).get("seed", UNCERTAINTY_SEED))
    lo, hi, extra = item_uncertainty(items, seed=seed)
    out["score_lo"], out["score_hi"] = lo.reshape(-1), hi.reshape(-1)
    extra["uncertainty"]["shards"] = len(frames)
    out.attrs.update({**extra, "per_item": items.tolist()})
