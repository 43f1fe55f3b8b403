"""Measure an intervention: base vs intervened on the same prompts, in one call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from probes.checks import boolean, describe, integer
from probes.checks import text as check_text
from workbench.distributions import kl_from_logits
from workbench.interventions.base import (
    Intervention,
    InterventionArgumentError,
    InterventionError,
)
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
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence):
        raise InterventionArgumentError(
            f"targets must be a list of strings (e.g. [' Paris']), got {describe(targets)}"
        )
    out = []
    for i, t in enumerate(targets):
        check_text(f"targets[{i}]", t)
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
    """Run ``prompts`` with and without ``intervention``; return :class:`Effects`.

    Every argument is checked, and every prompt encoded, before the first forward."""
    if not isinstance(lm, LoadedModel):
        raise InterventionArgumentError(
            f"lm must be a LoadedModel (workbench.load_model()), got {describe(lm)}"
        )
    if not isinstance(intervention, Intervention):
        raise InterventionArgumentError(
            "intervention must be an Intervention, e.g. ZeroAblation(lm, ['L5H3']) or "
            f"interventions.make('zero', lm, heads=['L5H3']); got {describe(intervention)}"
        )
    if intervention.lm is not lm:
        raise InterventionArgumentError(
            f"intervention {intervention!r} was built for another model; build it with this lm"
        )
    if intervention.active:
        raise InterventionArgumentError(
            f"intervention {intervention!r} is already active; measure_effects enters it itself"
        )
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, bytes) or not isinstance(prompts, Sequence):
        raise InterventionArgumentError(
            f"prompts must be a prompt string or a list of them, got {describe(prompts)}"
        )
    prompts = list(prompts)
    if not prompts:
        raise InterventionArgumentError("prompts is empty; give at least one prompt")
    chat = boolean("chat", chat)
    context = lm.info.max_context
    max_new_tokens = integer("max_new_tokens", max_new_tokens, minimum=0, maximum=context)
    target_ids = _target_ids(lm, targets)
    encodings = [lm.encode(prompt, chat=chat) for prompt in prompts]
    for pi, enc in enumerate(encodings):
        if enc.n_tokens + max_new_tokens > context:
            raise InterventionArgumentError(
                f"prompts[{pi}] has {enc.n_tokens} tokens; with max_new_tokens={max_new_tokens} "
                f"that exceeds the model's context of {context} tokens"
            )
    rows, gens = [], []
    for pi, (prompt, enc) in enumerate(zip(prompts, encodings, strict=True)):
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
