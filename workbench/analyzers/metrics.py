"""Task metrics shared by analyzers' causal checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from workbench.batching import right_pad
from workbench.generation import pad_id
from workbench.lm import kernel_errors_translated

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


BATCH = 8  # encodings per forward of :func:`next_token_losses`


@torch.no_grad()
def next_token_losses(
    lm: LoadedModel, encodings: Sequence[Encoded], start: int | Sequence[int] = 0
) -> list[float]:
    """Mean cross-entropy (nats) of predicting each next token, one value per encoding (the
    per-item metric of a causal check; ``start`` as in :func:`mean_next_token_loss`).

    Runs :data:`BATCH` encodings per forward, right-padded: under the causal mask a position
    never sees the padding after it, so each row's logits are those of its own forward."""
    starts = [start] * len(encodings) if isinstance(start, int) else list(start)
    out: list[float] = []
    for first in range(0, len(encodings), BATCH):
        chunk = list(encodings[first : first + BATCH])
        ids = right_pad([enc.input_ids for enc in chunk], pad_id(lm.tokenizer))
        with kernel_errors_translated("forward"):
            logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits
        for row, (enc, s) in enumerate(zip(chunk, starts[first : first + BATCH], strict=True)):
            n = enc.n_tokens
            nll = torch.nn.functional.cross_entropy(
                logits[row, : n - 1].double(), ids[row, 1:n].to(logits.device), reduction="none"
            )
            out.append(float(nll[max(0, s - 1) :].mean()) if n > 1 else float("nan"))
    return out
