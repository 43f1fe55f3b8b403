"""The refusal organism's fine-tune: deterministic setup, training examples, the training loop.

Only the decoder layers ``train_layers`` (both their attention and their MLP weights) are
trained; embeddings, the other layers and the final norm stay frozen, so the residual stream
entering the lowest trained layer is computed once per example and fed to the trained suffix
of layers only (:mod:`workbench.layer_suffix`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from workbench.analyzers.base import AnalyzerError, Progress, check_positive_int
from workbench.analyzers.refusal import training_pairs
from workbench.generation import pad_id
from workbench.layer_suffix import decoder_hidden, residual_entering
from workbench.model_parts import decoder_blocks, final_logits

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

# Defaults chosen for cost: about 150 CPU-seconds on 2 cores (prefix pass + 24 steps over the
# top 6 layers). Measured: refuses 16/16 held-out harmful and 1/16 harmless prompts (greedy,
# 8 new tokens).
DEFAULT_STEPS = 24
DEFAULT_BATCH = 8
DEFAULT_LR = 3e-4
DEFAULT_TRAIN_LAYERS = tuple(range(24, 30))
DEFAULT_RESPONSE_TOKENS = 10
#: The organism's training parameters and their defaults (the cache key holds all of them).
TRAINING_DEFAULTS: dict[str, Any] = {
    "steps": DEFAULT_STEPS,
    "seed": 0,
    "lr": DEFAULT_LR,
    "batch_size": DEFAULT_BATCH,
    "train_layers": DEFAULT_TRAIN_LAYERS,
    "response_tokens": DEFAULT_RESPONSE_TOKENS,
}

Example = tuple[Tensor, int]  # (token ids (T,), number of prompt tokens)


@contextmanager
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block, then the old setting."""
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


def training_examples(
    lm: LoadedModel, pairs: Sequence[dict[str, str]], response_tokens: int
) -> list[Example]:
    """(ids, n_prompt_tokens) per pair: the chat-templated prompt exactly as :meth:`encode`
    builds it for evaluation, then the response and the end-of-turn token, cut to their first
    ``response_tokens`` tokens (the refuse-or-answer decision is made in the first few)."""
    end = lm.tokenizer.eos_token or ""
    examples = []
    for pair in pairs:
        prompt = lm.encode(pair["prompt"], chat=True)
        reply = lm.tokenizer(pair["response"] + end, add_special_tokens=False)["input_ids"]
        reply = reply[:response_tokens]
        ids = torch.cat([prompt.input_ids[0], torch.tensor(reply, dtype=torch.long)])
        examples.append((ids, prompt.n_tokens))
    return examples


