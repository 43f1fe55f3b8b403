"""The hook mechanism of the registered attention path.

Every attention layer of a workbench-driven model calls
:func:`probes.attention_path.workbench_attention`. That function looks up the hooks attached to
the calling attention module and builds one :class:`AttentionCall` describing the call. Hooks
see it twice:

* ``prepare(call)`` before attention runs: interventions change ``query``/``key``/``value``, add
  a per-head ``score_bias`` or ``head_scale``; probes ask for statistics or maps.
* ``finish(call, output)`` after attention ran, with the per-head output ``z`` of shape
  ``(B, Lq, H, D)``: interventions may return a replacement, probes record.

Interventions run before probes in both phases, so a probe records what actually flowed.
Hooks are attached with :func:`attached`, a context manager that removes them on exit, also when
the body raises (the TransformerLens ``hooks()`` pattern).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from probes.errors import LayerDidNotFireError, ProbeError
from probes.semantics import AttentionSemantics

if TYPE_CHECKING:
    from kernels import AttentionResult

HOOKS_ATTR = "_workbench_attention_hooks"


@dataclass
class AttentionCall:
    """One call of one attention layer, as the hooks see it.

    Shapes: ``query`` (B, H, Lq, D) post-RoPE; ``key``/``value`` (B, Hkv, Lk, D), including the
    KV cache during generation (then ``Lq < Lk`` and query row i sits at absolute position
    ``Lk - Lq + i``). ``mask`` is None (plain causal) or a bool tensor broadcastable to
    (B, 1, Lq, Lk), True where a query may attend. ``semantics``: the architecture's softcap,
    sliding window and learned sinks (:mod:`probes.semantics`); its window is set only when
    ``mask`` is None (a mask built by transformers already holds the window).
    """

    layer: int
    module: nn.Module
    query: Tensor
    key: Tensor
    value: Tensor
    mask: Tensor | None
    causal: bool
    scaling: float
    semantics: AttentionSemantics = field(default_factory=AttentionSemantics)
    backend: str = "auto"  # the kernels backend of this call (probes.kernel_backend)
    score_bias: Tensor | None = None  # (B or 1, H, Lk), added to scaled scores
    head_scale: Tensor | None = None  # (H,), multiplies each head's output
    map_heads: set[int] = field(default_factory=set)
    map_window: tuple[int, int] | None = None
    stats_fields: dict[str, object] = field(default_factory=dict)
    result: AttentionResult | None = None

    @property
    def n_heads(self) -> int:
        return self.query.shape[1]

    @property
    def n_queries(self) -> int:
        return self.query.shape[2]

    @property
    def n_keys(self) -> int:
        return self.key.shape[2]

    @property
    def query_offset(self) -> int:
        """Absolute position of the first query row (non-zero during cached decoding)."""
        return self.n_keys - self.n_queries

    def add_score_bias(self, bias: Tensor) -> None:
        """Add an additive score bias of shape (B or 1, H, Lk); several hooks accumulate."""
        bias = bias.to(device=self.query.device, dtype=torch.float32)
        self.score_bias = bias if self.score_bias is None else self.score_bias + bias

    def scale_heads(self, scale: Tensor) -> None:
        """Multiply each head's output by ``scale`` (H,); several hooks multiply together."""
        scale = scale.to(device=self.query.device, dtype=self.query.dtype)
        self.head_scale = scale if self.head_scale is None else self.head_scale * scale

    def request_maps(self, heads: Sequence[int], window: tuple[int, int] | None) -> None:
        """Ask for full maps of ``heads`` over query rows ``window`` (None = all rows).

        Requests of several probes are merged into one kernel request (union of heads, hull of
        windows); each probe slices its own part out of :attr:`result`.
        """
        self.map_heads.update(int(h) for h in heads)
        lo, hi = window if window is not None else (0, self.n_queries)
        lo, hi = max(0, lo), min(self.n_queries, hi)
        if self.map_window is None:
            self.map_window = (lo, hi)
        else:
            self.map_window = (min(self.map_window[0], lo), max(self.map_window[1], hi))

    def request_stats(self, **fields: object) -> None:
        """Ask for kernel statistics (``StatsRequest`` fields: received=True, spans=...)."""
        for name, value in fields.items():
            if name == "spans":
                merged = tuple(dict.fromkeys([*self.stats_fields.get("spans", ()), *value]))
                self.stats_fields["spans"] = merged
            elif name == "pooled_block":
                old = self.stats_fields.get("pooled_block")
                if old is not None and old != value:
                    raise ProbeError(
                        f"two probes ask for different pooled block sizes ({old} and {value})"
                    )
                self.stats_fields[name] = value
            elif value:
                self.stats_fields[name] = value

    @property
    def needs_kernel(self) -> bool:
        """True when plain SDPA cannot serve this call: maps, statistics or steering asked, or
        semantics SDPA lacks (softcap, learned sinks, a window not in the mask)."""
        return bool(
            self.map_heads
            or self.stats_fields
            or self.score_bias is not None
            or self.head_scale is not None
            or not self.semantics.sdpa_exact
            or self.semantics.window is not None
        )

    def run_kernels(self, *, stats=None, extra_bias: Tensor | None = None) -> AttentionResult:
        """:func:`kernels.attention` on this call as it stands (q, k, v, mask, scaling, score
        bias, head scale, semantics, backend), asking for ``stats``; ``extra_bias``
        (B or 1, H, Lk) is added to the score bias for this run only (e.g. -inf to take keys
        out of the softmax)."""
        import kernels

        bias = self.score_bias
        if extra_bias is not None:
            bias = extra_bias if bias is None else bias + extra_bias
        return kernels.attention(
            self.query,
            self.key,
            self.value,
            scale=self.scaling,
            causal=self.causal,
            mask=self.mask,
            score_bias=bias,
            head_scale=self.head_scale,
            stats=stats,
            backend=self.backend,
            **self.semantics.kernel_arguments(),
        )

    def stats_request(self):
        """The merged ``kernels.StatsRequest`` for this call, or None."""
        if not self.map_heads and not self.stats_fields:
            return None
        from kernels import MapRequest, StatsRequest

        maps = None
        if self.map_heads:
            maps = MapRequest(heads=tuple(sorted(self.map_heads)), query_window=self.map_window)
        return replace(StatsRequest(**self.stats_fields), maps=maps)


