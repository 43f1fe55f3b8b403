"""Per-head attribution of a last-position metric: direct logit attribution (DLA) and the
attribution-patching estimate, with the exact ablation each estimates.

Definitions (see :mod:`workbench.analyzers.attribution` for the analyzer and the references:
Elhage et al. 2021 for DLA; Nanda 2023 and Syed et al. 2023 for attribution patching): DLA
takes the head's output ``z_h`` (last position) through its slice of ``W_O``, through the final
norm with its scale frozen at the clean residual's value, dotted with the metric's direction in
the final hidden space; attribution patching is ``sum_positions grad_z(metric) . (z_baseline -
z)`` from one forward and one backward pass. The heads' outputs are read (and, for gradients,
given a zero leaf to differentiate against) through the probes' attach point on the registered
attention path; the final norm, the unembedding, the norms' formulas and any attention-output
norm come from the architecture table (:mod:`workbench.model_parts`).

Architectures with a norm on the attention output (Gemma 2/3, OLMo 2: ``x + norm(attn(x))``):
that norm is frozen the same way (its scale measured on the actual forward at the last
position), so the heads' DLA still sums exactly to the DLA of the attention block's output.
Architectures with a final logit softcap (Gemma 2: ``c * tanh(logits / c)``) or a logit scale
(Cohere 2): the metric is computed on the model's real logits; the DLA direction is the
metric's gradient w.r.t. the final hidden state, so it goes through the cap's derivative at the
clean logits (the cap linearised like the norm; DLA then adds up to the first-order metric
change, not to the metric itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from probes import AttentionCall, HookSession
from workbench.analyzers.base import AnalyzerError
from workbench.architectures import norm_eps
from workbench.batching import right_pad
from workbench.generation import pad_id
from workbench.interventions import HeadMeans, Intervention, MeanAblation, ZeroAblation
from workbench.interventions.base import HeadLike
from workbench.interventions.patching import PatchHeads
from workbench.model_parts import (
    attn_output_norms,
    final_norm,
    require_no_output_gate,
    spec_of,
    unembedding,
)

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

BASELINES = ("zero", "mean", "corrupt")

#: ``metric(logits_last (V,), item) -> 0-d tensor``, differentiable.
MetricFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class FrozenNorm:
    """One norm of the model with its scale frozen at the value it has for a residual vector
    ``x`` (d,): around ``x`` the norm is the linear map ``v -> w * s * C v`` plus its bias,
    with ``s = 1/sqrt(mean(x^2) + eps)`` and ``C`` the identity (RMSNorm) or
    ``s = 1/sqrt(var(x) + eps)`` and ``C`` the centring ``v - mean v`` (LayerNorm); ``w`` is the
    weight, or ``1 + weight`` for Gemma's RMSNorm. The formula and ``eps`` come from the
    architecture table (:class:`workbench.architectures.NormSpec`). All float64.
    """

    weight: Tensor  # (d,) effective weight
    scale: Tensor  # 0-d frozen scale s
    centred: bool
    bias: Tensor | None  # (d,)

    @classmethod
    def at(cls, model: nn.Module, norm: nn.Module, x: Tensor) -> FrozenNorm:
        """Freeze ``norm`` (a norm of ``model``, formula from its table row) at ``x`` (d,)."""
        spec = spec_of(model).norm
        eps = norm_eps(model.config)
        x = x.detach().double()
        params = dict(norm.named_parameters(recurse=False))
        weight = params["weight"].detach().double().to(x.device)
        if spec.kind == "rms_unit_offset":
            weight = 1.0 + weight
        centred = spec.kind == "layer"
        spread = x.var(unbiased=False) if centred else x.pow(2).mean()
        bias = params.get("bias")
        bias = None if bias is None else bias.detach().double().to(x.device)
        return cls(weight, torch.rsqrt(spread + eps), centred, bias)

    def apply(self, v: Tensor) -> Tensor:
        """The frozen linear part on vectors ``v`` (..., d) (no bias)."""
        v = v.double().to(self.weight.device)
        if self.centred:
            v = v - v.mean(-1, keepdim=True)
        return self.weight * self.scale * v

    def pull_back(self, direction: Tensor) -> Tensor:
        """The adjoint of :meth:`apply`: ``direction`` (d,) in the normed space -> the residual
        direction (d,) whose dot product with ``v`` equals ``direction . apply(v)``."""
        v = self.weight * self.scale * direction.double().to(self.weight.device)
        return v - v.mean() if self.centred else v

    def output(self, x: Tensor) -> Tensor:
        """The norm's output at ``x`` (d,) by this model: equals the real norm's output."""
        out = self.apply(x)
        return out if self.bias is None else out + self.bias


def frozen_norm_map(model: nn.Module, norm: nn.Module, resid: Tensor, direction: Tensor) -> Tensor:
    """Pull ``direction`` (in the normed space) back into the residual stream through ``norm``
    (a norm of ``model``) with its scale frozen at the value it has for ``resid`` (d,).

    RMSNorm ``w * x * s``: ``s * w * direction``. LayerNorm ``w * (x - mean x) * s + b``: the
    same, centred (centring is linear, so it moves onto the direction). Gemma's RMSNorm uses
    ``1 + w``. Returns (d,) float64.
    """
    return FrozenNorm.at(model, norm, resid).pull_back(direction)


def frozen_norm_output(model: nn.Module, norm: nn.Module, resid: Tensor) -> Tensor:
    """What :func:`frozen_norm_map`'s model of ``norm`` gives for ``resid`` (to check it)."""
    return FrozenNorm.at(model, norm, resid).output(resid)


