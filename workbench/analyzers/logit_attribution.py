"""Per-head attribution of a last-position metric: direct logit attribution (DLA) and the
attribution-patching estimate, with the exact ablation each estimates.

Definitions (see :mod:`workbench.analyzers.attribution` for the analyzer and the references:
Elhage et al. 2021 for DLA; Nanda 2023 and Syed et al. 2023 for attribution patching): DLA
takes the head's output ``z_h`` (last position) through its slice of ``W_O``, through the final
norm with its scale frozen at the clean residual's value, dotted with the metric's direction in
the final hidden space; attribution patching is ``sum_positions grad_z(metric) . (z_baseline -
z)`` from one forward and one backward pass. The heads' outputs are read (and, for gradients,
given a zero leaf to differentiate against) through the probes' attach point on the registered
attention path; the final norm and the unembedding come from the architecture table
(:mod:`workbench.model_parts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from probes import AttentionCall, HookSession
from workbench.analyzers.base import AnalyzerError
from workbench.interventions import HeadMeans, Intervention, MeanAblation, ZeroAblation
from workbench.interventions.base import HeadLike
from workbench.interventions.patching import PatchHeads
from workbench.model_parts import final_norm, unembedding

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

BASELINES = ("zero", "mean", "corrupt")

#: ``metric(logits_last (V,), item) -> 0-d tensor``, differentiable.
MetricFn = Callable[[Tensor], Tensor]


def frozen_norm_map(norm: nn.Module, resid: Tensor, direction: Tensor) -> Tensor:
    """Pull ``direction`` (in the normed space) back into the residual stream through the final
    norm with its scale frozen at the value it has for residual vector ``resid`` (d,).

    RMSNorm ``w * x * s``: ``s * w * direction``. LayerNorm ``w * (x - mean x) * s + b``: the
    same, centred (centring is linear, so it moves onto the direction). Returns (d,) float64.
    """
    x = resid.double()
    weight = getattr(norm, "weight", None)
    w = weight.detach().double() if weight is not None else torch.ones_like(x)
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    v = w * direction.double()
    if isinstance(norm, nn.LayerNorm):
        s = torch.rsqrt(x.var(unbiased=False) + eps)
        return s * (v - v.mean())
    s = torch.rsqrt(x.pow(2).mean() + eps)
    return s * v


def frozen_norm_output(norm: nn.Module, resid: Tensor) -> Tensor:
    """What :func:`frozen_norm_map`'s model of the norm gives for ``resid`` (to check it)."""
    x = resid.double()
    weight = getattr(norm, "weight", None)
    w = weight.detach().double() if weight is not None else torch.ones_like(x)
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    bias = getattr(norm, "bias", None)
    if isinstance(norm, nn.LayerNorm):
        out = w * (x - x.mean()) * torch.rsqrt(x.var(unbiased=False) + eps)
    else:
        out = w * x * torch.rsqrt(x.pow(2).mean() + eps)
    return out + bias.detach().double() if bias is not None else out


def head_out_weights(lm: LoadedModel, layer: int) -> Tensor:
    """(H, D, d_model) per-head slices of layer ``layer``'s output projection."""
    info = lm.layout
    weight = lm.layout.out_projections[layer].weight.detach()
    if not lm.layout.out_proj_transposed:  # nn.Linear: (d_model, H*D)
        weight = weight.t()
    return weight.reshape(info.n_heads, info.head_dim, -1)


class _HeadOutputs(HookSession):
    """Keeps every layer's per-head output ``z`` (B, L, H, D) as the attention path hands it
    to the output projection (after any intervention); a context manager on every layer.

    ``leaf``: also replace it by ``z + delta`` with ``delta`` a zero leaf tensor requiring
    grad, kept in :attr:`delta`: the metric's gradient w.r.t. that leaf is its gradient w.r.t.
    ``z``, through every later layer (attention included: no path is cut, whatever the
    parameters' ``requires_grad``).
    """

    def __init__(self, lm: LoadedModel, *, leaf: bool) -> None:
        self.layout = lm.layout
        self.leaf = leaf
        self.z: dict[int, Tensor] = {}
        self.delta: dict[int, Tensor] = {}

    def __repr__(self) -> str:
        return f"attribution head outputs (leaf={self.leaf})"

    def watched_modules(self) -> dict[int, nn.Module]:
        return dict(enumerate(self.layout.attention_modules))

    def reset(self) -> None:
        self.z, self.delta = {}, {}

    def layers_fired(self) -> set[int]:
        return set(self.z)

    def finish(self, call: AttentionCall, output: Tensor) -> Tensor | None:
        self.z[call.layer] = output.detach()
        if not self.leaf:
            return None
        delta = torch.zeros_like(output, requires_grad=True)
        self.delta[call.layer] = delta
        return output + delta


def _run(lm: LoadedModel, input_ids: Tensor) -> Tensor:
    out = lm.model(
        input_ids=input_ids.to(lm.device),
        attention_mask=torch.ones_like(input_ids).to(lm.device),
        use_cache=False,
    )
    return out.logits


@torch.no_grad()
def metric_value(lm: LoadedModel, input_ids: Tensor, metric: MetricFn) -> float:
    """The metric on one forward pass (interventions active around the call apply)."""
    return float(metric(_run(lm, input_ids)[0, -1].double()))