class AttentionHook:
    """Base class of everything that reads or changes attention through the registered path.

    Subclasses override :meth:`prepare` and/or :meth:`finish`. ``role`` orders hooks:
    interventions (``"intervention"``) run before probes (``"probe"``).
    """

    role: ClassVar[str] = "probe"

    def prepare(self, call: AttentionCall) -> None:
        """Change the call or ask for what this hook needs; called before attention runs."""

    def finish(self, call: AttentionCall, output: Tensor) -> Tensor | None:
        """Read or replace the per-head output ``output`` (B, Lq, H, D); None keeps it."""
        return None


def hooks_of(module: nn.Module) -> list[AttentionHook]:
    """The hooks attached to one attention module, interventions first."""
    return getattr(module, HOOKS_ATTR, [])


@contextmanager
def attached(hook: AttentionHook, modules: Sequence[nn.Module]) -> Iterator[AttentionHook]:
    """Attach ``hook`` to each module in ``modules`` and remove it on exit, also on error."""
    done: list[nn.Module] = []
    try:
        for module in modules:
            hooks = list(getattr(module, HOOKS_ATTR, []))
            hooks.append(hook)
            hooks.sort(key=lambda h: 0 if h.role == "intervention" else 1)  # stable sort
            setattr(module, HOOKS_ATTR, hooks)
            done.append(module)
        yield hook
    finally:
        for module in done:
            remaining = [h for h in getattr(module, HOOKS_ATTR, []) if h is not hook]
            if remaining:
                setattr(module, HOOKS_ATTR, remaining)
            elif hasattr(module, HOOKS_ATTR):
                delattr(module, HOOKS_ATTR)


class HookSession(AttentionHook):
    """The one life cycle of probes and interventions: an :class:`AttentionHook` that is its own
    context manager.

    Entering forgets the last run (:meth:`reset`) and attaches the hook to the attention module
    of every layer in :meth:`watched_modules`; leaving removes it again, also when the body
    raises. When the body finished normally, every watched layer must have called the
    registered attention path (:meth:`layers_fired`), else :class:`LayerDidNotFireError` names
    the silent layers (TransformerLens #1652 turned into an error). Entering a session that is
    already active raises :attr:`reentry_error` instead of stacking it twice.

    Subclasses implement :meth:`watched_modules`, note each layer that runs in :attr:`fired`
    (or override :meth:`layers_fired`), and may override :meth:`reset` and
    :meth:`not_fired_message`.
    """

    reentry_error: ClassVar[type[ValueError]] = ProbeError
    _stack: ExitStack | None = None
    fired: set[int]

    def watched_modules(self) -> Mapping[int, nn.Module]:
        """Layer index -> attention module this session attaches to."""
        raise NotImplementedError

    def layers_fired(self) -> Iterable[int]:
        """Layers that called the attention path since the session was entered."""
        return self.fired

    def reset(self) -> None:
        """Forget per-run state (called on entry, before attaching)."""

    def not_fired_message(self, missing: list[int]) -> str:
        """The error message for watched layers that never fired."""
        return (
            f"{self!r}: layer(s) {missing} never called the workbench attention function while "
            "it was active; run a forward inside the `with` block, and load the model with "
            "workbench.load_model (or set attn_implementation='workbench')"
        )

    @property
    def active(self) -> bool:
        """True between ``__enter__`` and ``__exit__``."""
        return self._stack is not None

    def __enter__(self):
        if self._stack is not None:
            raise self.reentry_error(f"{self!r} is already active; it cannot be nested in itself")
        modules = self.watched_modules()
        self.fired = set()
        self.reset()
        stack = ExitStack()
        stack.enter_context(attached(self, list(modules.values())))
        self._stack = stack
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        if exc_type is None:
            missing = sorted(set(self.watched_modules()) - set(self.layers_fired()))
            if missing:
                raise LayerDidNotFireError(self.not_fired_message(missing))
