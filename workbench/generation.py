"""Greedy generation: the one implementation every caller uses.

:func:`greedy_generate` decodes a batch of encoded prompts greedily (left-padded, KV cache on,
optional stop criteria) and returns the new token ids of each prompt;
:meth:`workbench.LoadedModel.generate`, the analyzers and the refusal organism's evaluation go
through it. Probes and interventions active around a call act on every decode step (they sit on
the registered attention path).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from probes.checks import boolean, integer, optional, text
from workbench.errors import PromptTooLongError, WorkbenchError

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel


class _NoEosNotice(logging.Filter):
    """Drops transformers' warning about a negative ``eos_token_id``: ``eos=False`` passes -1
    on purpose (see :func:`greedy_generate`), with an explicit pad id, so nothing can crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`eos_token_id` should consist of positive integers" not in record.getMessage()


logging.getLogger("transformers.generation.utils").addFilter(_NoEosNotice())


def pad_id(tokenizer) -> int:
    """The id used to left-pad prompts and to fill finished rows: the tokenizer's pad token,
    else its end-of-sequence token, else 0."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id or 0
    return int(pad)


def left_padded(encodings: Sequence[Encoded], pad: int) -> tuple[Tensor, Tensor]:
    """Stack encodings into left-padded ``(input_ids, attention_mask)``, both (N, max L), so
    the last position of every row is its prompt's last token."""
    width = max(e.n_tokens for e in encodings)
    ids = torch.full((len(encodings), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for row, enc in enumerate(encodings):
        n = enc.n_tokens
        ids[row, width - n :] = enc.input_ids[0]
        mask[row, width - n :] = 1
    return ids, mask


class StopAtNewline(StoppingCriteria):
    """Stop a row once its last emitted token contains a newline (as the retrieval-head
    reference decoder does, Wu et al. 2024)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        done = ["\n" in self.tokenizer.decode(row[-1:]) for row in input_ids]
        return torch.tensor(done, device=input_ids.device)


@torch.no_grad()
def greedy_generate(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    *,
    max_new_tokens: int,
    stop: Sequence[StoppingCriteria] | None = None,
    eos: bool = True,
) -> list[Tensor]:
    """Greedy continuations of ``encodings`` in one batch (left-padded, KV cache on).

    ``stop``: optional stopping criteria (e.g. :class:`StopAtNewline`). ``eos=False`` decodes
    past end-of-sequence tokens (as the retrieval reference's own loop does), for this call
    only: the model's generation config is not touched. Returns the new token
    ids of each prompt as a 1-D CPU tensor; rows that ended before the longest one are filled
    with :func:`pad_id` (a special token: decode with ``skip_special_tokens=True``).
    """
    encodings = list(encodings)
    if not encodings:
        raise WorkbenchError("greedy_generate needs at least one encoded prompt")
    max_new_tokens = integer("max_new_tokens", max_new_tokens, minimum=1)
    eos = boolean("eos", eos)
    check_generation_length(lm, max(e.n_tokens for e in encodings), max_new_tokens)
    pad = pad_id(lm.tokenizer)
    ids, mask = left_padded(encodings, pad)
    # eos_token_id=None in the call would fall back to the generation config's: an id no
    # token has (-1) is what turns end-of-sequence stopping off for this call alone.
    no_eos = {} if eos else {"eos_token_id": -1}
    out = lm.model.generate(
        input_ids=ids.to(lm.device),
        attention_mask=mask.to(lm.device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList(stop) if stop else None,
        pad_token_id=pad,
        **no_eos,
    )
    return list(out[:, ids.shape[1] :].cpu())


def check_generation_length(lm: LoadedModel, n_prompt: int, max_new_tokens: int) -> None:
    """Refuse a generation whose prompt plus new tokens would run past the model's context
    (:class:`PromptTooLongError` naming both numbers), before anything runs."""
    context = lm.info.max_context
    if n_prompt + max_new_tokens > context:
        room = context - n_prompt
        raise PromptTooLongError(
            f"max_new_tokens={max_new_tokens} plus the prompt's {n_prompt} tokens is "
            f"{n_prompt + max_new_tokens} tokens, more than {lm.info.name}'s context of "
            f"{context} tokens; ask for at most {room} new tokens"
            + ("" if room >= 1 else " (the prompt alone fills the context: shorten it)")
        )


def _prompt_list(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a non-empty list (one string is refused: it is not a list of prompts)."""
    if isinstance(prompts, (str, bytes)) or prompts is None or not hasattr(prompts, "__iter__"):
        raise WorkbenchError(
            f"prompts must be a non-empty list of strings, got {type(prompts).__name__}"
        )
    prompts = list(prompts)
    if not prompts:
        raise WorkbenchError("prompts is an empty list; give at least one prompt")
    return prompts


def encode_batch(
    lm: LoadedModel, prompts: Sequence[str], *, chat: bool = True, system: str | None = None
) -> tuple[Tensor, Tensor]:
    """Encode ``prompts`` (chat template by default) into left-padded ``(ids, mask)`` (N, L),
    so the last position of every row is its prompt's last token."""
    prompts = _prompt_list(prompts)
    encodings = [lm.encode(p, chat=chat, system=system) for p in prompts]
    return left_padded(encodings, pad_id(lm.tokenizer))


def generate_batch(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    chat: bool = True,
    system: str | None = None,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations of ``prompts`` (chat template by default), ``batch_size`` at a time
    (left-padded, KV cache), decoded without special tokens; no prompts, no texts.
    Interventions active around the call act on every step."""
    batch_size = integer("batch_size", batch_size, minimum=1)
    max_new_tokens = integer("max_new_tokens", max_new_tokens, minimum=1)
    chat = boolean("chat", chat)
    system = optional(text, "system", system, allow_empty=True)
    prompts = _prompt_list(prompts)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [
            lm.encode(p, chat=chat, system=system) for p in prompts[start : start + batch_size]
        ]
        new = greedy_generate(lm, chunk, max_new_tokens=max_new_tokens)
        out.extend(lm.tokenizer.decode(row, skip_special_tokens=True) for row in new)
    return out


__all__ = [
    "StopAtNewline",
    "encode_batch",
    "generate_batch",
    "greedy_generate",
    "left_padded",
    "pad_id",
]
