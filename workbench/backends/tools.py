"""The built-in backends: TransformerLens ``TransformerBridge``, nnsight ``Envoy`` and plain
transformers models. Each extractor returns the transformers causal LM and tokenizer inside
the user's object; nothing here imports TransformerLens or nnsight unless the user already has.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from workbench.backends.registry import BackendError, BackendParts, register_backend


def _require_causal_lm(model: Any, what: str) -> nn.Module:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise BackendError(
            f"{what} wraps a {type(model).__name__}, not a transformers model; the workbench "
            "drives transformers causal LMs (AutoModelForCausalLM) only"
        )
    if any(p.is_meta for p in model.parameters()):
        raise BackendError(
            f"{what} has no weights loaded yet (parameters on the meta device); run it once or "
            "dispatch it (nnsight: model.dispatch(), or construct with dispatch=True)"
        )
    return model


def _require_tokenizer(tokenizer: Any, what: str) -> Any:
    if tokenizer is None:
        raise BackendError(f"{what} has no tokenizer; pass one: adopt(obj, tokenizer=...)")
    return tokenizer


def _extract_transformer_bridge(bridge: Any, tokenizer: Any) -> BackendParts:
    """TransformerLens ``TransformerBridge``: the HF model behind the bridge components."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    try:
        model = bridge.original_model
    except AttributeError:
        raise BackendError(
            "this TransformerBridge has no local torch model (remote/vLLM driver); the "
            "workbench needs the weights in this process"
        ) from None

    def unwrap(module: nn.Module) -> nn.Module:
        while isinstance(module, GeneralizedComponent):
            inner = module.original_component
            if inner is None:
                raise BackendError(
                    f"bridge component {module.name!r} wraps no transformers module; "
                    "the workbench cannot rebuild the original model around it"
                )
            module = inner
        return module

    return BackendParts(
        model=_require_causal_lm(model, "this TransformerBridge"),
        tokenizer=_require_tokenizer(tokenizer or bridge.tokenizer, "this TransformerBridge"),
        name=getattr(bridge.cfg, "model_name", None),
        unwrap=unwrap,
        shared_reason=(
            "a TransformerBridge replaces the model's attention modules with bridge components "
            "that compute attention themselves and never call the registered attention "
            "function; use adopt()/from_transformer_bridge() (a detached view) instead"
        ),
    )


def _extract_nnsight(envoy: Any, tokenizer: Any) -> BackendParts:
    """nnsight ``Envoy`` (``LanguageModel``, ``TransformersModel``, ``NNsight``): its module."""
    what = f"this nnsight {type(envoy).__name__}"
    model = _require_causal_lm(envoy._module, what)
    return BackendParts(
        model=model,
        tokenizer=_require_tokenizer(tokenizer or getattr(envoy, "tokenizer", None), what),
        name=getattr(envoy, "repo_id", None),
    )


def _extract_transformers(model: Any, tokenizer: Any) -> BackendParts:
    """A plain transformers model (the caller gives the tokenizer)."""
    return BackendParts(
        model=_require_causal_lm(model, "this model"),
        tokenizer=_require_tokenizer(tokenizer, f"a bare {type(model).__name__}"),
        name=None,
    )


#: The built-in backends, registered when :mod:`workbench.backends` is imported.
BUILTIN_BACKENDS = (
    register_backend(
        "transformer_lens",
        "transformer_lens.model_bridge:TransformerBridge",
        _extract_transformer_bridge,
    ),
    register_backend("nnsight", "nnsight:Envoy", _extract_nnsight),
    register_backend("transformers", "transformers:PreTrainedModel", _extract_transformers),
)
