"""Where the attention of a model lives, as plain data the probes can use.

``workbench.architectures`` builds a :class:`ModelLayout` from its table of architectures; probes
never look at model classes themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from probes.checks import index_list
from probes.errors import HeadOutOfRangeError, LayerOutOfRangeError


@dataclass(frozen=True)
class ModelLayout:
    """Attention geometry of one loaded model.

    Attributes:
        n_layers: number of attention layers.
        n_heads: query heads per layer.
        n_kv_heads: key/value heads per layer (``n_heads`` without GQA).
        head_dim: size ``D`` of one head's q, k, v and output.
        attention_modules: the attention module of each layer, index = layer.
        out_projections: each layer's output projection (``o_proj`` / ``c_proj``).
        out_proj_transposed: True when the projection stores its weight as ``(in, out)``
            (GPT-2's ``Conv1D``) instead of ``nn.Linear``'s ``(out, in)``.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    attention_modules: tuple[nn.Module, ...]
    out_projections: tuple[nn.Module, ...]
    out_proj_transposed: bool = False

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA); 1 for plain multi-head attention."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The KV head query head ``head`` reads: ``head // (n_heads / n_kv_heads)``."""
        return head // self.group_size

    def check_layers(self, layers: Iterable[int] | int | None) -> tuple[int, ...]:
        """Validate layer indices; ``None`` means every layer. Returns them sorted, unique.

        Integers only (NumPy integers too): ``3.0``, ``"12"`` and ``True`` are refused.
        """
        if layers is None:
            return tuple(range(self.n_layers))
        return index_list(
            "layers", layers, size=self.n_layers, what="layer", error=LayerOutOfRangeError
        )

    def check_heads(self, heads: Iterable[int] | int | None) -> tuple[int, ...]:
        """Validate query-head indices; ``None`` means every head. Returns them sorted, unique.

        Integers only (NumPy integers too): ``2.7``, ``"5"`` and ``True`` are refused.
        """
        if heads is None:
            return tuple(range(self.n_heads))
        return index_list("heads", heads, size=self.n_heads, what="head", error=HeadOutOfRangeError)
