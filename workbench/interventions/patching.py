"""Activation patching as an intervention: replace chosen heads' outputs by recorded ones.

Activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022's path patching builds
on it) runs a clean prompt with some heads' outputs taken from another run, e.g. of a corrupt
prompt with the same token count, and measures what changes. The source outputs come from any
record of per-head ``z``, e.g. :func:`workbench.analyzers.logit_attribution.head_z` or the
capture probe with ``z=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from probes import AttentionCall
from probes.checks import describe, finite_tensor
from workbench.interventions.base import (
    HeadLike,
    Intervention,
    InterventionArgumentError,
    InterventionError,
)

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


def _check_source(layout, heads: dict[int, tuple[int, ...]], z_source: Any) -> Any:
    """``z_source`` indexable by layer, with a finite (B, L, H, D) tensor for every layer of
    ``heads`` (H and D those of the model)."""
    if isinstance(z_source, (str, bytes, Tensor)) or not isinstance(z_source, (Sequence, Mapping)):
        raise InterventionArgumentError(
            "z_source must be a list (or dict) of (B, L, H, D) head-output tensors by layer, "
            f"got {describe(z_source)}"
        )
    for layer in heads:
        try:
            src = z_source[layer]
        except (IndexError, KeyError):
            raise InterventionArgumentError(
                f"z_source has no tensor for layer {layer}; give one per layer"
            ) from None
        finite_tensor(f"z_source[{layer}]", src)
        if (
            not isinstance(src, Tensor)
            or src.dim() != 4
            or tuple(src.shape[2:])
            != (
                layout.n_heads,
                layout.head_dim,
            )
        ):
            raise InterventionArgumentError(
                f"z_source[{layer}] must be a (B, L, {layout.n_heads}, {layout.head_dim}) tensor, "
                f"got shape {tuple(getattr(src, 'shape', ()))}"
            )
    return z_source


class PatchHeads(Intervention):
    """Replace chosen heads' outputs by given per-position outputs (activation patching).

    ``z_source``: one (1, L, H, D) tensor per layer, e.g. the head outputs of a corrupt
    prompt. Only for a full forward of a prompt with the same length ``L``.
    """

    name = "patch"

    def __init__(
        self, lm: LoadedModel, heads: Iterable[HeadLike], z_source: Sequence[Tensor]
    ) -> None:
        super().__init__(lm, heads)
        self.z_source = _check_source(self.layout, self.heads, z_source)

    def edit_output(self, call: AttentionCall, heads: tuple[int, ...], output: Tensor) -> Tensor:
        src = self.z_source[call.layer]
        if src.shape[1] != output.shape[1]:
            raise InterventionError(
                f"patch source has {src.shape[1]} positions, the forward {output.shape[1]}"
            )
        out = output.clone()
        idx = list(heads)
        out[:, :, idx] = src[:, :, idx].to(out.device, out.dtype)
        return out


__all__ = ["PatchHeads"]