def head_out_weights(lm: LoadedModel, layer: int) -> Tensor:
    """(H, D, d_model) per-head slices of layer ``layer``'s output projection."""
    require_no_output_gate(lm.model, "direct logit attribution")
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


BATCH = 16  # prompts per forward of metric_values


@torch.no_grad()
def metric_values(
    lm: LoadedModel, inputs: Sequence[Tensor], metrics: Sequence[MetricFn]
) -> list[float]:
    """:func:`metric_value` of each ``(input_ids, metric)`` pair, :data:`BATCH` prompts per
    forward, right-padded (under the causal mask a prompt's last position never sees the
    padding after it): the per-item metric of the attribution causal check."""
    out: list[float] = []
    for first in range(0, len(inputs), BATCH):
        chunk = inputs[first : first + BATCH]
        lengths = [int(x.numel()) for x in chunk]
        logits = _run(lm, right_pad(chunk, pad_id(lm.tokenizer)))
        for row, n in enumerate(lengths):
            out.append(float(metrics[first + row](logits[row, n - 1].double())))
    return out


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
    norm_check: float  # max |frozen-norm model - actual norm output| at the last position, over
    # the final norm and every attention-output norm


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
    require_no_output_gate(lm.model, "direct logit attribution")
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
    out_norms = attn_output_norms(lm.model)
    kept: dict[str, Tensor] = {}
    attn_out: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (norm input, output) (d,)

    def keep_resid(module, args):
        kept["resid"] = args[0]

    def keep_normed(module, args):
        kept["normed"] = args[0]

    def keep_attn_out(layer: int):
        def hook(module, args, output):
            attn_out[layer] = (args[0][0, -1].detach(), output[0, -1].detach())

        return hook

    handles = [
        norm.register_forward_pre_hook(keep_resid),
        unembed.register_forward_pre_hook(keep_normed),
        *(n.register_forward_hook(keep_attn_out(i)) for i, n in enumerate(out_norms or [])),
    ]
    try:
        with _HeadOutputs(lm, leaf=True) as outputs, torch.enable_grad():
            logits = _run(lm, input_ids)
            value = metric(logits[0, -1].double())
            leaves = [outputs.delta[layer] for layer in range(n_layers)]
            grads = torch.autograd.grad(value, [kept["normed"], *leaves])
    finally:
        for handle in handles:
            handle.remove()
    # DLA: direction of the metric in the normed space at the last position (through any
    # final logit softcap: its derivative at the real logits), pulled back through the frozen
    # final norm, dotted with each head's direct write to the residual (through the frozen
    # attention-output norm where the architecture has one).
    u = grads[0][0, -1]
    resid = kept["resid"][0, -1].detach()
    direction = frozen_norm_map(lm.model, norm, resid, u)
    normed = kept["normed"][0, -1].detach().double()
    norm_check = float((frozen_norm_output(lm.model, norm, resid) - normed).abs().max())
    dla = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    ap = torch.zeros_like(dla)
    for layer in range(n_layers):
        z = outputs.z[layer].reshape(1, -1, n_heads, dim)
        w_o = head_out_weights(lm, layer).double()  # (H, D, d)
        writes = torch.einsum("hd,hdm->hm", z[0, -1].double(), w_o)  # (H, d)
        if out_norms is not None:
            x, y = attn_out[layer]
            frozen = FrozenNorm.at(lm.model, out_norms[layer], x)
            writes = frozen.apply(writes)
            norm_check = max(norm_check, float((frozen.output(x) - y.double()).abs().max()))
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
    "FrozenNorm",
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
    "metric_values",
]
