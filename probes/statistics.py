"""Statistics probe: head statistics for every layer and head from the kernels, no L x L maps.

Where :class:`~probes.capture.Capture` keeps full maps (quadratic memory), this probe asks the
kernels for per-head statistics computed blockwise during the forward (received attention and
sink score per key, per-query entropy / argmax / span mass / mean distance, a block-pooled map),
so it runs at the model's full context. During generation each decode step is one record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from probes import checks
from probes.errors import ProbeError
from probes.hooks import AttentionCall, HookSession, hooks_of
from probes.layout import ModelLayout
from probes.records import LayerRecord, ProbeRecords

#: AttentionResult fields a statistics probe can keep, by the StatsRequest flag producing them.
_RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    "received": ("received", "sink"),
    "entropy": ("entropy",),
    "argmax": ("argmax", "argmax_prob"),
    "spans": ("span_mass",),
    "distance": ("distance",),
    "pooled_block": ("pooled",),
}


@dataclass(frozen=True)
class StatisticsSpec:
    """Which statistics to compute (the fields of ``kernels.StatsRequest`` minus maps).

    Args:
        layers: layer indices (None = all). Statistics always cover every head of a layer.
        received: attention received per key (column sums) and sink score per key.
        entropy: per-query entropy (nats).
        argmax: per-query most-attended key and its probability.
        spans: key spans ``(start, end)``; per-query attention mass on each.
        distance: per-query mean attention distance ``sum_j p_ij (i - j)``.
        pooled_block: block size of the block-pooled map (None = no pooled map).
        lse: also keep the per-row log-sum-exp (B, H, Lq).
        device: where kept tensors go (``"cpu"``; None keeps them on the model's device).

    Every field is checked on construction: flags are ``True``/``False``, each span is two
    integers ``0 <= start < end``, ``pooled_block`` is an integer >= 1 (0 is refused, not read
    as "no pooled map"), ``device`` exists here (not ``"meta"``).
    """

    layers: tuple[int, ...] | None = None
    received: bool = True
    entropy: bool = True
    argmax: bool = True
    spans: tuple[tuple[int, int], ...] = ()
    distance: bool = True
    pooled_block: int | None = None
    lse: bool = False
    device: str | torch.device | None = "cpu"

    def __post_init__(self) -> None:
        for name in ("received", "entropy", "argmax", "distance", "lse"):
            checks.boolean(name, getattr(self, name))
        spans = self.spans
        if (
            isinstance(spans, (str, bytes))
            or not hasattr(spans, "__iter__")
            or getattr(spans, "ndim", 1) == 0  # a 0-d array or tensor: iterating it fails
        ):
            raise ProbeError(
                f"spans must be a list of (start, end) pairs, got {checks.describe(spans)}"
            )
        spans = tuple(checks.span(f"spans[{i}]", s, error=ProbeError) for i, s in enumerate(spans))
        object.__setattr__(self, "spans", spans)
        checks.optional(checks.integer, "pooled_block", self.pooled_block, minimum=1)
        object.__setattr__(self, "device", checks.optional(checks.device, "device", self.device))

    def request_fields(self) -> dict[str, object]:
        fields = asdict(self)
        for name in ("layers", "lse", "device"):
            fields.pop(name)
        fields["spans"] = tuple(tuple(s) for s in self.spans)
        return {k: v for k, v in fields.items() if v not in (False, None, ())}


class Statistics(HookSession):
    """Context manager keeping kernel statistics of every head of the chosen layers.

    ``records[layer].stats`` maps names (``received``, ``sink``, ``entropy``, ``argmax``,
    ``argmax_prob``, ``span_mass``, ``distance``, ``pooled``, ``lse``) to tensors with the
    kernels' shapes, e.g. ``received`` (B, H, Lk), ``entropy`` (B, H, Lq). Layers with learned
    sinks (gpt-oss) also get ``sink_mass`` (B, H, Lq): the probability each query gives the
    learned sink.
    """

    role = "probe"

    def __init__(self, layout: ModelLayout, spec: StatisticsSpec) -> None:
        self.layout = layout
        self.layers = layout.check_layers(spec.layers)
        self.spec = spec
        self.fields = spec.request_fields()
        if not self.fields:
            raise ProbeError(
                "no statistics requested: enable at least one of received, entropy, argmax, "
                "spans, distance, pooled_block"
            )
        self.records = ProbeRecords()

    def watched_modules(self) -> dict[int, torch.nn.Module]:
        return {i: self.layout.attention_modules[i] for i in self.layers}

    def layers_fired(self) -> list[int]:
        return self.records.layers_fired

    def check_prompt(self, n_tokens: int) -> None:
        """Raise :class:`ProbeError` if a span reaches past a prompt of ``n_tokens`` tokens
        (checked before the forward by ``run_statistics``)."""
        for i, (start, end) in enumerate(self.spec.spans):
            if end > n_tokens:
                raise ProbeError(
                    f"spans[{i}] = ({start}, {end}) reaches past the prompt's {n_tokens} "
                    f"tokens; give 0 <= start < end <= {n_tokens}"
                )

    def reset(self) -> None:
        """Forget the last run; refuse to run next to another statistics probe on the same
        layers with another ``pooled_block`` (the kernels compute one pooled map per call)."""
        block = self.spec.pooled_block
        for layer in self.layers:
            for hook in hooks_of(self.layout.attention_modules[layer]):
                other = getattr(getattr(hook, "spec", None), "pooled_block", None)
                if isinstance(hook, Statistics) and None not in (block, other) and other != block:
                    raise ProbeError(
                        f"pooled_block={block} differs from the pooled_block={other} of another "
                        f"statistics probe active on layer {layer}; one forward computes one "
                        "pooled map per layer: use the same block size"
                    )
        self.records = ProbeRecords()

    def not_fired_message(self, missing: list[int]) -> str:
        return (
            f"layer(s) {missing} never called the workbench attention function during "
            "the statistics probe; run a forward inside the `with` block"
        )

    def prepare(self, call: AttentionCall) -> None:
        for i, (start, end) in enumerate(self.spec.spans):
            if end > call.n_keys:
                raise ProbeError(
                    f"spans[{i}] = ({start}, {end}) reaches past the {call.n_keys} keys of "
                    f"layer {call.layer}'s call; give 0 <= start < end <= {call.n_keys}"
                )
        call.request_stats(**self.fields)

    def finish(self, call: AttentionCall, output: Tensor) -> None:
        result = call.result
        assert result is not None
        dev = self.spec.device
        stats: dict[str, Tensor] = {}
        for flag, names in _RESULT_FIELDS.items():
            if flag not in self.fields:
                continue
            for name in names:
                value = getattr(result, name)
                if name == "span_mass":  # keep only this probe's spans, in its order
                    merged = list(call.stats_fields["spans"])
                    value = value[..., [merged.index(tuple(s)) for s in self.fields["spans"]]]
                stats[name] = value.detach().to(dev) if dev is not None else value.detach()
        extras = {"lse": result.lse if self.spec.lse else None, "sink_mass": result.sink_mass}
        for name, value in extras.items():
            if value is not None:
                stats[name] = value.detach().to(dev) if dev is not None else value.detach()
        self.records.add(
            LayerRecord(
                layer=call.layer,
                step=self.records.steps(call.layer),
                heads=tuple(range(call.n_heads)),
                query_offset=call.query_offset,
                n_queries=call.n_queries,
                n_keys=call.n_keys,
                window=(0, call.n_queries),
                stats=stats,
            )
        )
        return None
