"""Steering: PASTA, ACT attention calibration, focus directions, per-head temperature."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probes.checks import describe, finite_tensor, integer, number
from workbench.errors import WorkbenchError
from workbench.heads import Head, parse_head
from workbench.interventions.base import (
    HeadLike,
    Intervention,
    InterventionArgumentError,
    InterventionError,
    head_pairs,
    scale_queries,
)
from workbench.interventions.spans import Span, check_spans
from workbench.lm import LoadedModel

PASTA_ALPHA = 0.01
ACT_BETA = 0.4
ACT_THRESHOLD = 0.1
#: Scale of focus directions (Zhu et al. 2025 use 0.2 - 0.3).
FOCUS_SCALE = 0.25


class Pasta(Intervention):
    """PASTA (Zhang et al. 2024, "Tell Your Model Where to Attend: Post-hoc Attention Steering").

    On the chosen heads, attention to prompt tokens *outside* the emphasized token spans is
    multiplied by ``alpha`` and rows renormalised; equivalently ``log(alpha)`` is added to
    their scores. Applied by the kernels as a per-head key bias. Tokens after the prompt
    (generated ones) are never down-weighted.

    Args:
        spans: emphasized token ranges ``[start, end)`` of the prompt.
        n_prompt_tokens: length of the prompt the spans refer to.
        alpha: multiplier of attention outside the spans, ``0 < alpha``; default 0.01.
    """

    name = "pasta"

    def __init__(
        self,
        lm: LoadedModel,
        heads: Iterable[HeadLike],
        spans: Sequence[Span],
        n_prompt_tokens: int,
        alpha: float = PASTA_ALPHA,
    ) -> None:
        super().__init__(lm, heads)
        self.alpha = number("alpha (PASTA's multiplier, default 0.01)", alpha, above=0)
        self.n_prompt = integer(
            "n_prompt_tokens", n_prompt_tokens, minimum=1, maximum=lm.info.max_context
        )
        self.spans = check_spans(spans, self.n_prompt)

    def edit(self, call, heads):
        n_keys = call.n_keys
        keep = torch.zeros(n_keys, dtype=torch.bool, device=call.query.device)
        keep[min(self.n_prompt, n_keys) :] = True  # generated tokens: never down-weighted
        for a, b in self.spans:
            keep[a:b] = True
        bias = torch.zeros(1, call.n_heads, n_keys, device=call.query.device)
        row = torch.where(keep, 0.0, math.log(self.alpha)).to(bias)
        bias[0, list(heads)] = row
        call.add_score_bias(bias)


class AttentionCalibration(Intervention):
    """ACT attention calibration (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention
    Sinks").

    On each chosen head, the non-initial sink tokens are the keys after position 0 whose sink
    score (mean attention received from the queries that see them) exceeds ``threshold``
    (0.1). Attention to them is scaled by ``beta`` (0.4) and the freed mass goes to the other
    visible tokens in proportion to their attention:

        p'_ij = beta * p_ij                                    for j in S
        p'_ij = p_ij * (1 - beta * P_iS) / (1 - P_iS)          otherwise, P_iS = sum_S p_ij

    Computed exactly without any L x L map: the kernels give the output and each row's
    log-sum-exp; the probabilities of the few sink keys are recomputed from q, k and the LSE
    (``P_iS``, ``V_iS = sum_S p_ij v_j``), a second kernel call gives the output over the other
    keys renormalised among themselves (``O_i``), and the new output is
    ``(1 - beta P_iS) O_i + beta V_iS``. Rows whose visible keys are all sinks are unchanged.
    Sinks are detected on the first call of each layer (the prompt) and kept for the
    decode steps of a generation; pass ``sinks`` (``{(layer, head): [key indices per batch
    item]}``, e.g. another instance's ``.sinks``) to use a fixed set instead. The recomputed
    probabilities use the layer's own semantics (softcap, sliding window); on a model with
    learned sink logits (gpt-oss) the "other" mass includes the learned sink's share, which
    gets its proportional part of the freed mass and, having no value, adds nothing to
    the output.
    """

    name = "act"

    def __init__(
        self,
        lm: LoadedModel,
        heads: Iterable[HeadLike],
        beta: float = ACT_BETA,
        threshold: float = ACT_THRESHOLD,
        sinks: dict[tuple[int, int], list[Tensor]] | None = None,
    ) -> None:
        super().__init__(lm, heads)
        self.beta = number("beta (ACT's scale, default 0.4)", beta, minimum=0, maximum=1)
        self.threshold = number("threshold", threshold, above=0, below=1)
        self.frozen = sinks is not None
        self.sinks: dict[tuple[int, int], list[Tensor]] = (
            {} if sinks is None else _check_sinks(lm, sinks)
        )

    def reset(self) -> None:
        if not self.frozen:
            self.sinks = {}

    def edit(self, call, heads):
        call.request_stats(received=True)

    def edit_output(self, call, heads, output):
        result = call.result
        assert result is not None and result.sink is not None
        batch = call.query.shape[0]
        group = call.n_heads // call.key.shape[1]
        out = output.clone()
        hide = torch.zeros(batch, call.n_heads, call.n_keys, device=call.query.device)
        parts: list[tuple[int, int, Tensor, Tensor]] = []
        for h in heads:
            key = (call.layer, h)
            if key not in self.sinks:  # prompt: detect this head's sinks per batch item
                self.sinks[key] = [
                    torch.nonzero(result.sink[b, h, 1:] > self.threshold).flatten() + 1
                    for b in range(batch)
                ]
            for b in range(batch):
                sink_idx = self.sinks[key][b]
                if sink_idx.numel() == 0:
                    continue
                q = call.query[b, h].float()  # (Lq, D)
                k = call.key[b, h // group].float().index_select(0, sink_idx)  # (S, D)
                v = call.value[b, h // group].float().index_select(0, sink_idx)
                scores = q @ k.T * call.scaling  # (Lq, S)
                cap = call.semantics.softcap
                if cap is not None:  # the logits the model really uses (Gemma 2)
                    scores = cap * torch.tanh(scores / cap)
                if call.score_bias is not None:
                    bias = call.score_bias[min(b, call.score_bias.shape[0] - 1), h]
                    scores = scores + bias.index_select(0, sink_idx)
                visible = _visible(call, b, sink_idx)
                p = torch.exp(scores - result.lse[b, h].unsqueeze(-1).float())
                p = torch.where(visible, p, torch.zeros_like(p))
                parts.append((b, h, p.sum(-1, keepdim=True), p @ v))  # P_iS (Lq, 1), V_iS
                hide[b, h, sink_idx] = -math.inf
        if not parts:
            return out
        # O_i = sum_{j not in S} p_ij v_j / (1 - P_iS), (B, Lq, H, D), from the kernels: no
        # o - V_S subtraction, which loses all precision when the sinks hold nearly all the mass
        others = call.run_kernels(extra_bias=hide).output
        for b, h, p_sink, v_sink in parts:
            scale = 1.0 if call.head_scale is None else float(call.head_scale[h])
            new = (1 - self.beta * p_sink) * others[b, :, h].float() + self.beta * scale * v_sink
            keep = p_sink >= 1 - 1e-6  # every visible key is a sink: nothing to give mass to
            out[b, :, h] = torch.where(keep, out[b, :, h].float(), new).to(out.dtype)
        return out


def _check_sinks(lm: LoadedModel, sinks: Any) -> dict[tuple[int, int], list[Tensor]]:
    """``{(layer, head): [1-D integer tensor of key indices >= 1 per batch item]}``."""
    if not isinstance(sinks, Mapping):
        raise InterventionArgumentError(
            f"sinks must be a dict {{(layer, head): [key indices per batch item]}}, "
            f"got {describe(sinks)}"
        )
    out: dict[tuple[int, int], list[Tensor]] = {}
    for key, per_item in sinks.items():
        pairs = head_pairs(lm.layout, [key], name="a key of sinks")
        if len(pairs) != 1:
            raise InterventionArgumentError(f"a key of sinks must be one head, got {key!r}")
        pair = pairs[0]
        if isinstance(per_item, (str, bytes, Tensor)) or not isinstance(per_item, Sequence):
            raise InterventionArgumentError(
                f"sinks[{key!r}] must be a list of key-index tensors (one per batch item), "
                f"got {describe(per_item)}"
            )
        for i, idx in enumerate(per_item):
            ok = (
                isinstance(idx, Tensor)
                and idx.dim() == 1
                and idx.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
            )
            if not ok or (idx.numel() and int(idx.min()) < 1):
                raise InterventionArgumentError(
                    f"sinks[{key!r}][{i}] must be a 1-D integer tensor of key indices >= 1, "
                    f"got {describe(idx)}"
                )
        out[pair] = list(per_item)
    return out


def _visible(call, b: int, key_idx: Tensor) -> Tensor:
    """(Lq, S) bool: which of the keys ``key_idx`` each query row of batch item ``b`` sees."""
    pos = torch.arange(call.n_queries, device=key_idx.device) + call.query_offset
    vis = torch.ones(call.n_queries, key_idx.numel(), dtype=torch.bool, device=key_idx.device)
    if call.causal:
        vis &= key_idx.unsqueeze(0) <= pos.unsqueeze(1)
    window = call.semantics.window
    if window is not None:  # a sliding layer whose window is not in a mask
        vis &= key_idx.unsqueeze(0) > pos.unsqueeze(1) - window
    if call.mask is not None:
        m = call.mask[min(b, call.mask.shape[0] - 1), 0]  # (Lq, Lk)
        vis &= m.index_select(1, key_idx).bool()
    return vis


class Temperature(Intervention):
    """Divide the scores of each chosen head by ``temperature`` (> 1 flattens, < 1 sharpens)."""

    name = "temperature"

    def __init__(
        self, lm: LoadedModel, heads: Iterable[HeadLike], temperature: float = 1.0
    ) -> None:
        super().__init__(lm, heads)
        self.temperature = number("temperature", temperature, above=0)

    def edit(self, call, heads):
        scale_queries(call, heads, 1.0 / self.temperature)


@dataclass
class FocusDirectionSet:
    """Focus directions (Zhu et al. 2025, "Focus Directions Make Your Language Models Pay More
    Attention to Relevant Contexts"): per-head vectors ``d_q``, ``d_k`` (D,) added to the
    post-RoPE query and key of a contextual head, applied with a scale (0.2 - 0.3).

    Saved as safetensors: tensors ``L{l}H{h}.q`` and ``L{l}H{h}.k``, metadata ``model`` and
    ``head_dim``. Training them belongs to the contextual-heads analyzer.
    """

    directions: dict[Head, tuple[Tensor, Tensor]] = field(default_factory=dict)
    model: str = ""

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        if not self.directions:
            raise InterventionError("no focus directions to save")
        tensors = {}
        for head, (dq, dk) in self.directions.items():
            tensors[f"{head.id}.q"] = dq.detach().float().contiguous().cpu()
            tensors[f"{head.id}.k"] = dk.detach().float().contiguous().cpu()
        dim = next(iter(self.directions.values()))[0].numel()
        save_file(tensors, str(path), metadata={"model": self.model, "head_dim": str(dim)})

    @classmethod
    def load(cls, path: str | Path) -> FocusDirectionSet:
        from safetensors import safe_open

        if not isinstance(path, (str, Path)) or not str(path).strip():
            raise InterventionArgumentError(
                f"path must be the path of a .safetensors file, got {describe(path)}"
            )
        if not Path(path).is_file():
            raise InterventionError(f"focus directions file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = list(f.keys())
                tensors = {n: f.get_tensor(n) for n in names}
        except (OSError, ValueError, RuntimeError) as exc:
            raise InterventionError(f"cannot read focus directions from {path}: {exc}") from None
        directions: dict[Head, tuple[Tensor, Tensor]] = {}
        for name in names:
            head_text, _, part = name.rpartition(".")
            if part not in ("q", "k"):
                raise InterventionError(f"{path}: unexpected tensor {name!r}")
            try:
                head = parse_head(head_text)
            except WorkbenchError as exc:
                raise InterventionError(f"{path}: tensor {name!r}: {exc}") from None
            other = f"{head_text}.{'k' if part == 'q' else 'q'}"
            if other not in tensors:
                raise InterventionError(f"{path}: {name!r} has no matching {other!r}")
            directions[head] = (tensors[f"{head_text}.q"], tensors[f"{head_text}.k"])
        return cls(directions, meta.get("model", ""))


class FocusDirections(Intervention):
    """Apply a :class:`FocusDirectionSet` with ``scale``.

    ``q_h += scale * d_q``. The key direction is added to every key of the head, so its
    contribution to a row's scores, ``(q_i + scale d_q) . scale d_k``, is the same for every
    key of the row and cancels in the softmax: exactly, the key part changes nothing and is not
    applied (which also keeps it from leaking into the other query heads of a GQA group).
    """

    name = "focus"

    def __init__(
        self, lm: LoadedModel, directions: FocusDirectionSet, scale: float = FOCUS_SCALE
    ) -> None:
        if not isinstance(directions, FocusDirectionSet):
            raise InterventionArgumentError(
                "directions must be a FocusDirectionSet (FocusDirectionSet.load(path)), "
                f"got {describe(directions)}"
            )
        if not directions.directions:
            raise InterventionArgumentError("directions holds no focus direction")
        for head, pair in directions.directions.items():
            if not isinstance(head, Head) or not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and all(isinstance(t, Tensor) for t in pair)
            ):
                raise InterventionArgumentError(
                    "directions must map workbench.Head keys to (query direction, key direction) "
                    f"tensor pairs, got {describe(head)}: {describe(pair)}"
                )
        super().__init__(lm, list(directions.directions))
        dim = lm.layout.head_dim
        for head, (dq, dk) in directions.directions.items():
            if tuple(dq.shape) != (dim,) or tuple(dk.shape) != (dim,):
                raise InterventionArgumentError(
                    f"directions: the focus direction of {head.id} has shape "
                    f"{tuple(dq.shape)}, this model's head_dim is {dim}"
                )
            finite_tensor(f"directions[{head.id}] (query direction)", dq)
            finite_tensor(f"directions[{head.id}] (key direction)", dk)
        self.directions = directions
        self.scale = number("scale", scale)

    def edit(self, call, heads):
        query = call.query.clone()
        for h in heads:
            dq = self.directions.directions[Head(call.layer, h)][0]
            query[:, h] += self.scale * dq.to(query.device, query.dtype)
        call.query = query
