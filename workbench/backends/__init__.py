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

Modules: :mod:`.registry` (the class -> extractor table), :mod:`.view` (detached views),
:mod:`.tools` (the built-in TransformerLens, nnsight and transformers backends); this module
holds the public entry points.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workbench.backends.registry import (
    Backend,
    BackendError,
    BackendParts,
    find_backend,
    register_backend,
    registered_backends,
)
from workbench.backends.tools import BUILTIN_BACKENDS
from workbench.backends.view import detached_view
from workbench.lm import LoadedModel, wrap_model

__all__ = [
    "BUILTIN_BACKENDS",
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
