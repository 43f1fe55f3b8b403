"""The detached view: a second module tree over the very same weight tensors.

The workbench needs a transformers model whose attention layers call the registered attention
function. A TransformerLens bridge has replaced those layers by its own components and nnsight
has installed its own ``forward`` on every module, so :func:`detached_view` rebuilds the
original module tree with its own module objects, config and hooks, sharing every parameter and
buffer with the user's model.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from torch import nn

from workbench.backends.registry import BackendError, Unwrap, _identity

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
