"""Measure an intervention: base vs intervened on the same prompts, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from workbench.distributions import kl_from_logits
from workbench.interventions.base import Intervention, InterventionError
from workbench.lm import LoadedModel


@dataclass
class Effects:
    """Result of :func:`measure_effects`.

    ``positions``: one row per (prompt, position) with the token there, ``kl`` =
    KL(base || intervened) of the next-token distributions (nats) and, per target token ``t``,
    ``logprob_base[t]``, ``logprob_intervened[t]``, ``delta[t]``.
    ``generations``: one row per prompt with both greedy continuations side by side.
    """

    positions: pd.DataFrame
    generations: pd.DataFrame


kl_per_position = kl_from_logits  # KL(base || new): (..., V) logits -> (...) nats


def _target_ids(lm: LoadedModel, targets: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for t in targets:
        ids = lm.tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InterventionError(f"target {t!r} tokenizes to nothing")
        out.append((t, int(ids[0])))  # the first token of the target is what is scored
    return out


@torch.no_grad()
def measure_effects(
    lm: LoadedModel,
    prompts: str | Sequence[str],
    intervention: Intervention,
    *,
    targets: Sequence[str] = (),
    max_new_tokens: int = 20,
    chat: bool = False,
) -> Effects:
    """Run ``prompts`` with and without ``intervention``; return :class:`Effects`."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InterventionError("no prompts given")
    target_ids = _target_ids(lm, targets)
    rows, gens = [], []
    for pi, prompt in enumerate(prompts):
        enc = lm.encode(prompt, chat=chat)
        base = lm.forward(enc)[0]
        with intervention:
            new = lm.forward(enc)[0]
        kl = kl_per_position(base, new)
        base_lp, new_lp = torch.log_softmax(base, -1), torch.log_softmax(new, -1)
        for pos in range(enc.n_tokens):
            row = {
                "prompt": pi,
                "position": pos,
                "token": enc.tokens[pos],
                "next_token": enc.tokens[pos + 1] if pos + 1 < enc.n_tokens else None,
                "kl": float(kl[pos]),
            }
            for text, tid in target_ids:
                b, n = float(base_lp[pos, tid]), float(new_lp[pos, tid])
                row[f"logprob_base[{text}]"] = b
                row[f"logprob_intervened[{text}]"] = n
                row[f"delta[{text}]"] = n - b
            rows.append(row)
        base_text = lm.generate(enc, max_new_tokens=max_new_tokens) if max_new_tokens else ""
        with intervention:
            new_text = lm.generate(enc, max_new_tokens=max_new_tokens) if max_new_tokens else ""
        gens.append(
            {"prompt": pi, "text": prompt, "base_text": base_text, "intervened_text": new_text}
        )
    positions = pd.DataFrame(rows)
    positions.attrs.update(intervention=repr(intervention), targets=list(targets))
    generations = pd.DataFrame(gens)
    generations.attrs.update(intervention=repr(intervention), max_new_tokens=max_new_tokens)
    return Effects(positions, generations)
