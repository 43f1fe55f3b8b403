"""The forward passes of the function-vector analyzer (:mod:`workbench.analyzers.function_vector`).

* :func:`last_positions`: right-padded batched forwards that return, per prompt, the answer's
  log-probability and top-1 hit at the last position and, on request, every head's output ``z``
  at that position (the capture probe, ``z=True``, no maps).
* :func:`indirect_effects`: the causal indirect effect of each head (Todd et al. 2024): the
  probability of the answer token when one head's last-position output is replaced by a given
  mean, minus the probability without the patch. The patch is
  :class:`~workbench.interventions.patching.PatchHeads`. Only the last position changes, so the
  other positions come from a KV cache computed once per batch of prompts, and one one-token
  forward over the batch scores every head of a layer.
* :func:`zero_shot_effect`: zero-shot accuracy and answer probability without and with a
  function vector added (:class:`~workbench.interventions.function_vector.FunctionVector`).

Everything runs through the registered attention path; interventions active around a call apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from probes.padding import right_padded
from workbench.analyzers.base import AnalyzerError, Progress, Scan
from workbench.batching import right_pad
from workbench.generation import pad_id
from workbench.interventions.function_vector import FunctionVector
from workbench.interventions.patching import PatchHeads
from workbench.lm import kernel_errors_translated
from workbench.model_parts import cache_keyword

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel


def answer_token(lm: LoadedModel, prompt: str, answer: str) -> int:
    """The first token of ``answer`` as it is tokenized right after ``prompt`` (the reference's
    ``get_answer_id``: tokenize prompt + answer and take the first token past the prompt's).

    Raises :class:`AnalyzerError` when the prompt's tokens are not a prefix of the joined
    text's (the answer would merge with the prompt's last token) or the answer adds no token.
    """
    whole = lm.encode(prompt + answer).input_ids[0]
    alone = lm.encode(prompt).input_ids[0]
    n = int(alone.numel())
    if whole.numel() <= n or not torch.equal(whole[:n], alone):
        raise AnalyzerError(
            f"answer {answer!r} does not start a new token after the prompt ending "
            f"{prompt[-30:]!r}; give answers with a leading space, e.g. ' Paris'"
        )
    return int(whole[n])


def _forward(lm: LoadedModel, **kwargs):
    with kernel_errors_translated("forward"), torch.no_grad():
        return lm.model(**kwargs)


def _last_logits(lm: LoadedModel, ids: Tensor, last: Tensor) -> Tensor:
    """(B, V) logits at position ``last[b]`` of each row of ``ids`` (B, L); the unembedding
    runs only at those positions (``logits_to_keep``, which every transformers 5 causal LM
    takes)."""
    rows = torch.arange(ids.shape[0])
    keep, where = torch.unique(last, return_inverse=True)
    logits = _forward(lm, input_ids=ids, use_cache=False, logits_to_keep=keep.to(ids.device))
    return logits.logits[rows, where.to(ids.device)]


def _answer_stats(logits: Tensor, answers: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p(answer) (B,), top-1 hit (B,))`` in float64 from last-position logits (B, V)."""
    logp = torch.log_softmax(logits.double(), -1)
    picked = logp.gather(1, answers[:, None].to(logp.device))[:, 0]
    hit = logits.argmax(-1).to(answers.device) == answers
    return picked.cpu(), hit.double().cpu()


