"""The backend registry: which class of foreign model object is adopted how.

A backend is a class (``"package.module:ClassName"``) and an ``extract(obj, tokenizer)`` that
returns the transformers model and tokenizer inside such an object (:class:`BackendParts`).
Objects are matched by walking their class's MRO, so subclasses of a registered class work too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from workbench.errors import WorkbenchError

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
