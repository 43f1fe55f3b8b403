"""Running one needle-in-a-haystack test: greedy decoding (stopping at a newline, as the
retrieval-head reference decoder does) with every head's most-attended key recorded at every
decoding step by the kernels' statistics probe (no L x L maps), and NIAH accuracy.

What ends a decode is a stop rule of :data:`STOP_RULES` (the retrieval analyzer's
``stop_tokens``): ``"newline_or_eos"`` (default) stops at any token whose text holds a newline
(``".\n"``, ``"\n\n"``...) and at the model's end-of-sequence tokens; ``"newline_token"`` is
the reference decoder's rule (nightdessert/Retrieval_Head ``decode``: ``step_token == '<0x0A>'``,
the newline token itself, spelled ``'Ċ'`` in byte-level BPE vocabularies), and an
end-of-sequence token does not stop it: it decodes on to ``max_new_tokens`` or a newline token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers import StoppingCriteria

from probes.checks import boolean
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.niah import locate_needle
from workbench.analyzers.retrieval_rule import PASS_RECALL, answered
from workbench.batching import in_order, length_batches, windowed_batches
from workbench.generation import StopAtNewline, greedy_generate

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel


BATCH = 16  # tests per batched greedy decoding (at most; "auto" sizes it from free memory)
#: How the newline token is spelled: SentencePiece's byte token, byte-level BPE's ``Ċ``.
NEWLINE_TOKENS = ("<0x0A>", "\u010a")


def newline_token_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's newline token (the one the reference decoder stops at)."""
    ids = tokenizer.convert_tokens_to_ids(list(NEWLINE_TOKENS))
    found = sorted({int(i) for i in ids if i is not None and i != tokenizer.unk_token_id})
    if not found:
        raise AnalyzerError(
            "stop_tokens='newline_token': the tokenizer has no newline token (neither '<0x0A>' "
            "nor 'Ċ'); use stop_tokens='newline_or_eos'"
        )
    return found


class StopAtNewlineToken(StoppingCriteria):
    """Stop a row once its last emitted token *is* the newline token (the reference decoder's
    ``step_token == '<0x0A>'``), not merely a token holding a newline."""

    def __init__(self, tokenizer) -> None:
        self.ids = torch.tensor(newline_token_ids(tokenizer))

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        return torch.isin(input_ids[:, -1], self.ids.to(input_ids.device))


@dataclass(frozen=True)
class StopRule:
    """What ends a needle test's greedy decode: ``newline(tokenizer)`` builds the newline
    criterion (used when ``stop_at_newline``), ``eos`` says whether end-of-sequence tokens stop."""

    newline: Callable[[Any], StoppingCriteria]
    eos: bool
    description: str


#: The retrieval analyzer's ``stop_tokens`` values.
STOP_RULES: dict[str, StopRule] = {
    "newline_or_eos": StopRule(
        StopAtNewline, True, "a token holding a newline, or an end-of-sequence token"
    ),
    "newline_token": StopRule(
        StopAtNewlineToken,
        False,
        "the newline token itself; end-of-sequence tokens do not stop (reference decoder)",
    ),
}
DEFAULT_STOP = "newline_or_eos"


def decode_greedy(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    *,
    max_new_tokens: int,
    stop_at_newline: bool = True,
    stop_tokens: str = DEFAULT_STOP,
) -> list[Tensor]:
    """New token ids of each of ``encodings`` (greedy, batched, left-padded) under the stop
    rule ``STOP_RULES[stop_tokens]`` (its newline criterion only with ``stop_at_newline``)."""
    rule = STOP_RULES[stop_tokens]
    stop = [rule.newline(lm.tokenizer)] if stop_at_newline else None
    return greedy_generate(lm, encodings, max_new_tokens=max_new_tokens, stop=stop, eos=rule.eos)


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


def run_niah_test(
    lm: LoadedModel,
    item: dict[str, Any],
    *,
    max_new_tokens: int = 24,
    record: bool = True,
    chat: bool = True,
    system: str | None = None,
    stop_at_newline: bool = True,
    stop_tokens: str = DEFAULT_STOP,
) -> NiahRun:
    """Decode one test greedily (stop rule ``STOP_RULES[stop_tokens]``); with ``record``, keep
    every head's argmax key at every step through the kernels' statistics probe (one record per
    decoding step, no L x L maps). One test of :func:`run_niah_tests`."""
    (run,) = run_niah_tests(
        lm,
        [item],
        batch_size=1,
        max_new_tokens=max_new_tokens,
        record=record,
        chat=chat,
        system=system,
        stop_at_newline=stop_at_newline,
        stop_tokens=stop_tokens,
    )
    return run


