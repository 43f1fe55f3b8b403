"""Mean output gate per head of gated-attention models, recorded during ordinary forwards.

Gated attention (Qiu et al. 2025, "Gated Attention for Large Language Models",
arXiv:2505.06708) multiplies each head's output elementwise by ``sigmoid(g)``, ``g`` a linear
map of the block's input, before the output projection. A head whose gate stays near 0 is
switched off for that token: the gate is a learned, input-dependent way to attend to nothing,
which these models use in place of an attention sink (the paper's finding). The gate module
comes from the architecture table (:func:`workbench.model_parts.output_gates`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from probes.padding import padded_lengths
from workbench.model_parts import output_gates


class GateMeans:
    """Per prompt of every forward run while recording, the mean of ``sigmoid(g)`` of each head
    over the prompt's positions (right padding left out) and the head's dimensions."""

    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads
        self._layers: list[list[Tensor]] = [[] for _ in range(n_layers)]

    def add(self, layer: int, gate: Tensor) -> None:
        """Record the gate logits ``gate`` (B, L, H * head_dim) of one forward at ``layer``."""
        batch, length, _ = gate.shape
        per_head = torch.sigmoid(gate.detach().double()).view(batch, length, self.n_heads, -1)
        per_head = per_head.mean(-1)  # (B, L, H)
        lengths = padded_lengths() or (length,) * batch
        rows = [per_head[b, : lengths[b]].mean(0) for b in range(batch)]  # each (H,)
        self._layers[layer].extend(rows)

    def result(self) -> Tensor:
        """(prompts, layers, heads) float64: the mean gate of every recorded prompt."""
        counts = {len(rows) for rows in self._layers}
        if counts != {len(self._layers[0])}:
            raise RuntimeError(f"gate records differ between layers: {sorted(counts)}")
        if not self._layers[0]:
            return torch.zeros(0, self.n_layers, self.n_heads, dtype=torch.float64)
        return torch.stack([torch.stack(rows) for rows in self._layers], dim=1)


@contextmanager
def recording_gate_means(model: nn.Module, n_heads: int) -> Iterator[GateMeans | None]:
    """Inside the block, record every forward's mean output gate per head and prompt (yields a
    :class:`GateMeans`), or yield None for a model without output gates. Forward hooks on the
    gate modules, removed on exit, also on error."""
    gates = output_gates(model)
    if gates is None:
        yield None
        return
    means = GateMeans(len(gates), n_heads)

    def hook(layer: int):
        def record(_module: nn.Module, _args: object, output: Tensor) -> None:
            means.add(layer, output)

        return record

    handles = [gate.register_forward_hook(hook(i)) for i, gate in enumerate(gates)]
    try:
        yield means
    finally:
        for handle in handles:
            handle.remove()
