"""Activation patching per head: clean head outputs patched into a corrupted run, one head at a
time, scored by how much of the clean answer each head alone brings back.

Activation patching ("causal tracing", Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", arXiv:2202.05262; per head: Wang et al. 2022, "Interpretability in the
Wild", arXiv:2211.00593; how to read it: Heimersheim & Nanda 2024, "How to use and interpret
activation patching", arXiv:2404.15255). Two prompts with the same token count: a clean one
whose answer we follow and a corrupted one that changes the answer. For each head, the corrupted
prompt runs with that head's output ``z`` (every position) replaced by its value on the clean
run (the registered :class:`~workbench.interventions.PatchHeads` intervention, through the
intervention registry). The metric is on the last position's logits: the logit difference
``logit[answer] - logit[foil]`` (default) or the answer's log-probability; the patched metric is
normalised as in TransformerLens' patching demos, ``(patched - corrupted) / (clean -
corrupted)``: 0 = nothing restored, 1 = the clean metric restored (NaN when the clean and the
corrupted metric are equal: there is nothing to restore).

Batching: the heads of one layer run as one batch of ``n_heads`` copies of the corrupted prompt.
Row ``b`` patches all heads of the layer from a source equal to the corrupted run's outputs with
head ``b``'s replaced by the clean ones; nothing before the layer is patched, so the other heads'
outputs equal the recorded corrupted ones and the row is exactly the one-head patch. Heads of
different layers are never batched together (a row patched at an early layer changes the later
layers' corrupted outputs). Reference: TransformerLens ``patching.get_act_patch_attn_head_out_
all_pos`` runs one forward per head.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from probes.checks import ArgumentError, choice, index_list
from workbench import interventions as iv
from workbench.analyzers.base import Progress, Scan
from workbench.analyzers.logit_attribution import head_z
from workbench.errors import LayerOutOfRangeError
from workbench.layer_suffix import SuffixRunner
from workbench.logit_lens import token_id

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel

#: Metrics of the last position's log-probabilities (B, V), by name: ``(log_probs, answer,
#: foil) -> (B,)`` (a logit difference equals the log-probability difference).
METRICS = {
    "logit_diff": lambda logp, a, f: logp[:, a] - logp[:, f],
    "logprob": lambda logp, a, f: logp[:, a],
}


@dataclass
class HeadPatching:
    """Per-head activation patching of one clean / corrupted prompt pair.

    Attributes:
        clean_tokens, corrupted_tokens: the L token strings of each prompt.
        metric: ``"logit_diff"`` or ``"logprob"``.
        answer_id, foil_id: the answer token and the foil (``logit_diff`` only, else None).
        clean, corrupted: the metric on the unpatched clean and corrupted runs.
        patched: (n_layers, n_heads) the metric with one head patched (NaN: layer not run).
        normalized: (n_layers, n_heads) ``(patched - corrupted) / (clean - corrupted)`` (all NaN
            when ``clean == corrupted``).
        layers: the layers patched.
    """

    clean_tokens: list[str]
    corrupted_tokens: list[str]
    metric: str
    answer_id: int
    foil_id: int | None
    clean: float
    corrupted: float
    patched: Tensor
    normalized: Tensor
    layers: list[int]


def _last_metric(name: str, logp: Tensor, answer: int, foil: int | None) -> Tensor:
    """The metric (B,) of last-position log-probabilities (B, V), in float64."""
    return METRICS[name](logp.double(), answer, foil)


def normalize(patched: Tensor, clean: float, corrupted: float) -> Tensor:
    """``(patched - corrupted) / (clean - corrupted)``; all NaN when the denominator is 0 (or
    not finite)."""
    gap = clean - corrupted
    if gap == 0 or not math.isfinite(gap):
        return torch.full_like(patched, float("nan"))
    return (patched - corrupted) / gap


def _forward_last(lm: LoadedModel, ids: Tensor) -> Tensor:
    """Last-position log-probabilities (B, V), float64, of equal-length prompts (B, L)."""
    with torch.no_grad():
        out = lm.model(
            input_ids=ids.to(lm.device),
            attention_mask=torch.ones_like(ids).to(lm.device),
            use_cache=False,
            logits_to_keep=1,
        )
    return torch.log_softmax(out.logits[:, -1].double(), -1)


def patch_heads(
    lm: LoadedModel,
    clean: str | Encoded,
    corrupted: str | Encoded,
    *,
    chat: bool = False,
    metric: str = "logit_diff",
    answer: int | str | None = None,
    foil: int | str | None = None,
    layers: Iterable[int] | None = None,
    progress: Progress = False,
) -> HeadPatching:
    """Patch each head's clean output into the corrupted run (see the module docstring).

    Args:
        clean, corrupted: the two prompts (text or :class:`Encoded`), same token count.
        metric: ``"logit_diff"`` (answer minus foil) or ``"logprob"`` (the answer's).
        answer: the answer token (id or text: its first token); None: the clean run's top-1.
        foil: the foil of ``logit_diff``; None: the corrupted run's top-1 (its top-2 when that
            is the answer).
        layers: the layers whose heads are patched (None: all).
        progress: as the analyzers' (``True``: a bar; a callable ``(desc, done, total)``).

    One forward of each prompt, three of the corrupted one as a batch of n_heads rows (the
    third checks that running the blocks from a cached residual stream is exact for this
    architecture: :class:`~workbench.layer_suffix.SuffixRunner`, else full forwards), then per
    layer ``l`` one batched run of blocks ``l..``.
    """
    metric = choice("metric", metric, METRICS)
    clean_enc = lm.encode(clean, chat=chat)
    corrupt_enc = lm.encode(corrupted, chat=chat)
    if clean_enc.n_tokens != corrupt_enc.n_tokens:
        raise ArgumentError(
            f"the clean prompt has {clean_enc.n_tokens} tokens and the corrupted one "
            f"{corrupt_enc.n_tokens}; patching needs the same token count (edit the corrupted "
            "prompt so that it aligns token for token)"
        )
    n_layers, n_heads = lm.layout.n_layers, lm.layout.n_heads
    chosen = (
        list(range(n_layers))
        if layers is None
        else list(
            index_list("layers", layers, size=n_layers, what="layer", error=LayerOutOfRangeError)
        )
    )
    answer_id = None if answer is None else token_id(lm, "answer", answer)
    foil_id = None if foil is None else token_id(lm, "foil", foil)
    clean_ids, corrupt_ids = clean_enc.input_ids, corrupt_enc.input_ids
    clean_logits = _forward_last(lm, clean_ids)[0]
    batch = corrupt_ids.expand(n_heads, -1)
    # the corrupted run from any layer on (one batch row per head of that layer)
    runner = SuffixRunner(lm, batch, torch.ones_like(batch))
    corrupt_logits = _forward_last(lm, corrupt_ids)[0]  # the same path as the clean run's
    if answer_id is None:
        answer_id = int(clean_logits.argmax())
    if metric == "logit_diff":
        if foil_id is None:
            top2 = corrupt_logits.topk(2).indices.tolist()
            foil_id = int(top2[1] if top2[0] == answer_id else top2[0])
        if foil_id == answer_id:
            raise ArgumentError(f"foil is the same token as answer ({answer_id}); pick another")
    else:
        foil_id = None
    clean_value = float(_last_metric(metric, clean_logits[None], answer_id, foil_id)[0])
    corrupt_value = float(_last_metric(metric, corrupt_logits[None], answer_id, foil_id)[0])
    z_clean, z_corrupt = head_z(lm, clean_ids), head_z(lm, corrupt_ids)
    patched = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    with Scan(chosen, "patching", progress) as scan:
        for layer in scan:
            mixed = z_corrupt[layer].repeat(n_heads, 1, 1, 1)  # (H rows, L, H, D)
            rows = torch.arange(n_heads)
            mixed[rows, :, rows] = z_clean[layer][0].permute(1, 0, 2).to(mixed.dtype)
            heads = [(layer, h) for h in range(n_heads)]
            with iv.make("patch", lm, heads=heads, z_source={layer: mixed}):
                logp, _ = runner.run(layer)
            patched[layer] = _last_metric(metric, logp, answer_id, foil_id).cpu()
    return HeadPatching(
        clean_tokens=list(clean_enc.tokens),
        corrupted_tokens=list(corrupt_enc.tokens),
        metric=metric,
        answer_id=answer_id,
        foil_id=foil_id,
        clean=clean_value,
        corrupted=corrupt_value,
        patched=patched,
        normalized=normalize(patched, clean_value, corrupt_value),
        layers=chosen[: scan.done],
    )


__all__ = ["METRICS", "HeadPatching", "normalize", "patch_heads"]
