"""What probes keep: one :class:`LayerRecord` per layer per forward call."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from torch import Tensor

from probes.checks import integer
from probes.errors import RecordNotFoundError


@dataclass
class LayerRecord:
    """What one probe kept from one attention call of one layer.

    ``heads`` are the captured query heads; tensors index them in that order on dim 1.
    Shapes (``h = len(heads)``, ``W = window[1] - window[0]``):

    * ``maps``: (B, h, W, Lk) attention probabilities of query rows ``window``.
    * ``q``: (B, h, Lq, D) post-RoPE queries; ``k``, ``v``: (B, h, Lk, D), the KV head each
      captured query head reads (GQA resolved), including the KV cache.
    * ``z``: (B, h, Lq, D) each head's output before the output projection.
    * ``stats``: kernel statistics by name (``received``, ``sink``, ``entropy``, ...), with the
      head dimension restricted to ``heads``.
    """

    layer: int
    step: int
    heads: tuple[int, ...]
    query_offset: int
    n_queries: int
    n_keys: int
    window: tuple[int, int]
    maps: Tensor | None = None
    q: Tensor | None = None
    k: Tensor | None = None
    v: Tensor | None = None
    z: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)

    def head_index(self, head: int) -> int:
        """Position of query head ``head`` in this record's tensors."""
        head = integer("head", head, error=RecordNotFoundError)
        try:
            return self.heads.index(head)
        except ValueError:
            raise RecordNotFoundError(
                f"head {head} was not captured (captured heads: {self.heads})"
            ) from None

    def map(self, head: int, batch: int = 0) -> Tensor:
        """The (W, Lk) attention map of one head."""
        if self.maps is None:
            raise RecordNotFoundError("this probe did not capture maps (maps=False)")
        rows = self.maps.shape[0]
        batch = integer("batch", batch, minimum=0, maximum=rows - 1, error=RecordNotFoundError)
        return self.maps[batch, self.head_index(head)]


@dataclass
class ProbeRecords:
    """All records of one probe, by layer, in call order (one per forward / decode step)."""

    by_layer: dict[int, list[LayerRecord]] = field(default_factory=lambda: defaultdict(list))

    def add(self, record: LayerRecord) -> None:
        self.by_layer[record.layer].append(record)

    @property
    def layers_fired(self) -> tuple[int, ...]:
        """Layers that called the workbench attention path at least once, sorted."""
        return tuple(sorted(layer for layer, recs in self.by_layer.items() if recs))

    def steps(self, layer: int) -> int:
        """How many calls of ``layer`` were recorded (1 for a forward, more in generation)."""
        return len(self.by_layer.get(layer, []))

    def __getitem__(self, key: int | tuple[int, int]) -> LayerRecord:
        """``records[layer]`` (first call) or ``records[layer, step]``."""
        layer, step = key if isinstance(key, tuple) and len(key) == 2 else (key, 0)
        layer = integer("layer", layer, error=RecordNotFoundError)
        step = integer("step", step, error=RecordNotFoundError)
        recs = self.by_layer.get(layer)
        if not recs:
            raise RecordNotFoundError(
                f"no record for layer {layer}; layers recorded: {self.layers_fired}"
            )
        if not -len(recs) <= step < len(recs):
            raise RecordNotFoundError(
                f"layer {layer} has {len(recs)} recorded steps, not step {step}"
            )
        return recs[step]

    def map(self, layer: int, head: int, step: int = 0, batch: int = 0) -> Tensor:
        """Attention map (W, Lk) of ``(layer, head)`` at ``step``."""
        return self[layer, step].map(head, batch)