@torch.no_grad()
def head_z(lm: LoadedModel, input_ids: Tensor) -> list[Tensor]:
    """Every layer's per-head output ``z`` as (1, L, H, D) tensors, from one forward."""
    with _HeadOutputs(lm, leaf=False) as outputs:
        _run(lm, input_ids)
    h, d = lm.layout.n_heads, lm.layout.head_dim
    return [outputs.z[layer].reshape(1, -1, h, d) for layer in range(lm.layout.n_layers)]


def logit_diff(target_id: int, foil_id: int) -> MetricFn:
    """``logits[target] - logits[foil]``."""

    def metric(logits: Tensor) -> Tensor:
        return logits[target_id] - logits[foil_id]

    return metric


@dataclass
class HeadAttribution:
    """Per-head attributions of one prompt: arrays (n_layers, n_heads), float64."""

    metric: float
    dla: Tensor
    attribution_patching: Tensor
    norm_check: float  # max |frozen-norm model - actual final norm output| at the last position


def attribute(
    lm: LoadedModel,
    input_ids: Tensor,
    metric: MetricFn,
    *,
    baseline: str = "zero",
    corrupt_ids: Tensor | None = None,
    means: HeadMeans | Tensor | None = None,
) -> HeadAttribution:
    """DLA and attribution-patching estimate of every head for one prompt (1, L) ids.

    One forward with autograd on and one backward pass (plus one forward on ``corrupt_ids``
    for ``baseline="corrupt"``). ``metric`` maps the last-position logits (V,) to a scalar.
    """
    if baseline not in BASELINES:
        raise AnalyzerError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    layout = lm.layout
    n_layers, n_heads, dim = layout.n_layers, layout.n_heads, layout.head_dim
    if baseline == "corrupt":
        if corrupt_ids is None:
            raise AnalyzerError("baseline='corrupt' needs a corrupt prompt (item field 'corrupt')")
        if corrupt_ids.shape != input_ids.shape:
            raise AnalyzerError(
                f"the corrupt prompt has {corrupt_ids.shape[-1]} tokens, the clean one "
                f"{input_ids.shape[-1]}; they must align token for token"
            )
        z_base = head_z(lm, corrupt_ids)
    elif baseline == "mean":
        if means is None:
            raise AnalyzerError("baseline='mean' needs head means (workbench.interventions)")
        mean_z = means.means if isinstance(means, HeadMeans) else means
        z_base = [mean_z[layer].view(1, 1, n_heads, dim) for layer in range(n_layers)]
    norm = final_norm(lm.model)
    unembed = unembedding(lm.model)
    kept: dict[str, Tensor] = {}

    def keep_resid(module, args):
        kept["resid"] = args[0]

    def keep_normed(module, args):
        kept["normed"] = args[0]

    h1 = norm.register_forward_pre_hook(keep_resid)
    h2 = unembed.register_forward_pre_hook(keep_normed)
    try:
        with _HeadOutputs(lm, leaf=True) as outputs, torch.enable_grad():
            logits = _run(lm, input_ids)
            value = metric(logits[0, -1].double())
            leaves = [outputs.delta[layer] for layer in range(n_layers)]
            grads = torch.autograd.grad(value, [kept["normed"], *leaves])
    finally:
        h1.remove()
        h2.remove()
    # DLA: direction of the metric in the normed space at the last position, pulled back
    # through the frozen final norm, dotted with each head's direct write to the residual.
    u = grads[0][0, -1]
    resid = kept["resid"][0, -1].detach()
    direction = frozen_norm_map(norm, resid, u)
    normed = kept["normed"][0, -1].detach().double()
    norm_check = float((frozen_norm_output(norm, resid) - normed).abs().max())
    dla = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    ap = torch.zeros_like(dla)
    for layer in range(n_layers):
        z = outputs.z[layer].reshape(1, -1, n_heads, dim)
        w_o = head_out_weights(lm, layer).double()  # (H, D, d)
        writes = torch.einsum("hd,hdm->hm", z[0, -1].double(), w_o)  # (H, d)
        dla[layer] = writes @ direction.to(writes.device)
        g = grads[layer + 1].reshape(1, -1, n_heads, dim).double()
        if baseline == "zero":
            delta = -z.double()
        else:
            delta = z_base[layer].to(z.device).double() - z.double()
        ap[layer] = (g * delta).sum(dim=(0, 1, 3)).cpu()
    return HeadAttribution(float(value.detach()), dla.cpu(), ap, norm_check)


def ablation_for(
    lm: LoadedModel,
    heads: Iterable[HeadLike],
    baseline: str,
    *,
    means: HeadMeans | None = None,
    z_source: Sequence[Tensor] | None = None,
) -> Intervention:
    """The exact ablation whose effect ``attribution_patching`` estimates for ``baseline``."""
    if baseline == "zero":
        return ZeroAblation(lm, heads)
    if baseline == "mean":
        return MeanAblation(lm, heads, means=means)
    if baseline == "corrupt":
        if z_source is None:
            raise AnalyzerError("corrupt ablation needs the corrupt prompt's head outputs")
        return PatchHeads(lm, heads, z_source)
    raise AnalyzerError(f"baseline must be one of {BASELINES}, got {baseline!r}")


__all__ = [
    "BASELINES",
    "HeadAttribution",
    "MetricFn",
    "ablation_for",
    "attribute",
    "frozen_norm_map",
    "frozen_norm_output",
    "head_out_weights",
    "head_z",
    "logit_diff",
    "metric_value",
]
