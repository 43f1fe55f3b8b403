"""Task metrics shared by analyzers' causal checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel


@torch.no_grad()
def mean_next_token_loss(
    lm: LoadedModel, encodings: Sequence[Encoded], start: int | Sequence[int] = 0
) -> float:
    """Mean cross-entropy (nats) of predicting each next token of each encoding.

    ``start``: first predicted position to count (one int, or one per encoding), e.g. the
    start of the second repeat for an induction loss.
    """
    total, count = 0.0, 0
    starts = [start] * len(encodings) if isinstance(start, int) else list(start)
    for enc, s in zip(encodings, starts, strict=True):
        logits = lm.forward(enc)[0, :-1].double()
        targets = enc.input_ids[0, 1:].to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        nll = nll[max(0, s - 1) :]
        total += float(nll.sum())
        count += int(nll.numel())
    return total / max(count, 1)


@torch.no_grad()
def next_token_losses(
    lm: LoadedModel, encodings: Sequence[Encoded], start: int | Sequence[int] = 0
) -> list[float]:
    """Mean cross-entropy (nats) of predicting each next token, one value per encoding (the
    per-item metric of a causal check; ``start`` as in :func:`mean_next_token_loss`)."""
    starts = [start] * len(encodings) if isinstance(start, int) else list(start)
    return [mean_next_token_loss(lm, [enc], s) for enc, s in zip(encodings, starts, strict=True)]