def last_positions(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    answer_ids: Sequence[int],
    *,
    batch_size: int = 16,
    z: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per prompt: log-probability (N,) and top-1 hit (N,) of its answer token at its last
    position, and with ``z`` every head's output there, (N, n_layers, H, D) float32 on CPU.

    Prompts run ``batch_size`` at a time, right-padded (a prompt's last position never sees the
    padding after it)."""
    n = len(encodings)
    answers = torch.as_tensor(list(answer_ids), dtype=torch.long)
    logp, hit = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    info = lm.info
    heads_z = torch.empty(n, info.n_layers, info.n_heads, info.head_dim) if z else None
    pad = pad_id(lm.tokenizer)
    for first in range(0, n, batch_size):
        rows = list(range(first, min(first + batch_size, n)))
        chunk = [encodings[i] for i in rows]
        lengths = [e.n_tokens for e in chunk]
        ids = right_pad([e.input_ids for e in chunk], pad).to(lm.device)
        last = torch.tensor(lengths) - 1
        if z:
            cap = lm.capture(maps=False, z=True)
            with right_padded(lengths), cap:
                last_logits = _last_logits(lm, ids, last)
            for layer in range(info.n_layers):
                rec = cap.records[layer].z  # (B, H, L, D)
                heads_z[rows, layer] = rec[torch.arange(len(rows)), :, last].float()
        else:
            last_logits = _last_logits(lm, ids, last)
        logp[rows], hit[rows] = _answer_stats(last_logits, answers[rows])
    return logp, hit, heads_z


class _CachedBatch:
    """Prompts whose positions before the last are cached, each row repeated ``repeat`` times
    (row ``i * repeat + r``): :meth:`answer_probs` runs only the last token, one forward of
    all rows, under whatever intervention or probe is active."""

    def __init__(
        self, lm: LoadedModel, encodings: Sequence[Encoded], answers: Tensor, repeat: int
    ) -> None:
        if any(e.n_tokens < 2 for e in encodings):
            raise AnalyzerError("indirect effects need prompts of at least 2 tokens")
        self.lm, self.repeat = lm, repeat
        lengths = torch.tensor([e.n_tokens for e in encodings])
        self.prefix = right_pad([e.input_ids[0, :-1] for e in encodings], pad_id(lm.tokenizer))
        width = self.prefix.shape[1]
        mask = (torch.arange(width)[None] < (lengths - 1)[:, None]).long()
        mask = torch.cat([mask, torch.ones(len(encodings), 1, dtype=torch.long)], 1)
        last = torch.stack([e.input_ids[0, -1] for e in encodings])[:, None]
        self.prefix_mask = mask[:, :-1]
        self.mask = mask.repeat_interleave(repeat, 0)
        self.last = last.repeat_interleave(repeat, 0)
        self.positions = (lengths - 1)[:, None].repeat_interleave(repeat, 0)
        self.answers = answers.repeat_interleave(repeat, 0)
        self.keyword = cache_keyword(lm.model)
        self._fill()

    def _fill(self) -> None:
        out = _forward(
            self.lm,
            input_ids=self.prefix.to(self.lm.device),
            attention_mask=self.prefix_mask.to(self.lm.device),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = getattr(out, self.keyword)
        if self.repeat > 1:
            self.cache.batch_repeat_interleave(self.repeat)
        self.width = self.cache.get_seq_length()

    def answer_probs(self) -> Tensor:
        """(rows,) float64 probability of each row's answer at its last position."""
        device = self.lm.device
        logits = _forward(
            self.lm,
            input_ids=self.last.to(device),
            attention_mask=self.mask.to(device),
            position_ids=self.positions.to(device),
            use_cache=True,
            **{self.keyword: self.cache},
        ).logits[:, -1]
        if getattr(self.cache, "is_croppable", False):
            self.cache.crop(-1)  # back to the prompts' prefixes
            if self.cache.get_seq_length() != self.width:
                raise AnalyzerError("the KV cache did not return to the prompts' prefixes")
        else:  # a cache that cannot be rolled back (sliding windows): compute it again
            self._fill()
        logp, _ = _answer_stats(logits, self.answers)
        return logp.exp()


def indirect_effects(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    answer_ids: Sequence[int],
    means: Tensor,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: Progress = False,
) -> tuple[Tensor, Tensor, Scan]:
    """Causal indirect effect of each head at the last position (Todd et al. 2024, Sec. 2.1).

    For prompt i (with shuffled labels, as in the paper) and head (l, h):
    ``IE = P(answer_i | z_lh(last) := means[i, l, h]) - P(answer_i)``, the probabilities of
    the answer token at the last position after the softmax. ``means``: (N, n_layers, H, D),
    the value patched into each prompt's heads (the mean over clean prompts of the prompt's
    task). ``layers``: the layers to score (default: all).

    One forward per layer scores all H heads of the layer on ``batch_size`` prompts: row
    ``(i, h)`` of a batch of ``batch_size * H`` rows patches head h with ``means[i, l, h]`` and
    every other head of the layer with its own unpatched output (recorded by the capture
    probe on the unpatched forward of the same rows, so it changes nothing); all through
    :class:`~workbench.interventions.patching.PatchHeads`.

    Returns ``(ie (N, n_layers, H) float64, NaN for layers not scored or not reached,
    base (N,) the unpatched answer probabilities, scan)``; the scan runs over layers, so
    Ctrl-C keeps every finished layer.
    """
    info = lm.info
    n, n_heads = len(encodings), info.n_heads
    if means.shape != (n, info.n_layers, n_heads, info.head_dim):
        raise AnalyzerError(
            f"means must have shape {(n, info.n_layers, n_heads, info.head_dim)}, "
            f"got {tuple(means.shape)}"
        )
    answers = torch.as_tensor(list(answer_ids), dtype=torch.long)
    layers = list(range(info.n_layers)) if layers is None else list(layers)
    chunks = [list(range(a, min(a + batch_size, n))) for a in range(0, n, batch_size)]
    batches, own, base = [], [], torch.empty(n, dtype=torch.float64)
    for rows in chunks:
        batch = _CachedBatch(lm, [encodings[i] for i in rows], answers[rows], n_heads)
        cap = lm.capture(layers=layers, maps=False, z=True)
        with cap:
            base[rows] = batch.answer_probs()[::n_heads]
        own.append({layer: cap.records[layer].z.transpose(1, 2) for layer in layers})
        batches.append(batch)
    ie = torch.full((n, info.n_layers, n_heads), float("nan"), dtype=torch.float64)
    pick = torch.arange(n_heads)
    with Scan(layers, "function_vector: layers", progress) as scan:
        for layer in scan:
            for rows, batch, z_own in zip(chunks, batches, own, strict=True):
                source = z_own[layer].clone()  # (rows * H, 1, H, D): each row's own outputs
                patched = means[rows, layer].to(source)  # (rows, H, D)
                source.view(len(rows), n_heads, 1, n_heads, -1)[:, pick, 0, pick] = patched
                with PatchHeads(lm, f"L{layer}H*", {layer: source}):
                    probs = batch.answer_probs().view(len(rows), n_heads)
                ie[rows, layer] = probs - base[rows, None]
    return ie, base, scan


def zero_shot_effect(
    lm: LoadedModel,
    splits: Mapping[str, tuple[list, list]],
    vectors: Mapping[str, Tensor],
    layer: int,
    template: Mapping[str, str],
    n: int,
    batch_size: int,
) -> dict[str, Any]:
    """Per task, on up to ``n`` held-out queries ``Q: x\\nA:``: top-1 accuracy and mean answer
    probability without (``accuracy``, ``probability``) and with the task's function vector
    added at ``layer`` (``accuracy_fv``, ``probability_fv``); ``mean`` over tasks."""
    out: dict[str, Any] = {}
    for task, (_, queries) in splits.items():
        chosen = queries[:n]
        prompts = [template["query"].format(input=x) for x, _ in chosen]
        encs = [lm.encode(p) for p in prompts]
        ids = [
            answer_token(lm, p, template["answer"].format(output=y))
            for p, (_, y) in zip(prompts, chosen, strict=True)
        ]
        logp, hit, _ = last_positions(lm, encs, ids, batch_size=batch_size)
        with FunctionVector(lm, vectors[task], layer):
            logp_fv, hit_fv, _ = last_positions(lm, encs, ids, batch_size=batch_size)
        out[task] = {
            "items": len(chosen),
            "accuracy": float(hit.mean()),
            "accuracy_fv": float(hit_fv.mean()),
            "probability": float(logp.exp().mean()),
            "probability_fv": float(logp_fv.exp().mean()),
        }
    keys = ("accuracy", "accuracy_fv", "probability", "probability_fv")
    out["mean"] = {k: sum(out[t][k] for t in splits) / len(splits) for k in keys}
    return out


__all__ = ["answer_token", "indirect_effects", "last_positions", "zero_shot_effect"]