def run_niah_tests(
    lm: LoadedModel,
    items: Sequence[dict[str, Any]],
    *,
    batch_size: int = 1,
    max_new_tokens: int = 24,
    record: bool = True,
    chat: bool = True,
    system: str | None = None,
    stop_at_newline: bool = True,
    stop_tokens: str = DEFAULT_STOP,
) -> Iterator[NiahRun]:
    """Decode ``items`` greedily, up to ``batch_size`` tests of similar length in one
    left-padded batch (:func:`windowed_batches`), and yield one :class:`NiahRun` per item, in
    order, each equal to a one-test run: a row's response ends at its first stop event
    (:func:`emitted_until_stop`, the rule that ends a one-test decode), and its argmax keys at
    step ``s`` are the batch's step-``s`` record of that row shifted by its left padding.
    Every test is encoded and located before the first forward. A run is yielded as soon as
    every test before it is done, so an interrupted scan keeps a prefix of the items."""
    prepared = [encode_test(lm, item, chat, system) for item in items]
    rule = STOP_RULES[stop_tokens]
    newline = rule.newline(lm.tokenizer) if stop_at_newline else None
    eos = eos_token_ids(lm) if rule.eos else set()
    decode = {
        "max_new_tokens": max_new_tokens,
        "stop_at_newline": stop_at_newline,
        "stop_tokens": stop_tokens,
    }
    n_layers = lm.info.n_layers

    def run(chunk: list[int]) -> list[NiahRun]:
        encs = [prepared[i][0] for i in chunk]
        width = max(enc.n_tokens for enc in encs)
        recs = None
        if record:
            with lm.statistics(argmax=True, received=False, entropy=False, distance=False) as st:
                rows = decode_greedy(lm, encs, **decode)
            recs = st.records
            n_steps = min(recs.steps(layer) for layer in range(n_layers))
        else:
            rows = decode_greedy(lm, encs, **decode)
        out = []
        for b, i in enumerate(chunk):
            enc, where = prepared[i]
            emitted = emitted_until_stop(rows[b], newline, eos) if len(chunk) > 1 else rows[b]
            argmax = None
            if recs is not None:
                if n_steps < emitted.numel():
                    raise AnalyzerError(
                        f"recorded {n_steps} decoding steps for {emitted.numel()} generated tokens"
                    )
                pad = width - enc.n_tokens  # left padding: key k of the batch is key k - pad
                argmax = (
                    torch.stack(
                        [
                            torch.stack(
                                [
                                    recs[layer, s].stats["argmax"][b, :, -1]
                                    for layer in range(n_layers)
                                ]
                            )
                            for s in range(emitted.numel())
                        ]
                    )
                    - pad
                )
            response = lm.tokenizer.decode(emitted, skip_special_tokens=True).strip()
            out.append(
                NiahRun(
                    response,
                    enc.input_ids[0].cpu(),
                    emitted,
                    argmax,
                    where["needle_span"],
                    where["answer_span"],
                )
            )
        return out

    yield from in_order(windowed_batches([enc.n_tokens for enc, _ in prepared], batch_size), run)


def eos_token_ids(lm: LoadedModel) -> set[int]:
    """The end-of-sequence ids generation stops at (the generation config's, else the
    tokenizer's)."""
    ids = getattr(lm.model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = lm.tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}


def emitted_until_stop(row: Tensor, newline: StoppingCriteria | None, eos: set[int]) -> Tensor:
    """The tokens of one batch row (S,) up to and including its first stop event (an ``eos``
    id, or a token the ``newline`` criterion stops at): what the row would have emitted alone;
    after it, a batch fills the row with padding while the other rows decode on."""
    for t in range(row.numel()):
        token = int(row[t])
        if token in eos or (newline is not None and bool(newline(row[None, : t + 1], None)[0])):
            return row[: t + 1]
    return row


def niah_passes(
    lm: LoadedModel,
    items: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 24,
    chat: bool = True,
    system: str | None = None,
    stop_at_newline: bool = True,
    pass_recall: float = PASS_RECALL,
    stop_tokens: str = DEFAULT_STOP,
    stemming: bool = False,
) -> list[float]:
    """1.0 for each of ``items`` answered (ROUGE-1 recall of the answer > ``pass_recall``,
    words Porter-stemmed with ``stemming``), else 0.0: the per-item metric of the retrieval
    causal check. Decodes :data:`BATCH` tests of similar length at a time (left-padded greedy
    decoding, each row stopping under the rule ``STOP_RULES[stop_tokens]``)."""
    encs = [encode_test(lm, item, chat, system)[0] for item in items]
    out = [0.0] * len(items)
    for chunk in length_batches([enc.n_tokens for enc in encs], BATCH):
        rows = decode_greedy(
            lm,
            [encs[i] for i in chunk],
            max_new_tokens=max_new_tokens,
            stop_at_newline=stop_at_newline,
            stop_tokens=stop_tokens,
        )
        for i, row in zip(chunk, rows, strict=True):
            response = lm.tokenizer.decode(row, skip_special_tokens=True).strip()
            out[i] = float(answered(items[i]["answer"], response, pass_recall, stemming=stemming))
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
    stop_tokens: str = DEFAULT_STOP,
    stemming: bool = False,
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
        stop_tokens=stop_tokens,
        stemming=stemming,
    )
    return sum(passes) / max(len(items), 1)


__all__ = [
    "DEFAULT_STOP",
    "STOP_RULES",
    "NiahRun",
    "StopAtNewlineToken",
    "StopRule",
    "decode_greedy",
    "newline_token_ids",
    "niah_accuracy",
    "niah_passes",
    "run_niah_test",
    "run_niah_tests",
]
