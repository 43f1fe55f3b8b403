"""Base of every intervention: a context manager hook on chosen heads of chosen layers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from probes import AttentionCall, HookSession
from probes.checks import ArgumentError, describe, integer
from probes.errors import HeadOutOfRangeError, LayerOutOfRangeError
from workbench.errors import WorkbenchError
from workbench.heads import Head, parse_heads
from workbench.lm import LoadedModel

HeadLike = Head | tuple[int, int] | str


class InterventionError(WorkbenchError):
    """An intervention was given bad parameters (heads, spans, alpha, means...)."""


class InterventionArgumentError(InterventionError, ArgumentError):
    """An intervention argument has the wrong type, range, shape or value."""


HEADS_ALLOWED = "head ids such as 'L5H3' (or 'L5H*') or (layer, head) pairs of integers"


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list, Head))
        and len(item) == 2
        and not any(isinstance(x, (str, bytes, tuple, list)) for x in item)
    )


def _pair(layout, item: Any, where: str) -> tuple[int, int]:
    """One ``(layer, head)`` pair of integers, checked against ``layout`` when given."""
    try:
        layer = integer(f"the layer of {where} {item!r}", item[0])
        head = integer(f"the head of {where} {item!r}", item[1])
    except ArgumentError as exc:
        raise InterventionArgumentError(f"{exc}; give {HEADS_ALLOWED}") from None
    if layer < 0 or head < 0:
        raise InterventionArgumentError(
            f"{where} {item!r} has a negative index; give {HEADS_ALLOWED}"
        )
    if layout is not None and layer >= layout.n_layers:
        raise LayerOutOfRangeError(
            f"{where}: layer {layer} of L{layer}H{head} is out of range; this model has layers "
            f"0..{layout.n_layers - 1}"
        )
    if layout is not None and head >= layout.n_heads:
        raise HeadOutOfRangeError(
            f"{where}: head {head} of L{layer}H{head} is out of range; this model has query "
            f"heads 0..{layout.n_heads - 1} per layer"
        )
    return layer, head


def head_pairs(layout, heads: Any, *, name: str = "heads") -> list[tuple[int, int]]:
    """Checked ``(layer, head)`` pairs, in the order given, repeats dropped.

    ``heads``: one head or an iterable of heads; a head is an id (``"L5H3"``; ``"L5H*"`` is
    every head of layer 5 when ``layout`` is given; ``"L5H3,L7H1"`` several), a
    :class:`~workbench.heads.Head` or a ``(layer, head)`` pair of integers (NumPy integers
    too). Floats (``(5.5, 3)``), booleans, numeric strings and bare integers are refused, and
    with ``layout`` so are layers and heads outside the model. ``layout=None`` checks types only.
    """
    if (
        heads is None
        or isinstance(heads, (bytes, dict))
        or not (isinstance(heads, (str, Iterable)))
        or getattr(heads, "ndim", 1) == 0  # a 0-d array or tensor: iterating it fails
    ):
        raise InterventionArgumentError(
            f"{name} must be {HEADS_ALLOWED}, or a list of them; got {describe(heads)}"
        )
    if isinstance(heads, str) or (isinstance(heads, tuple) and _is_pair(heads)):
        heads = [heads]  # one head
    out: list[tuple[int, int]] = []
    n_heads = None if layout is None else layout.n_heads
    for i, item in enumerate(heads):
        where = f"{name}[{i}]"
        if isinstance(item, str):
            try:
                pairs = [tuple(h) for h in parse_heads(item, n_heads)]
            except WorkbenchError as exc:
                raise InterventionArgumentError(f"{where}: {exc}") from None
        elif _is_pair(item):
            pairs = [item]
        else:
            raise InterventionArgumentError(
                f"{where} must be a head: {HEADS_ALLOWED}; got {describe(item)}"
            )
        for pair in pairs:
            checked = _pair(layout, pair, where)
            if checked not in out:
                out.append(checked)
    if not out:
        raise InterventionArgumentError(
            f"{name} is an empty head set; name at least one head, e.g. L5H3"
        )
    return out


def normalize_heads(layout, heads: Any) -> dict[int, tuple[int, ...]]:
    """Validate heads (see :func:`head_pairs`) and group them by layer."""
    by_layer: dict[int, set[int]] = {}
    for layer, head in head_pairs(layout, heads):
        by_layer.setdefault(layer, set()).add(head)
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(by_layer.items())}


def _checked_init(init: Callable[..., None]) -> Callable[..., None]:
    """``__init__`` whose argument errors become :class:`InterventionArgumentError` naming the
    intervention."""

    @functools.wraps(init)
    def checked(self: Intervention, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ArgumentError as exc:
            if isinstance(exc, InterventionError):
                raise
            raise InterventionArgumentError(f"{type(self).__name__}: {exc}") from None

    checked.__checked__ = True  # type: ignore[attr-defined]
    return checked


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Argument errors of a subclass's ``__init__`` name the intervention."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "__checked__", False):
            cls.__init__ = _checked_init(init)  # type: ignore[method-assign]

    def __init__(self, lm: LoadedModel, heads: Iterable[HeadLike]) -> None:
        """Check ``lm`` and the heads (types and ranges against the model) before anything is
        attached: a bad head never reaches a forward."""
        if not isinstance(lm, LoadedModel):
            raise InterventionArgumentError(
                f"lm must be a LoadedModel (workbench.load_model()), got {describe(lm)}"
            )
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
