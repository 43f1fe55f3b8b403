"""Alternative backends: hand the workbench a TransformerLens or nnsight model object.

People who live in TransformerLens or nnsight already hold a model object. These functions turn
it into a :class:`~workbench.LoadedModel`, so every workbench probe, analyzer and intervention
runs on the very same weights::

    from transformer_lens.model_bridge import TransformerBridge
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    lm = workbench.backends.from_transformer_bridge(bridge)     # or adopt(bridge)

    from nnsight import LanguageModel
    nn_model = LanguageModel(hf, tokenizer=tok)
    lm = workbench.backends.from_nnsight(nn_model)               # or adopt(nn_model)

How: the workbench needs a transformers model whose attention layers call the registered
attention function (``attn_implementation="workbench"``). Both tools hold such a model inside,
but a ``TransformerBridge`` has replaced its submodules with bridge components that reimplement
attention (they never call transformers' attention interface), and nnsight has installed its own
``forward`` on every module. So :func:`adopt` builds a *detached view* (:func:`detached_view`):
a new module tree that shares every parameter and buffer tensor with the user's model (no
weights are copied) but has its own module objects, its own config (so its own attention
implementation) and no foreign hooks or wrappers. The user's object is left exactly as it was:
the bridge keeps its hooks and eager attention, the nnsight model keeps tracing as before, and
weight edits on either side (``enable_compatibility_mode``'s folding, a fine-tuning step) show
through, because the tensors are shared.

:func:`shared` is the other option for nnsight and plain transformers models: it switches the
user's own model to the workbench attention path for the duration of a ``with`` block (and
restores the previous implementation afterwards), so nnsight interventions and workbench probes
can act in one and the same forward pass.

Backends are found through a small registry keyed by class (:func:`register_backend`); an
object is matched by walking its class's MRO, so subclasses of a registered class work too.
Nothing here imports TransformerLens or nnsight unless the user already has.
"""

from __future__ import annotations

import copy
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from workbench.errors import WorkbenchError
from workbench.lm import LoadedModel, wrap_model

__all__ = [
    "Backend",
    "BackendError",
    "BackendParts",
    "adopt",
    "detached_view",
    "find_backend",
    "from_nnsight",
    "from_transformer_bridge",
    "register_backend",
    "registered_backends",
    "shared",
]

Unwrap = Callable[[nn.Module], nn.Module]


class BackendError(WorkbenchError):
    """An object cannot be adopted: unknown type, no local weights, no tokenizer, ..."""


def _identity(module: nn.Module) -> nn.Module:
    return module


@dataclass(frozen=True)
class BackendParts:
    """What a backend hands the workbench.

    Attributes:
        model: the transformers causal LM inside the user's object (may still contain the
            tool's wrapper modules; ``unwrap`` removes them in the detached view).
        tokenizer: the tokenizer to encode prompts with.
        name: display name (``ModelInfo.name``); None lets ``wrap_model`` pick one.
        unwrap: maps one of the tool's wrapper modules to the transformers module it wraps
            (identity for anything else).
        shared_reason: None when :func:`shared` may drive ``model`` in place; otherwise why not.
    """

    model: nn.Module
    tokenizer: Any
    name: str | None
    unwrap: Unwrap = _identity
    shared_reason: str | None = None


@dataclass(frozen=True)
class Backend:
    """One registry row: objects of class ``target`` are adopted through ``extract``.

    Attributes:
        name: short name (``"transformer_lens"``, ``"nnsight"``, ``"transformers"``).
        target: ``"importable.module:ClassName"``, looked up only in already imported modules
            (an object of that class cannot exist otherwise), so no library is imported here.
        extract: ``extract(obj, tokenizer)`` -> :class:`BackendParts`; ``tokenizer`` is the
            caller's override (None = take the object's own).
    """

    name: str
    target: str
    extract: Callable[[Any, Any], BackendParts]

    def resolve(self) -> type | None:
        """The target class, or None while its module is not imported (or lacks the class).

        Never imports anything: ``target`` names the class's module or a package above it, and
        an object of the class cannot exist before that has been imported.
        """
        module_name, _, class_name = self.target.partition(":")
        module = sys.modules.get(module_name)
        return getattr(module, class_name, None) if module is not None else None


