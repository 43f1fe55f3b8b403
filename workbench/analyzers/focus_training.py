"""Focus directions (Zhu et al. 2025, "Focus Directions Make Your Language Models Pay More
Attention to Relevant Contexts", arXiv 2503.23306): training them and measuring their effect.

For chosen heads, a vector ``d_q`` per head added to the post-RoPE query (``q += scale * d_q``),
trained with the model frozen to maximise the log attention mass on the relevant document at
the answer rows (gold answers teacher-forced) of multi-document QA items. The paper also learns
a key direction ``d_k``; adding one vector to every key adds the same ``(q + d_q) . d_k`` to all
scores of a row and cancels in the softmax, so it is saved as zeros (the interventions'
:class:`~workbench.interventions.FocusDirections` does not apply it either).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from probes import AttentionCall
from probes.checks import integer, number
from workbench.analyzers.base import AnalyzerError, checked
from workbench.analyzers.contextual_runs import qa_accuracy, relevant_mass, with_answer
from workbench.analyzers.mdqa import EncodedItem, answer_rows, encode_item
from workbench.heads import Head
from workbench.interventions import FOCUS_SCALE, FocusDirections, FocusDirectionSet
from workbench.interventions.base import HeadLike, Intervention, normalize_heads

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


def span_log_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    rows: torch.Tensor,
    span: tuple[int, int],
    scaling: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable log attention mass on keys ``span = [a, b)`` of causal query rows.

    ``query`` (n, D) are the queries at absolute positions ``rows`` (n,), ``key`` (Lk, D);
    ``mask`` (n, Lk) optional bool (True = may attend). Returns (n,):
    ``logsumexp(s[:, a:b]) - logsumexp(s[:, visible])`` with ``s = q k^T * scaling``.
    """
    a, b = span
    scores = (query.float() @ key.float().T) * scaling
    keys = torch.arange(key.shape[0], device=key.device)
    visible = keys.view(1, -1) <= rows.view(-1, 1).to(key.device)
    if mask is not None:
        visible = visible & mask.bool()
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(scores[:, a:b], dim=-1) - torch.logsumexp(scores, dim=-1)


class _StopForward(Exception):
    """Raised after the last layer a training step needs: the rest of the forward is skipped."""


