"""Divergences between next-token distributions (one implementation for analyzers and effects)."""

from __future__ import annotations

import torch


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` in nats along the last axis, from log-probabilities ``(..., V)`` -> ``(...)``.

    Computed in float64. With ``p`` the base and ``q`` the ablated next-token distribution this
    is the Ships measure (Zhou et al. 2025, "On the Role of Attention Heads in Large Language
    Model Safety").
    """
    logp, logq = logp.double(), logq.double()
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_from_logits(base_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """``KL(base || new)`` of the softmax distributions of ``(..., V)`` logits -> ``(...)`` nats."""
    return kl_divergence(
        torch.log_softmax(base_logits.double(), -1), torch.log_softmax(new_logits.double(), -1)
    )