_REGISTRY: dict[str, Backend] = {}


def register_backend(
    name: str, target: str, extract: Callable[[Any, Any], BackendParts]
) -> Backend:
    """Add (or replace) the backend for class ``target`` (``"package.module:ClassName"``)."""
    backend = Backend(name=name, target=target, extract=extract)
    _REGISTRY[target] = backend
    return backend


def registered_backends() -> tuple[Backend, ...]:
    """The registered backends, in registration order."""
    return tuple(_REGISTRY.values())


def find_backend(obj: Any) -> Backend:
    """The backend registered for the most specific class of ``obj`` (MRO order).

    Raises:
        BackendError: no registered class matches.
    """
    by_class = {cls: b for b in _REGISTRY.values() if (cls := b.resolve()) is not None}
    for cls in type(obj).__mro__:
        if cls in by_class:
            return by_class[cls]
    raise BackendError(
        f"the workbench cannot adopt a {type(obj).__module__}.{type(obj).__qualname__}; "
        f"supported: {', '.join(b.target for b in _REGISTRY.values())} "
        "(or register one with workbench.backends.register_backend)"
    )


# -- the detached view ---------------------------------------------------------------------------

# Per-module hook dictionaries (forward/backward/state-dict hooks): a view starts with none.
_HOOK_DICTS = tuple(
    key
    for key, value in nn.Module().__dict__.items()
    if isinstance(value, dict) and key not in ("_parameters", "_buffers", "_modules")
)
# Instance attributes other tools install on modules that must not follow into a view:
# a module's own ``forward`` (nnsight's Controller, TransformerLens patches) and nnsight's state.
_FOREIGN_ATTRS = ("forward", "__nnsight__")


def _config_class() -> type:
    from transformers import PretrainedConfig

    return PretrainedConfig


def detached_view(model: nn.Module, unwrap: Unwrap = _identity) -> nn.Module:
    """A new module tree over the same parameter and buffer tensors as ``model``.

    Every module is shallow-copied: the copy shares ``model``'s parameter and buffer
    dictionaries (so no weights are copied, in-place weight edits and replaced parameters show
    through in both directions) but has its own children, its own (deep-copied) transformers
    config, no forward/backward hooks and no instance ``forward`` (every module runs its class's
    forward). ``unwrap`` replaces foreign wrapper modules (TransformerLens bridge components) by
    the modules they wrap. Changing the view's attention implementation, attaching workbench
    hooks to it or putting it in eval mode leaves ``model`` untouched.

    Raises:
        BackendError: ``model`` is dispatched by accelerate (``device_map`` offload hooks),
            which a view cannot carry over.
    """
    config_cls = _config_class()
    clones: dict[int, nn.Module] = {}
    config_memo: dict[int, Any] = {}

    def visit(module: nn.Module) -> nn.Module:
        module = unwrap(module)
        if id(module) in clones:  # a module reachable twice stays one module
            return clones[id(module)]
        if "_hf_hook" in module.__dict__:
            raise BackendError(
                f"{type(module).__name__} is dispatched by accelerate (device_map / offload "
                "hooks); a detached view cannot carry those hooks. Load the model on one device "
                "without device_map, or drive it in place with workbench.backends.shared(...)"
            )
        clone = copy.copy(module)
        clones[id(module)] = clone
        state = clone.__dict__
        for key in _HOOK_DICTS:
            if key in state:
                state[key] = OrderedDict()
        for key in _FOREIGN_ATTRS:
            state.pop(key, None)
        for key, value in list(state.items()):
            if isinstance(value, config_cls):
                state[key] = copy.deepcopy(value, config_memo)
        state["_modules"] = {
            key: None if child is None else visit(child) for key, child in module._modules.items()
        }
        return clone

    return visit(model)


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


# -- backends ------------------------------------------------------------------------------------


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


register_backend(
    "transformer_lens",
    "transformer_lens.model_bridge:TransformerBridge",
    _extract_transformer_bridge,
)
register_backend("nnsight", "nnsight:Envoy", _extract_nnsight)
register_backend("transformers", "transformers:PreTrainedModel", _extract_transformers)