class _FocusTraining(Intervention):
    """Adds ``scale * d_q`` to the chosen heads' queries (as :class:`FocusDirections` does) and
    records, differentiably, each head's log attention mass on the relevant span at the answer
    rows: ``logsumexp(s[rows, span]) - logsumexp(s[rows, visible])``, only (rows x keys)."""

    name = "focus-training"

    def __init__(self, lm: LoadedModel, directions: dict[Head, torch.Tensor], scale: float) -> None:
        super().__init__(lm, list(directions))
        self.directions = directions
        self.scale = float(scale)
        self.last_layer = max(h.layer for h in directions)
        self.rows = torch.zeros(0, dtype=torch.long)
        self.span = (0, 0)
        self.log_mass: list[torch.Tensor] = []

    def edit(self, call: AttentionCall, heads: tuple[int, ...]) -> None:
        query = call.query.clone()
        group = call.n_heads // call.key.shape[1]
        local = self.rows - call.query_offset
        mask = None
        if call.mask is not None:
            mask = call.mask[0, 0].expand(call.n_queries, call.n_keys)[local]
        for h in heads:
            dq = self.directions[Head(call.layer, h)]
            query[:, h] = query[:, h] + self.scale * dq.to(query.dtype)
            self.log_mass.append(
                span_log_mass(
                    query[0, h, local],
                    call.key[0, h // group],
                    self.rows,
                    self.span,
                    call.scaling,
                    mask,
                )
            )
        call.query = query

    def edit_output(
        self, call: AttentionCall, heads: tuple[int, ...], output: torch.Tensor
    ) -> None:
        if call.layer == self.last_layer:
            raise _StopForward
        return None


def _as_heads(lm: LoadedModel, heads: Iterable[HeadLike]) -> list[Head]:
    """Checked heads in the order given, repeats dropped (each parsed by
    :func:`~workbench.interventions.base.normalize_heads`)."""
    out = [
        Head(layer, h)
        for item in heads
        for layer, hs in normalize_heads(lm.layout, [item]).items()
        for h in hs
    ]
    if not out:
        raise AnalyzerError("train_focus_directions needs at least one head")
    return list(dict.fromkeys(out))


def train_focus_directions(
    lm: LoadedModel,
    heads: Iterable[HeadLike],
    items: Sequence[dict[str, Any] | EncodedItem],
    steps: int = 15,
    lr: float = 0.05,
    seed: int = 0,
    *,
    scale: float = 1.0,
    history: list[float] | None = None,
    progress: bool = False,
) -> FocusDirectionSet:
    """Learn a focus direction ``d_q`` for each of ``heads`` on MDQA ``items``.

    Objective: maximise the mean over heads and answer rows of ``log`` attention mass on the
    relevant document, with the gold answer teacher-forced; model parameters frozen (their
    ``requires_grad`` restored afterwards), directions are leaf tensors initialised at zero
    and trained with Adam, one item per step in seeded order. The forward stops after the
    last layer holding a head. ``scale`` is the strength used during training (the learned
    vector is applied as ``q += scale * d_q``). Per-step losses go to ``history``. Key
    directions are zeros (softmax-invariant, see the module docstring).
    """
    steps = integer("steps", steps, minimum=1, error=AnalyzerError)
    lr = checked(number, "lr", lr, above=0)
    scale = checked(number, "scale", scale, above=0)
    head_list = _as_heads(lm, heads)
    eitems = [it if isinstance(it, EncodedItem) else encode_item(lm, it) for it in items]
    if not eitems:
        raise AnalyzerError("train_focus_directions needs at least one training item")
    gen = torch.Generator().manual_seed(seed)
    dim = lm.info.head_dim
    directions = {h: torch.zeros(dim, requires_grad=True) for h in head_list}
    opt = torch.optim.Adam(list(directions.values()), lr=lr)
    params = list(lm.model.parameters())
    flags = [p.requires_grad for p in params]
    trainer = _FocusTraining(lm, directions, scale)
    order: list[int] = []
    try:
        for p in params:
            p.requires_grad_(False)
        for step in range(steps):
            if not order:
                order = torch.randperm(len(eitems), generator=gen).tolist()
            ei = eitems[order.pop()]
            enc = with_answer(ei, ei.answer_ids)
            trainer.rows = answer_rows(ei.n_prompt, len(ei.answer_ids))
            trainer.span = ei.relevant_span
            trainer.log_mass = []
            with torch.enable_grad():
                try:
                    with trainer:
                        lm.model(input_ids=enc.input_ids.to(lm.device), use_cache=False)
                except _StopForward:
                    pass
                loss = -torch.cat(trainer.log_mass).mean()
                opt.zero_grad()
                loss.backward()
            opt.step()
            if history is not None:
                history.append(loss.item())
            if progress:
                print(f"focus step {step + 1}/{steps}: loss {loss.item():.4f}")
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return FocusDirectionSet(
        {h: (d.detach().clone(), torch.zeros(dim)) for h, d in directions.items()},
        model=lm.info.name,
    )


def focus_effect(
    lm: LoadedModel,
    directions: FocusDirectionSet,
    eitems: Sequence[EncodedItem],
    scales: Sequence[float] = (FOCUS_SCALE,),
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """QA accuracy and the focus heads' relevant-document mass without and with the
    directions at each of ``scales``, on ``eitems`` (held-out prompts)."""
    heads = [tuple(h) for h in directions.directions]
    out: dict[str, Any] = {
        "before": {
            "accuracy": qa_accuracy(lm, eitems, max_new_tokens),
            "relevant_mass": relevant_mass(lm, eitems, heads),
        }
    }
    for scale in scales:
        with FocusDirections(lm, directions, scale=scale):
            out[f"scale_{scale:g}"] = {
                "accuracy": qa_accuracy(lm, eitems, max_new_tokens),
                "relevant_mass": relevant_mass(lm, eitems, heads),
            }
    return out


__all__ = ["focus_effect", "span_log_mass", "train_focus_directions"]
