"""Base of every intervention: a context manager hook on chosen heads of chosen layers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import Tensor

from probes import AttentionCall, HookSession
from workbench.errors import WorkbenchError
from workbench.heads import Head, parse_head
from workbench.lm import LoadedModel

HeadLike = Head | tuple[int, int] | str


class InterventionError(WorkbenchError):
    """An intervention was given bad parameters (heads, spans, alpha, means...)."""


def normalize_heads(layout, heads: Iterable[HeadLike]) -> dict[int, tuple[int, ...]]:
    """Validate heads (``"L5H3"``, ``(5, 3)`` or :class:`Head`) and group them by layer."""
    if isinstance(heads, (str, Head)) or (
        isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads)
    ):
        heads = [heads]
    by_layer: dict[int, set[int]] = defaultdict(set)
    for item in heads:
        head = parse_head(item) if isinstance(item, str) else Head(*item)
        layout.check_layers([head.layer])
        layout.check_heads([head.head])
        by_layer[head.layer].add(head.head)
    if not by_layer:
        raise InterventionError("the head set is empty; name at least one head, e.g. L5H3")
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(by_layer.items())}


class Intervention(HookSession):
    """A change to attention on a set of heads, applied through the registered attention path.

    Use as a context manager around any forward or ``generate`` call; interventions compose
    with each other and with probes, run before probes (so probes see their effect), remove
    themselves on exit (also on error), and raise :class:`LayerDidNotFireError` if a layer they
    should act on never ran. Subclasses implement :meth:`edit` (before attention) and/or
    :meth:`edit_output` (per-head output ``(B, Lq, H, D)``).
    """

    role = "intervention"
    name: ClassVar[str] = ""
    reentry_error = InterventionError

    def __init__(self, lm: LoadedModel, heads: Iterable[HeadLike]) -> None:
        self.lm = lm
        self.layout = lm.layout
        self.heads = normalize_heads(self.layout, heads)
        self.fired: set[int] = set()

    @property
    def head_list(self) -> list[Head]:
        return [Head(layer, h) for layer, hs in self.heads.items() for h in hs]

    def __repr__(self) -> str:
        heads = ",".join(h.id for h in self.head_list)
        return f"{type(self).__name__}({heads})"

    # -- life cycle (HookSession) ---------------------------------------------------------
    def watched_modules(self) -> dict[int, torch.nn.Module]:
        return {layer: self.layout.attention_modules[layer] for layer in self.heads}

    def reset(self) -> None:
        """Forget per-run state (called on entry)."""

    def not_fired_message(self, missing: list[int]) -> str:
        return (
            f"{self!r}: layer(s) {missing} never ran through the workbench attention "
            "path while the intervention was active, so it changed nothing there"
        )

    # -- hook plumbing ---------------------------------------------------------------------
    def prepare(self, call: AttentionCall) -> None:
        self.fired.add(call.layer)
        self.edit(call, self.heads[call.layer])

    def finish(self, call: AttentionCall, output: Tensor) -> Tensor | None:
        return self.edit_output(call, self.heads[call.layer], output)

    def edit(self, call: AttentionCall, heads: tuple[int, ...]) -> None:
        """Change ``call`` before attention runs (q/k/v, score bias, head scale, requests)."""

    def edit_output(self, call: AttentionCall, heads: tuple[int, ...], output: Tensor):
        """Return a replacement for the per-head output (B, Lq, H, D), or None."""
        return None


def head_vector(n_heads: int, heads: tuple[int, ...], value: float, device, dtype) -> Tensor:
    """(H,) vector of ones with ``value`` at ``heads``."""
    vec = torch.ones(n_heads, device=device, dtype=dtype)
    vec[list(heads)] = value
    return vec


def scale_queries(call: AttentionCall, heads: tuple[int, ...], factor: float | Tensor) -> None:
    """Multiply the queries of ``heads`` by ``factor`` (other heads of a KV group untouched)."""
    query = call.query.clone()
    query[:, list(heads)] *= factor
    call.query = query