# -- public entry points -------------------------------------------------------------------------


def _adopt_with(backend: Backend, obj: Any, tokenizer: Any, name: str | None) -> LoadedModel:
    parts = backend.extract(obj, tokenizer)
    view = detached_view(parts.model, parts.unwrap)
    return wrap_model(view, parts.tokenizer, name or parts.name)


def adopt(obj: Any, *, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` over the weights of ``obj``; ``obj`` itself is left unchanged.

    ``obj`` is a TransformerLens ``TransformerBridge``, an nnsight ``LanguageModel`` /
    ``TransformersModel`` / ``NNsight`` around a transformers causal LM, or a plain
    transformers causal LM (then ``tokenizer`` is required). The result runs a detached view
    of the model (:func:`detached_view`) with the workbench attention path.

    Args:
        obj: the user's model object.
        tokenizer: tokenizer to use instead of the object's own.
        name: display name (default: the tool's model name, else the config's name_or_path).

    Raises:
        BackendError: unsupported object, no local weights or no tokenizer.
        UnsupportedArchitectureError: the model type is not in the architecture table.
    """
    return _adopt_with(find_backend(obj), obj, tokenizer, name)


def _adopt_as(expected: str, obj: Any, tokenizer: Any, name: str | None) -> LoadedModel:
    backend = find_backend(obj)
    if backend.name != expected:
        raise BackendError(
            f"expected a model object of the {expected!r} backend, got a {type(obj).__name__} "
            f"({backend.name!r} backend); workbench.backends.adopt(obj) takes any supported object"
        )
    return _adopt_with(backend, obj, tokenizer, name)


def from_transformer_bridge(
    bridge: Any, *, tokenizer: Any = None, name: str | None = None
) -> LoadedModel:
    """Adopt a TransformerLens ``TransformerBridge`` (see :func:`adopt`).

    The bridge is untouched: it keeps its hooks, its eager attention and its weights (which the
    workbench model shares). If ``enable_compatibility_mode()`` folded and centred the weights,
    the workbench sees the processed weights too (attention maps are unchanged by that
    processing up to float error; logits are not, as centring the unembedding shifts them).
    """
    return _adopt_as("transformer_lens", bridge, tokenizer, name)


def from_nnsight(model: Any, *, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """Adopt an nnsight model (``LanguageModel``, ``TransformersModel``, ``NNsight``).

    The nnsight model is untouched and keeps tracing with its own attention implementation;
    ``tokenizer`` is required for a bare ``NNsight`` wrapper, which has none.
    """
    return _adopt_as("nnsight", model, tokenizer, name)


@contextmanager
def shared(obj: Any, *, tokenizer: Any = None, name: str | None = None) -> Iterator[LoadedModel]:
    """Drive the user's own model in place with the workbench attention path, then restore it.

    Inside the block the model behind ``obj`` (an nnsight model or a plain transformers model)
    runs ``attn_implementation="workbench"``: with no probe attached that is transformers' SDPA
    forward, so the user's tool keeps working, and workbench probes and interventions act on
    the same forward passes as the tool's own::

        with backends.shared(nn_model) as lm:
            with torch.no_grad(), lm.capture(layers=[3]) as cap, nn_model.trace(prompt):
                nn_model.model.layers[2].mlp.output[:] = 0

    (nnsight traces run with autograd on; the map kernels need ``torch.no_grad()``.) On exit
    the previous attention implementation and train/eval mode are set back. While inside,
    attention weights are not returned by the model (``self_attn.output[1]`` is None, as under
    SDPA).

    Raises:
        BackendError: ``obj`` cannot be driven in place (a TransformerBridge), or as in
            :func:`adopt`.
    """
    backend = find_backend(obj)
    parts = backend.extract(obj, tokenizer)
    if parts.shared_reason is not None:
        raise BackendError(f"cannot share {type(obj).__name__} in place: {parts.shared_reason}")
    model = parts.model
    previous = model.config._attn_implementation
    was_training = model.training
    try:
        yield wrap_model(model, parts.tokenizer, name or parts.name)
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)
