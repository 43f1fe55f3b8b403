"""Interventions on attention heads: ablations and steering, as composable context managers.

All run through the registered attention path (``probes.attention_path``), during a plain
forward and during ``generate`` with a KV cache. Build one by class or by registered name::

    from workbench import interventions as iv
    with iv.ZeroAblation(lm, ["L5H3", "L7H1"]):
        lm.forward("...")
    with iv.make("pasta", lm, heads=["L12H4"], spans=[(3, 9)], n_prompt_tokens=20):
        ...
"""

from __future__ import annotations

import inspect

from probes.checks import ArgumentError, boolean, unknown_keywords
from workbench.interventions.ablation import (
    HeadMeans,
    MeanAblation,
    ScaleAblation,
    UniformAblation,
    ZeroAblation,
    head_means,
)
from workbench.interventions.base import (
    Intervention,
    InterventionArgumentError,
    InterventionError,
    head_pairs,
    normalize_heads,
)
from workbench.interventions.effects import Effects, kl_per_position, measure_effects
from workbench.interventions.function_vector import FunctionVector
from workbench.interventions.patching import PatchHeads
from workbench.interventions.spans import char_spans_to_tokens, find_substring_spans
from workbench.interventions.steering import (
    ACT_BETA,
    FOCUS_SCALE,
    PASTA_ALPHA,
    AttentionCalibration,
    FocusDirections,
    FocusDirectionSet,
    Pasta,
    Temperature,
)
from workbench.lm import LoadedModel

#: Registered interventions by name.
INTERVENTIONS: dict[str, type[Intervention]] = {
    cls.name: cls
    for cls in (
        ZeroAblation,
        MeanAblation,
        UniformAblation,
        ScaleAblation,
        Pasta,
        AttentionCalibration,
        FocusDirections,
        Temperature,
        PatchHeads,
        FunctionVector,
    )
}

#: The ablation modes of ``workbench generate --mode``.
ABLATION_MODES = ("zero", "mean", "uniform", "scale")


def make(name: str, lm: LoadedModel, **params) -> Intervention:
    """Build the intervention registered as ``name`` with its parameters.

    Unknown and missing parameters are refused by name (from the class's own signature)
    before the intervention is built; its constructor checks the values."""
    cls = INTERVENTIONS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InterventionArgumentError(
            f"unknown intervention {name!r}; known: {', '.join(sorted(INTERVENTIONS))}"
        )
    signature = inspect.signature(cls.__init__)
    taken = [p for p in signature.parameters.values() if p.name not in ("self", "lm")]
    try:
        unknown_keywords(f"intervention {name!r}", params, [p.name for p in taken])
    except ArgumentError as exc:
        raise InterventionArgumentError(str(exc)) from None
    missing = [p.name for p in taken if p.default is p.empty and p.name not in params]
    if missing:
        raise InterventionArgumentError(
            f"intervention {name!r} needs parameter(s) {', '.join(missing)}"
        )
    return cls(lm, **params)


def pasta_on_text(
    lm: LoadedModel,
    heads,
    prompt: str,
    emphasize: str,
    alpha: float = PASTA_ALPHA,
    *,
    chat: bool = False,
) -> Pasta:
    """PASTA emphasizing every occurrence of ``emphasize`` in the prompt as it is tokenized
    (``lm.encode(prompt, chat=chat)``: the chat template's text when ``chat``)."""
    chat = boolean("chat", chat)
    enc = lm.encode(prompt, chat=chat)
    char_spans = find_substring_spans(enc.text, emphasize)
    spans = char_spans_to_tokens(
        lm.tokenizer, enc.text, char_spans, add_special_tokens=not enc.chat
    )
    return Pasta(lm, heads, spans=spans, n_prompt_tokens=enc.n_tokens, alpha=alpha)


__all__ = [
    "ABLATION_MODES",
    "ACT_BETA",
    "FOCUS_SCALE",
    "INTERVENTIONS",
    "PASTA_ALPHA",
    "AttentionCalibration",
    "Effects",
    "FocusDirectionSet",
    "FocusDirections",
    "HeadMeans",
    "Intervention",
    "InterventionArgumentError",
    "InterventionError",
    "MeanAblation",
    "Pasta",
    "PatchHeads",
    "ScaleAblation",
    "Temperature",
    "UniformAblation",
    "ZeroAblation",
    "char_spans_to_tokens",
    "find_substring_spans",
    "head_means",
    "head_pairs",
    "kl_per_position",
    "make",
    "measure_effects",
    "normalize_heads",
    "pasta_on_text",
]
