"""Build an intervention from a mode name and a user's options (one recipe for every face).

A face (the app's Intervene view, the CLI) knows a mode name and what the user typed: heads,
reference prompts, text to emphasize, a directions file, numbers. :func:`build` turns that into
an :class:`~workbench.interventions.base.Intervention`, always through the registry
(:func:`workbench.interventions.make`), with the defaults of the interventions themselves
(:data:`~workbench.interventions.steering.PASTA_ALPHA`, ``ACT_BETA``, ``FOCUS_SCALE``). The
mode names are the registry's keys; :data:`RECIPES` says which options each one reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from probes.checks import ArgumentError, boolean, describe, number, optional, text
from workbench.errors import WorkbenchError
from workbench.interventions import (
    ACT_BETA,
    FOCUS_SCALE,
    INTERVENTIONS,
    PASTA_ALPHA,
    FocusDirectionSet,
    Intervention,
    head_means,
    make,
    pasta_on_text,
)
from workbench.interventions.base import HeadLike, InterventionArgumentError, head_pairs

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


@dataclass(frozen=True)
class Options:
    """What a user can give besides the heads (None = the intervention's default).

    Attributes:
        prompt, chat: the prompt the intervention will run on (PASTA finds its spans there).
        reference: reference prompts of a mean ablation (the head output is replaced by its
            mean over them).
        emphasize: the prompt text PASTA steers attention to.
        alpha: PASTA's multiplier of attention outside the emphasized text.
        beta: ACT's scale of the attention kept on hidden sinks.
        focus_path: a ``.safetensors`` file of focus directions (their heads come from it).
        scale: the focus directions' scale.
        factor: the output factor of a scale ablation.
    """

    prompt: str = ""
    chat: bool = False
    reference: Sequence[str] = ()
    emphasize: str = ""
    alpha: float | None = None
    beta: float | None = None
    focus_path: str = ""
    scale: float | None = None
    factor: float | None = None


Builder = Callable[["LoadedModel", list[HeadLike], Options], dict[str, Any]]


@dataclass(frozen=True)
class Recipe:
    """How a registered intervention gets its parameters from :class:`Options`.

    Attributes:
        label: one line for a mode picker.
        options: the :class:`Options` fields it reads.
        params: ``(lm, heads, options) -> keyword arguments of make()``.
        uses_heads: False when the heads come from elsewhere (a focus-directions file).
    """

    label: str
    options: tuple[str, ...]
    params: Builder
    uses_heads: bool = True


def _heads(lm: LoadedModel, heads: list[HeadLike], opts: Options) -> dict[str, Any]:
    return {"heads": heads}


def _mean(lm: LoadedModel, heads: list[HeadLike], opts: Options) -> dict[str, Any]:
    refs = [line for line in opts.reference if line.strip()]
    if not refs:
        raise WorkbenchError(
            "mean ablation needs reference prompts (one per line) to average head outputs over"
        )
    return {"heads": heads, "means": head_means(lm, refs)}


def _scale(lm: LoadedModel, heads: list[HeadLike], opts: Options) -> dict[str, Any]:
    return {"heads": heads, "factor": 0.0 if opts.factor is None else opts.factor}


def _act(lm: LoadedModel, heads: list[HeadLike], opts: Options) -> dict[str, Any]:
    return {"heads": heads, "beta": ACT_BETA if opts.beta is None else opts.beta}


def _focus(lm: LoadedModel, heads: list[HeadLike], opts: Options) -> dict[str, Any]:
    path = (opts.focus_path or "").strip()
    if not path:
        raise WorkbenchError(
            "focus directions need a .safetensors file (trained by the contextual-heads "
            "analyzer); give its path"
        )
    return {
        "directions": FocusDirectionSet.load(path),
        "scale": FOCUS_SCALE if opts.scale is None else opts.scale,
    }


def _pasta(lm: LoadedModel, heads: list[HeadLike], opts: Options) -> dict[str, Any]:
    if not (opts.emphasize or "").strip():
        raise WorkbenchError("PASTA needs the text to emphasize (a substring of the prompt)")
    alpha = PASTA_ALPHA if opts.alpha is None else opts.alpha
    on_text = pasta_on_text(lm, heads, opts.prompt, opts.emphasize, alpha, chat=opts.chat)
    return {
        "heads": heads,
        "spans": on_text.spans,
        "n_prompt_tokens": on_text.n_prompt,
        "alpha": alpha,
    }


#: The recipe of each registered intervention a user builds by name, in display order.
RECIPES: dict[str, Recipe] = {
    "zero": Recipe("zero ablation (head output = 0)", (), _heads),
    "mean": Recipe("mean ablation (output = mean over reference prompts)", ("reference",), _mean),
    "uniform": Recipe("uniform ablation (query x 1e-5: attention spread evenly)", (), _heads),
    "scale": Recipe("scale ablation (head output x factor)", ("factor",), _scale),
    "pasta": Recipe("PASTA: emphasize a span of the prompt", ("emphasize", "alpha"), _pasta),
    "act": Recipe("ACT: scale attention to hidden sinks by beta", ("beta",), _act),
    "focus": Recipe(
        "focus directions (from a .safetensors file)", ("focus_path", "scale"), _focus, False
    ),
}
assert set(RECIPES) <= set(INTERVENTIONS), "every recipe builds a registered intervention"


def modes(available: Iterable[str] | None = None) -> dict[str, str]:
    """``{mode: label}`` of the recipes whose options are all in ``available`` (None = all)."""
    allowed = None if available is None else set(available)
    return {
        name: recipe.label
        for name, recipe in RECIPES.items()
        if allowed is None or set(recipe.options) <= allowed
    }


def build(
    lm: LoadedModel, mode: str, heads: Iterable[HeadLike], options: Options | None = None
) -> Intervention:
    """The registered intervention ``mode`` on ``heads`` with the user's ``options``.

    Raises:
        WorkbenchError: unknown mode, or an option the mode needs is missing (message written
            for the user); the intervention's own checks raise ``InterventionError``.
    """
    recipe = RECIPES.get(mode) if isinstance(mode, str) else None
    if recipe is None:
        raise InterventionArgumentError(f"unknown mode {mode!r}; pick one of {', '.join(RECIPES)}")
    try:
        opts = check_options(Options() if options is None else options)
    except ArgumentError as exc:
        if isinstance(exc, InterventionArgumentError):
            raise
        raise InterventionArgumentError(f"{mode}: {exc}") from None
    if recipe.uses_heads:
        heads = head_pairs(lm.layout, heads)
    elif isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise InterventionArgumentError(f"heads must be a list of heads, got {describe(heads)}")
    return make(mode, lm, **recipe.params(lm, list(heads), opts))


def check_options(options: Any) -> Options:
    """``options`` with every field checked (types, finite numbers) before anything is built:
    an :class:`Options` whose numbers are floats and whose reference prompts are a list."""
    if not isinstance(options, Options):
        raise InterventionArgumentError(f"options must be an Options, got {describe(options)}")
    if isinstance(options.reference, (str, bytes)) or not isinstance(options.reference, Iterable):
        raise InterventionArgumentError(
            f"reference must be a list of prompts (one per line), got {describe(options.reference)}"
        )
    reference = [
        text(f"reference[{i}]", r, allow_empty=True) for i, r in enumerate(options.reference)
    ]
    numbers = {
        name: optional(number, name, getattr(options, name))
        for name in ("alpha", "beta", "scale", "factor")
    }
    return replace(
        options,
        prompt=text("prompt", options.prompt, allow_empty=True),
        chat=boolean("chat", options.chat),
        reference=reference,
        emphasize=text("emphasize", options.emphasize, allow_empty=True),
        focus_path=text("focus_path", options.focus_path, allow_empty=True),
        **numbers,
    )