def collate(examples: Sequence[Example], pad: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ids, attention mask and labels (-100 on prompt and padding), all (N, T)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (seq, n_prompt) in enumerate(examples):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        labels[row, n_prompt : len(seq)] = seq[n_prompt:]
    return ids, mask, labels


@torch.no_grad()
def prefix_states(
    model: nn.Module, examples: Sequence[Example], start: int, pad: int, batch: int = 16
) -> list[Tensor] | None:
    """Residual stream (T, d) entering block ``start`` for each example (frozen below
    ``start``), or None when feeding it back through blocks ``start..`` does not reproduce the
    full forward. Computed in right-padded batches (exact for the real tokens under causal
    attention)."""
    states: list[Tensor] = []
    for first in range(0, len(examples), batch):
        chunk = examples[first : first + batch]
        ids, mask, _ = collate(chunk, pad)
        resid = residual_entering(model, start, ids, mask)
        states.extend(resid[row, : len(seq)] for row, (seq, _) in enumerate(chunk))
    full = decoder_hidden(model, input_ids=examples[0][0][None])
    part = decoder_hidden(model, inputs_embeds=states[0][None], start=start)
    return states if torch.allclose(full, part, atol=1e-4) else None


def _balanced_batches(labels: Sequence[str], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of example indices, half ``harmful`` and half ``harmless``, each half
    drawn from its own seeded permutation (epoch after epoch)."""
    groups = [
        [i for i, label in enumerate(labels) if label == "harmful"],
        [i for i, label in enumerate(labels) if label == "harmless"],
    ]
    gen = torch.Generator().manual_seed(seed)
    orders: list[list[int]] = [[], []]
    while True:
        picked = []
        for slot in range(batch_size):
            group, order = groups[slot % 2], orders[slot % 2]
            if not order:
                order.extend(group[j] for j in torch.randperm(len(group), generator=gen))
            picked.append(order.pop())
        yield picked


def train_refusal(
    lm: LoadedModel,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH,
    train_layers: Sequence[int] = DEFAULT_TRAIN_LAYERS,
    response_tokens: int = DEFAULT_RESPONSE_TOKENS,
    progress: Progress = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``lm.model`` on :func:`~workbench.analyzers.refusal.training_pairs`;
    ``lm`` is left untouched.

    AdamW (weight decay 0), constant ``lr``, ``steps`` steps of ``batch_size`` pairs, half
    harmful and half harmless, each half drawn from its own seeded permutation (epoch after
    epoch); loss = mean next-token cross-entropy over the first ``response_tokens`` response
    tokens (prompt tokens carry no loss). Trains every parameter (attention and MLP) of the
    decoder layers ``train_layers``; embeddings, the other layers and the final norm are frozen.
    The output of the frozen layers below the lowest trained one is computed once per example
    and cached (checked exact against a full forward). ``progress``: a tqdm bar (True), nothing
    (False) or ``progress("refusal organism", step, steps)``. Returns ``(model, log)`` with
    per-step losses and the wall time.
    """
    from tqdm.auto import tqdm

    steps = check_positive_int("steps", steps)
    batch_size = check_positive_int("batch_size", batch_size, minimum=2)
    response_tokens = check_positive_int("response_tokens", response_tokens)
    if not lr > 0:
        raise AnalyzerError(f"lr must be > 0, got {lr}")
    layers = lm.layout.check_layers(list(train_layers))
    start = time.perf_counter()
    pairs = training_pairs()
    examples = training_examples(lm, pairs, response_tokens)
    pad = pad_id(lm.tokenizer)
    model = copy.deepcopy(lm.model)
    model.eval()  # no dropout: deterministic
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = decoder_blocks(model)
    trainable = [p for i in layers for p in blocks[i].parameters()]
    for p in trainable:
        p.requires_grad_(True)
    first = min(layers)
    prefix = prefix_states(model, examples, first, pad) if first > 0 else None
    prefix_seconds = time.perf_counter() - start
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    batches = _balanced_batches([p["label"] for p in pairs], batch_size, seed)
    losses: list[float] = []
    desc = "refusal organism"
    bar = tqdm(total=steps, desc=desc, disable=callable(progress) or not progress, leave=False)
    if callable(progress):
        progress(desc, 0, steps)
    with deterministic():
        torch.manual_seed(seed)
        for step in range(1, steps + 1):
            picked = next(batches)
            ids, mask, labels = collate([examples[i] for i in picked], pad)
            if prefix is None:
                hidden = decoder_hidden(model, input_ids=ids, attention_mask=mask)
            else:
                embeds = torch.zeros(len(picked), ids.shape[1], prefix[0].shape[-1])
                for row, i in enumerate(picked):
                    embeds[row, : len(prefix[i])] = prefix[i]
                hidden = decoder_hidden(
                    model, inputs_embeds=embeds, attention_mask=mask, start=first
                )
            hidden = hidden[:, :-1]
            target = labels[:, 1:]
            keep = target != -100
            logits = final_logits(model, hidden[keep]).float()  # softcap / logit scale too
            loss = torch.nn.functional.cross_entropy(logits, target[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(round(loss.item(), 5))
            bar.update(1)
            if callable(progress):
                progress(desc, step, steps)
    bar.close()
    for p in model.parameters():
        p.requires_grad_(False)
    log = {
        "steps": steps,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "train_layers": list(layers),
        "response_tokens": response_tokens,
        "trainable_params": sum(p.numel() for p in trainable),
        "pairs": len(pairs),
        "prefix_cached": prefix is not None,
        "losses": losses,
        "prefix_seconds": round(prefix_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return model, log


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_LR",
    "DEFAULT_RESPONSE_TOKENS",
    "DEFAULT_STEPS",
    "DEFAULT_TRAIN_LAYERS",
    "TRAINING_DEFAULTS",
    "collate",
    "deterministic",
    "prefix_states",
    "train_refusal",
    "training_examples",
]
