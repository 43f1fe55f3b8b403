"""Capture probe: full attention maps, q/k/v and per-head outputs of chosen layers and heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from probes import checks
from probes.attention_path import uses_workbench_attention
from probes.errors import CaptureTooLargeError, ProbeError
from probes.hooks import AttentionCall, HookSession
from probes.layout import ModelLayout
from probes.memory import default_budget, human_bytes
from probes.records import LayerRecord, ProbeRecords


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture.

    Args:
        layers: layer indices (None = all).
        heads: query-head indices (None = all).
        maps: keep full attention maps (probabilities).
        query_window: keep only query rows ``[start, end)`` of each map (None = all rows).
        qkv: keep post-RoPE q and the k, v each captured head reads.
        z: keep each head's output before the output projection.
        device: where kept tensors go (``"cpu"`` by default; ``None`` keeps them on the
            model's device).
        max_bytes: memory budget for kept tensors; default half of the free memory of
            ``device`` when the probe is entered.

    Every field is checked on construction (:mod:`probes.checks`): booleans are ``True`` or
    ``False``, ``query_window`` is two integers ``0 <= start < end``, ``device`` exists here
    (not ``"meta"``), ``max_bytes`` is an integer >= 1. Layers and heads are checked against
    the model by :class:`Capture`.
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    maps: bool = True
    query_window: tuple[int, int] | None = None
    qkv: bool = False
    z: bool = False
    device: str | torch.device | None = "cpu"
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("maps", "qkv", "z"):
            checks.boolean(name, getattr(self, name))
        window = checks.optional(checks.span, "query_window", self.query_window, error=ProbeError)
        object.__setattr__(self, "query_window", window)
        object.__setattr__(self, "device", checks.optional(checks.device, "device", self.device))
        checks.optional(checks.integer, "max_bytes", self.max_bytes, minimum=1)


def _window_length(window: tuple[int, int] | None, n_queries: int) -> int:
    if window is None:
        return n_queries
    lo, hi = max(0, window[0]), min(n_queries, window[1])
    return max(0, hi - lo)


class Capture(HookSession):
    """Context manager that captures what :class:`CaptureSpec` asks for.

    Use through ``workbench`` (``lm.capture(...)``) or directly::

        with Capture(layout, CaptureSpec(layers=[3], heads=[0, 5])) as cap:
            model(**inputs)
        cap.records.map(3, 5)           # (Lq, Lk) tensor

    On exit (when the body did not raise) every requested layer must have fired, else
    :class:`LayerDidNotFireError`. Exceeding the memory budget raises
    :class:`CaptureTooLargeError` from inside the forward, before the tensors are kept.
    """

    role = "probe"

    def __init__(self, layout: ModelLayout, spec: CaptureSpec) -> None:
        self.layout = layout
        self.layers = layout.check_layers(spec.layers)
        self.heads = layout.check_heads(spec.heads)
        if not (spec.maps or spec.qkv or spec.z):
            raise ProbeError("nothing to capture: set at least one of maps, qkv, z")
        self.spec = spec
        self.records = ProbeRecords()
        self._kept_bytes = 0
        self._budget = 0

    # -- sizes -----------------------------------------------------------------------------
    def bytes_per_call(self, n_queries: int, n_keys: int, batch: int = 1) -> int:
        """Bytes kept for one call of one layer (float32)."""
        h, d = len(self.heads), self.layout.head_dim
        n = 0
        if self.spec.maps:
            n += batch * h * _window_length(self.spec.query_window, n_queries) * n_keys
        if self.spec.qkv:
            n += batch * h * (n_queries + 2 * n_keys) * d
        if self.spec.z:
            n += batch * h * n_queries * d
        return 4 * n

    def estimate_bytes(self, n_tokens: int, batch: int = 1) -> int:
        """Bytes kept by one forward over ``n_tokens`` tokens (all requested layers)."""
        return len(self.layers) * self.bytes_per_call(n_tokens, n_tokens, batch)

    def too_large_message(self, needed: int, budget: int, n_tokens: int) -> str:
        return (
            f"capturing {'full maps' if self.spec.maps else 'tensors'} for {len(self.layers)} "
            f"layer(s) x {len(self.heads)} head(s) at {n_tokens} tokens needs "
            f"{human_bytes(needed)}, more than the memory budget of {human_bytes(budget)}; "
            "ask for head statistics instead (probes.Statistics / lm.statistics: received "
            "attention, entropy, argmax, span mass, pooled maps without any L x L buffer), "
            "capture fewer layers/heads, or keep a window of query rows (query_window=(start, "
            "end))"
        )

    def check_fits(self, n_tokens: int, batch: int = 1) -> None:
        """Raise :class:`CaptureTooLargeError` if a forward of ``n_tokens`` would not fit."""
        budget = self.spec.max_bytes or default_budget(self._device_for_budget())
        needed = self.estimate_bytes(n_tokens, batch)
        if needed > budget:
            raise CaptureTooLargeError(self.too_large_message(needed, budget, n_tokens))

    def check_prompt(self, n_tokens: int) -> None:
        """Raise :class:`ProbeError` if the query window reaches past a prompt of ``n_tokens``
        tokens (checked before the forward by ``run_capture``)."""
        window = self.spec.query_window
        if window is not None and window[1] > n_tokens:
            raise ProbeError(
                f"query_window {window} reaches past the prompt's {n_tokens} tokens; give "
                f"(start, end) with 0 <= start < end <= {n_tokens}"
            )

    def _device_for_budget(self) -> torch.device:
        if self.spec.device is not None:
            return torch.device(self.spec.device)
        return next(self.layout.attention_modules[0].parameters()).device

    # -- life cycle (HookSession) ---------------------------------------------------------
    def watched_modules(self) -> dict[int, torch.nn.Module]:
        return {i: self.layout.attention_modules[i] for i in self.layers}

    def layers_fired(self) -> list[int]:
        return self.records.layers_fired

    def reset(self) -> None:
        self._budget = self.spec.max_bytes or default_budget(self._device_for_budget())
        self._kept_bytes = 0
        self.records = ProbeRecords()

    def not_fired_message(self, missing: list[int]) -> str:
        return (
            f"layer(s) {missing} never called the workbench attention function during "
            "the capture; run a forward inside the `with` block, and load the model "
            "with workbench.load_model (or set attn_implementation='workbench')"
        )

    # -- hook ------------------------------------------------------------------------------
    def prepare(self, call: AttentionCall) -> None:
        """Check the call before attention runs, then ask for maps.

        The memory check projects this layer and every later captured layer of the same
        forward: at the first captured layer a forward that would not fit is refused before
        anything is kept (the ``with lm.capture():`` form refuses as early as
        :meth:`check_fits`, not after holding the maps of the layers that did fit).
        """
        self._check_window(call)
        batch = call.query.shape[0]
        needed = self.bytes_per_call(call.n_queries, call.n_keys, batch)
        remaining = len(self.layers) - self.layers.index(call.layer)
        projected = self._kept_bytes + needed * remaining
        if projected > self._budget:
            raise CaptureTooLargeError(self.too_large_message(projected, self._budget, call.n_keys))
        self._kept_bytes += needed
        if self.spec.maps:
            call.request_maps(self.heads, self.spec.query_window)

    def _check_window(self, call: AttentionCall) -> None:
        window = self.spec.query_window
        if window is None:
            return
        prefill = call.query_offset == 0
        if window[0] >= call.n_queries or (prefill and window[1] > call.n_queries):
            what = "the prompt's" if prefill else "this decode step's"
            raise ProbeError(
                f"query_window {window} reaches past {what} {call.n_queries} query row(s) "
                f"(layer {call.layer}); give 0 <= start < end <= {call.n_queries}"
                + ("" if prefill else ", or query_window=None when generating")
            )

    def finish(self, call: AttentionCall, output: Tensor) -> None:
        dev = self.spec.device
        heads = torch.tensor(self.heads, device=call.query.device)

        def keep(t: Tensor) -> Tensor:
            t = t.detach().float()
            return t.to(dev) if dev is not None else t.clone()

        lo, hi = (0, call.n_queries) if self.spec.query_window is None else self.spec.query_window
        lo, hi = max(0, lo), min(call.n_queries, hi)
        record = LayerRecord(
            layer=call.layer,
            step=self.records.steps(call.layer),
            heads=self.heads,
            query_offset=call.query_offset,
            n_queries=call.n_queries,
            n_keys=call.n_keys,
            window=(lo, hi),
        )
        if self.spec.maps:
            assert call.result is not None and call.result.maps is not None
            got = sorted(call.map_heads)
            idx = torch.tensor([got.index(h) for h in self.heads], device=heads.device)
            wlo = call.map_window[0] if call.map_window else 0
            maps = call.result.maps.index_select(1, idx)[:, :, lo - wlo : hi - wlo]
            record.maps = keep(maps)
        if self.spec.qkv:
            kv_idx = heads // self.layout.group_size
            record.q = keep(call.query.index_select(1, heads))
            record.k = keep(call.key.index_select(1, kv_idx))
            record.v = keep(call.value.index_select(1, kv_idx))
        if self.spec.z:
            record.z = keep(output.index_select(2, heads).transpose(1, 2))
        self.records.add(record)
        return None


def require_workbench_attention(model: torch.nn.Module) -> None:
    """Raise a clear error when ``model`` does not run the workbench attention path."""
    if not uses_workbench_attention(model):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise ProbeError(
            f"the model runs attention implementation {impl!r}, so probes would never fire; "
            "load it with workbench.load_model or call "
            "model.set_attn_implementation(probes.register())"
        )
