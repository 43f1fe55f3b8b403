"""Running one needle-in-a-haystack test: greedy decoding (stopping at a newline, as the
retrieval-head reference decoder does) with every head's most-attended key recorded at every
decoding step by the kernels' statistics probe (no L x L maps), and NIAH accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from probes.checks import boolean
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.niah import locate_needle
from workbench.analyzers.retrieval_rule import PASS_RECALL, answered
from workbench.generation import StopAtNewline, greedy_generate

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel


BATCH = 8  # tests per batched greedy decoding of the causal check


@dataclass
class NiahRun:
    """One needle test decoded greedily: the response, emitted ids, spans and per-step argmax."""

    response: str
    prompt_ids: Tensor  # (T,)
    emitted: Tensor  # (S,)
    argmax: Tensor | None  # (S, L, H) or None when not recorded
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]


def encode_test(
    lm: LoadedModel, item: dict[str, Any], chat: bool, system: str | None
) -> tuple[Encoded, dict[str, Any]]:
    """One NIAH item tokenized (its own ``chat`` / ``system`` fields first) with its needle
    located; no forward, so a whole test set can be checked before any runs."""
    chat = boolean("the item's 'chat' field", item.get("chat", chat))
    system = item.get("system", system)
    enc = lm.encode(item["prompt"], chat=chat, system=system)
    where = locate_needle(lm.tokenizer, enc.text, item["needle"], item.get("answer"), chat=chat)
    if where["input_ids"] != enc.input_ids[0].tolist():  # offsets must describe these tokens
        raise AnalyzerError("tokenizing with offsets gave other tokens than lm.encode")
    return enc, where


def _greedy(lm: LoadedModel, enc: Encoded, max_new_tokens: int, stop_at_newline: bool) -> Tensor:
    """New token ids (S,) of one greedy decode, stopping at a newline when asked."""
    stop = [StopAtNewline(lm.tokenizer)] if stop_at_newline else None
    (new,) = greedy_generate(lm, [enc], max_new_tokens=max_new_tokens, stop=stop)
    return new


def run_niah_test(
    lm: LoadedModel,
    item: dict[str, Any],
    *,
    max_new_tokens: int = 24,
    record: bool = True,
    chat: bool = True,
    system: str | None = None,
    stop_at_newline: bool = True,
) -> NiahRun:
    """Decode one test greedily; with ``record``, keep every head's argmax key at every step
    through the kernels' statistics probe (one record per decoding step, no L x L maps)."""
    enc, where = encode_test(lm, item, chat, system)
    argmax = None
    if record:
        with lm.statistics(argmax=True, received=False, entropy=False, distance=False) as st:
            emitted = _greedy(lm, enc, max_new_tokens, stop_at_newline)
        recs = st.records
        n_steps = min(recs.steps(layer) for layer in range(lm.info.n_layers))
        if n_steps != emitted.numel():
            raise AnalyzerError(
                f"recorded {n_steps} decoding steps for {emitted.numel()} generated tokens"
            )
        argmax = torch.stack(
            [
                torch.stack(
                    [recs[layer, s].stats["argmax"][0, :, -1] for layer in range(lm.info.n_layers)]
                )
                for s in range(n_steps)
            ]
        )
    else:
        emitted = _greedy(lm, enc, max_new_tokens, stop_at_newline)
    response = lm.tokenizer.decode(emitted, skip_special_tokens=True).strip()
    return NiahRun(
        response,
        enc.input_ids[0].cpu(),
        emitted,
        argmax,
        where["needle_span"],
        where["answer_span"],
    )


def length_batches(lengths: Sequence[int], size: int, spread: float = 1.25) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``size``, shortest first, a batch never
    holding a prompt more than ``spread`` times as long as its shortest (little padding)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
        last = batches[-1] if batches else None
        if last and len(last) < size and lengths[i] <= spread * lengths[last[0]]:
            last.append(i)
        else:
            batches.append([i])
    return batches


def niah_passes(
    lm: LoadedModel,
    items: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 24,
    chat: bool = True,
    system: str | None = None,
    stop_at_newline: bool = True,
    pass_recall: float = PASS_RECALL,
) -> list[float]:
    """1.0 for each of ``items`` answered (ROUGE-1 recall of the answer > ``pass_recall``),
    else 0.0: the per-item metric of the retrieval causal check. Decodes :data:`BATCH` tests of
    similar length at a time (left-padded greedy decoding, each row stopping at its newline)."""
    encs = [encode_test(lm, item, chat, system)[0] for item in items]
    stop = [StopAtNewline(lm.tokenizer)] if stop_at_newline else None
    out = [0.0] * len(items)
    for chunk in length_batches([enc.n_tokens for enc in encs], BATCH):
        rows = greedy_generate(
            lm, [encs[i] for i in chunk], max_new_tokens=max_new_tokens, stop=stop
        )
        for i, row in zip(chunk, rows, strict=True):
            response = lm.tokenizer.decode(row, skip_special_tokens=True).strip()
            out[i] = float(answered(items[i]["answer"], response, pass_recall))
    return out


def niah_accuracy(
    lm: LoadedModel,
    items: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 24,
    chat: bool = True,
    system: str | None = None,
    stop_at_newline: bool = True,
    pass_recall: float = PASS_RECALL,
) -> float:
    """Share of ``items`` answered (ROUGE-1 recall of the answer > ``pass_recall``)."""
    passes = niah_passes(
        lm,
        items,
        max_new_tokens=max_new_tokens,
        chat=chat,
        system=system,
        stop_at_newline=stop_at_newline,
        pass_recall=pass_recall,
    )
    return sum(passes) / max(len(items), 1)


__all__ = ["NiahRun", "length_batches", "niah_accuracy", "niah_passes", "run_niah_test"]
