"""Head ablations: zero, mean, uniform (query scaled by eps) and scale.

* zero / scale: the head's output ``z`` multiplied by 0 / a factor, inside the kernel
  (``head_scale``).
* mean: ``z`` replaced by its mean over a reference prompt set (:func:`head_means`).
* uniform: the head's query multiplied by ``eps`` (1e-5), which makes its attention uniform
  over the visible keys - the ablation of the retrieval-head (Wu et al. 2024) and safety-head
  (Zhou et al. 2025, "On the Role of Attention Heads in LLM Safety") papers. Only the query is
  scaled: scaling the key would change every query head sharing that KV head under GQA.

Ablating one query head never touches the other heads of its KV group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probes.checks import boolean, describe, finite_tensor, number
from workbench.interventions.base import (
    HeadLike,
    Intervention,
    InterventionArgumentError,
    head_vector,
    scale_queries,
)
from workbench.lm import LoadedModel

UNIFORM_EPS = 1e-5


class ZeroAblation(Intervention):
    """Set the output ``z`` of each chosen head to zero."""

    name = "zero"

    def edit(self, call, heads):
        call.scale_heads(head_vector(call.n_heads, heads, 0.0, call.query.device, call.query.dtype))


class ScaleAblation(Intervention):
    """Multiply each chosen head's output by ``factor`` (0 = zero ablation, 2 = amplify)."""

    name = "scale"

    def __init__(self, lm: LoadedModel, heads: Iterable[HeadLike], factor: float = 0.0) -> None:
        super().__init__(lm, heads)
        self.factor = number("factor", factor)

    def edit(self, call, heads):
        vec = head_vector(call.n_heads, heads, self.factor, call.query.device, call.query.dtype)
        call.scale_heads(vec)


class UniformAblation(Intervention):
    """Scale each chosen head's query by ``eps``: its attention becomes uniform."""

    name = "uniform"

    def __init__(
        self, lm: LoadedModel, heads: Iterable[HeadLike], eps: float = UNIFORM_EPS
    ) -> None:
        super().__init__(lm, heads)
        self.eps = number("eps", eps, minimum=0, below=1)

    def edit(self, call, heads):
        scale_queries(call, heads, self.eps)


@dataclass(frozen=True)
class HeadMeans:
    """Mean per-head output over a reference prompt set.

    ``means`` is (n_layers, n_heads, D): the mean of ``z`` over every position of every
    reference prompt; ``n_prompts`` / ``n_tokens`` say what it averaged.
    """

    means: Tensor
    n_prompts: int
    n_tokens: int


@torch.no_grad()
def head_means(lm: LoadedModel, prompts: Sequence[str], *, chat: bool = False) -> HeadMeans:
    """Compute :class:`HeadMeans` of every head over ``prompts`` (one forward per prompt).

    Every prompt is encoded (and so checked) before the first forward."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise InterventionArgumentError(
            f"head_means needs a non-empty list of reference prompts, got {describe(prompts)}"
        )
    chat = boolean("chat", chat)
    info = lm.info
    total = torch.zeros(info.n_layers, info.n_heads, info.head_dim, dtype=torch.float64)
    n_tokens = 0
    encodings = [lm.encode(prompt, chat=chat) for prompt in prompts]
    for enc in encodings:
        with lm.capture(maps=False, z=True) as cap:
            lm.forward(enc)
        for layer in range(info.n_layers):
            total[layer] += cap.records[layer].z[0].double().sum(dim=1)  # (H, D)
        n_tokens += enc.n_tokens
    return HeadMeans((total / n_tokens).float(), len(prompts), n_tokens)


class MeanAblation(Intervention):
    """Replace each chosen head's output by its mean over a reference set (:func:`head_means`)."""

    name = "mean"

    def __init__(
        self, lm: LoadedModel, heads: Iterable[HeadLike], means: HeadMeans | None = None
    ) -> None:
        super().__init__(lm, heads)
        if not isinstance(means, HeadMeans):
            raise InterventionArgumentError(
                "mean ablation needs reference means (HeadMeans): compute them once with "
                "workbench.interventions.head_means(lm, reference_prompts) and pass means=...; "
                f"got means={describe(means)}"
            )
        want = (self.layout.n_layers, self.layout.n_heads, self.layout.head_dim)
        finite_tensor("means.means", means.means, shape=want)
        self.means = means

    def edit_output(self, call, heads, output):
        out = output.clone()
        idx = list(heads)
        out[:, :, idx] = self.means.means[call.layer, idx].to(out.device, out.dtype)
        return out
