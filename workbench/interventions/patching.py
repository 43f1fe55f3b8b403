"""Activation patching as an intervention: replace chosen heads' outputs by recorded ones.

Activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022's path patching builds
on it) runs a clean prompt with some heads' outputs taken from another run, e.g. of a corrupt
prompt with the same token count, and measures what changes. The source outputs come from any
record of per-head ``z``, e.g. :func:`workbench.analyzers.logit_attribution.head_z` or the
capture probe with ``z=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from torch import Tensor

from probes import AttentionCall
from workbench.interventions.base import HeadLike, Intervention, InterventionError

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


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
        self.z_source = z_source

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
