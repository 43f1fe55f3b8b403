"""Shared by the reference rules: the agreement measure the peer tests assert, its printed
line, and the model's layer / head counts read the way the reference repositories read them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

TOP_K = 5


def head_names(scores: np.ndarray, k: int = TOP_K) -> list[str]:
    """The ``k`` best heads of a (layers, heads) array as ``L{layer}H{head}``, best first."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_heads = np.asarray(scores).shape[1]
    order = np.argsort(-flat, kind="stable")[:k]
    return [f"L{i // n_heads}H{i % n_heads}" for i in order]


def agreement(ours: np.ndarray, ref: np.ndarray, k: int = TOP_K) -> dict[str, Any]:
    """Spearman correlation of two (layers, heads) score arrays over every head (average ranks
    for ties) and their top-``k`` heads; ``shared`` = heads in both top-``k`` sets."""
    a = np.asarray(ours, dtype=np.float64).reshape(-1)
    b = np.asarray(ref, dtype=np.float64).reshape(-1)
    assert a.shape == b.shape, (a.shape, b.shape)
    rho = float(pd.Series(a).rank().corr(pd.Series(b).rank()))
    top_ours, top_ref = head_names(ours, k), head_names(ref, k)
    return {
        "spearman": rho,
        "top_ours": top_ours,
        "top_ref": top_ref,
        "shared": len(set(top_ours) & set(top_ref)),
        "max_abs_diff": float(np.max(np.abs(a - b))),
    }


def report(family: str, result: dict[str, Any], **extra: Any) -> str:
    """One printable line per family (pytest -s shows it)."""
    more = "".join(f", {key}={value}" for key, value in extra.items())
    return (
        f"[peer] {family}: spearman={result['spearman']:.4f}, top-5 ours={result['top_ours']}, "
        f"reference={result['top_ref']}, shared={result['shared']}/5, "
        f"max |diff|={result['max_abs_diff']:.3g}{more}"
    )


def decoder_layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    """The decoder layers of a Llama-style transformers model (``model.model.layers``)."""
    return model.model.layers


def n_layers_heads(model: torch.nn.Module) -> tuple[int, int]:
    """``(num_hidden_layers, num_attention_heads)`` from the model's config."""
    return model.config.num_hidden_layers, model.config.num_attention_heads
