"""Many prompts, few forwards: batched statistics and captures with exact per-prompt records.

:func:`run_batched` is what ``lm.run_statistics(prompts)`` and ``lm.run_capture(prompts)`` do
with a list: encode every prompt, group them into batches of similar length (longest first,
so the first batch shows at once whether memory suffices), right-pad each batch, run one
forward per batch inside :func:`probes.padding.right_padded` (pad rows are invisible to every
statistic) and cut the batch's records into one set per prompt
(:func:`probes.padding.split_records`). Results come back in the prompts' order and equal a
one-prompt-at-a-time run up to float rounding (tests/integration/test_batching.py).

``batch_size="auto"`` sizes batches from free memory (:func:`auto_batch_size`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from probes.checks import ArgumentError, describe, integer
from probes.errors import CaptureTooLargeError
from probes.memory import available_bytes
from probes.padding import right_padded, split_records
from workbench.generation import pad_id

if TYPE_CHECKING:
    from probes import HookSession, ProbeRecords
    from workbench.lm import Encoded, LoadedModel

#: Largest batch ``"auto"`` picks, whatever the memory.
MAX_AUTO_BATCH = 32
#: Share of free memory one batch's forward may take under ``"auto"``.
AUTO_MEMORY_FRACTION = 0.25


def forward_bytes_per_token(lm: LoadedModel) -> int:
    """Rough peak bytes one token adds to a forward without KV cache: its logits row, a few
    residual-stream copies and the MLP's intermediate activations (float32 or the model's
    dtype), which dominate for the models the workbench runs."""
    cfg = lm.model.config
    width = lm.model.dtype.itemsize if hasattr(lm.model, "dtype") else 4
    hidden = int(getattr(cfg, "hidden_size", 0) or lm.info.n_heads * 64)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    return 4 * vocab + width * (8 * hidden + 3 * inter)


def auto_batch_size(lm: LoadedModel, longest: int) -> int:
    """Prompts of up to ``longest`` tokens per batch so that one forward takes at most
    :data:`AUTO_MEMORY_FRACTION` of the free memory of the model's device (1 to
    :data:`MAX_AUTO_BATCH`)."""
    budget = available_bytes(lm.device) * AUTO_MEMORY_FRACTION
    per_prompt = forward_bytes_per_token(lm) * max(1, longest)
    return int(max(1, min(MAX_AUTO_BATCH, budget // per_prompt)))


def check_batch_size(batch_size: int | str) -> int | str:
    """``"auto"`` or an integer >= 1, else :class:`~probes.checks.ArgumentError`."""
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ArgumentError(
                f'batch_size must be "auto" or an integer >= 1, got {describe(batch_size)}'
            )
        return batch_size
    return integer("batch_size", batch_size, minimum=1)


def length_groups(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size``, longest first (similar
    lengths share a batch, so little is padded)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


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


def windowed_batches(
    lengths: Sequence[int], size: int, window: int | None = None, spread: float = 1.25
) -> list[list[int]]:
    """Indices ``0..n-1`` in batches of at most ``size``: each run of ``window`` consecutive
    items (default ``2 * size``) split by :func:`length_batches`, so similar lengths share a
    batch (a NIAH task lists each needle at every length: batching only neighbours gave
    batches of 3 where 16 fit) while :func:`in_order` can still hand results out a window at
    a time."""
    window = max(size, window or 2 * size)
    batches: list[list[int]] = []
    for start in range(0, len(lengths), window):
        part = lengths[start : start + window]
        batches += [[start + j for j in b] for b in length_batches(part, size, spread)]
    return batches


def in_order(
    batches: Sequence[Sequence[int]], run: Callable[[list[int]], Sequence[Any]]
) -> Iterator[Any]:
    """Run ``run(batch)`` (one result per index of the batch) for each of ``batches``, a
    partition of ``0..n-1``, and yield the results in index order, each as soon as every
    index before it is done: a per-item loop over batched work keeps its order, and an
    interruption loses only what is not yet handed out."""
    done: dict[int, Any] = {}
    next_out = 0
    for batch in batches:
        results = run(list(batch))
        if len(results) != len(batch):
            raise ValueError(f"run gave {len(results)} results for a batch of {len(batch)}")
        done.update(zip(batch, results, strict=True))
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
    if done:
        raise ValueError(f"batches are not a partition of 0..n-1: {sorted(done)} left over")


def right_pad(rows: Sequence[torch.Tensor], pad: int) -> torch.Tensor:
    """``(B, max L)`` ids, each row one of ``rows`` (token ids, ``(L,)`` or ``(1, L)``)
    followed by ``pad``: under the causal mask no real position sees the padding."""
    flat = [r.reshape(-1) for r in rows]
    ids = torch.full((len(flat), max(r.numel() for r in flat)), int(pad), dtype=torch.long)
    for i, r in enumerate(flat):
        ids[i, : r.numel()] = r
    return ids


def encode_all(lm: LoadedModel, prompts: Sequence[str | Encoded], chat: bool) -> list[Encoded]:
    """Every prompt of a list encoded and checked (its index named in an error) before any
    forward."""
    from workbench.errors import WorkbenchError

    if isinstance(prompts, (bytes, dict)) or not isinstance(prompts, Sequence):
        raise ArgumentError(
            f"prompt must be a string, an Encoded or a list of them, got {describe(prompts)}"
        )
    if not prompts:
        raise ArgumentError("the list of prompts is empty: give at least one prompt")
    encs = []
    for i, p in enumerate(prompts):
        try:
            encs.append(lm.encode(p, chat=chat))
        except WorkbenchError as exc:
            raise type(exc)(f"prompt {i}: {exc}") from None
    return encs


def run_batched(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    make_probe: Callable[[], HookSession],
    *,
    batch_size: int | str = "auto",
    pooled_block: int | None = None,
    check: Callable[[HookSession, Sequence[Encoded]], Any] | None = None,
    progress: bool | None = None,
) -> list[ProbeRecords]:
    """One probe's records per encoding, from right-padded batched forwards.

    Args:
        lm: the model.
        encodings: the prompts, already encoded (checked against the context).
        make_probe: a new probe (``Statistics`` or ``Capture``) for each batch.
        batch_size: prompts per forward, or ``"auto"`` (:func:`auto_batch_size`).
        pooled_block: the statistics probe's pooled block size, if it keeps a pooled map.
        check: ``check(probe, batch)`` before each forward (spans, memory); raises to refuse.
        progress: a progress bar over batches (default: when there is more than one).

    Returns:
        A list, in the order of ``encodings``, of records shaped as one-prompt forwards'.
    """
    from workbench.lm import kernel_errors_translated

    size = check_batch_size(batch_size)
    if not encodings:
        raise ArgumentError("prompts is empty: give at least one prompt")
    lengths = [e.n_tokens for e in encodings]
    if size == "auto":
        size = auto_batch_size(lm, max(lengths))
    groups = length_groups(lengths, int(size))
    probes_ = [make_probe() for _ in groups]  # every argument checked before any forward
    if check is not None:
        for probe, group in zip(probes_, groups, strict=True):
            check(probe, [encodings[i] for i in group])
    out: list[ProbeRecords | None] = [None] * len(encodings)
    show = len(groups) > 1 if progress is None else bool(progress)
    pad = pad_id(lm.tokenizer)
    bar = tqdm(total=len(encodings), desc="prompts", unit="prompt", disable=not show)
    with bar:
        for probe, group in zip(probes_, groups, strict=True):
            batch = [encodings[i] for i in group]
            ids = right_pad([e.input_ids for e in batch], pad).to(lm.device)
            n = [e.n_tokens for e in batch]
            with right_padded(n), probe, torch.no_grad(), kernel_errors_translated("forward"):
                lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            split = split_records(probe.records, n, pooled_block)
            for i, records in zip(group, split, strict=True):
                out[i] = records
            bar.update(len(group))
    return [r for r in out if r is not None]


def iter_batched(
    lm: LoadedModel,
    encodings: Sequence[Encoded],
    make_probe: Callable[[], HookSession],
    *,
    batch_size: int | str = "auto",
    pooled_block: int | None = None,
    check: Callable[[HookSession, Sequence[Encoded]], Any] | None = None,
) -> Iterator[tuple[Encoded, ProbeRecords]]:
    """``(encoding, records)`` per prompt, in the given order, one forward per run of
    ``batch_size`` consecutive prompts (computed when the first of them is asked for).

    What an analyzer's per-prompt loop iterates: its progress bar and Ctrl-C handling stay
    per prompt, and an interruption loses at most the batch in flight. Arguments as in
    :func:`run_batched`; every batch is checked (``check``) before the first forward."""
    size = check_batch_size(batch_size)
    encodings = list(encodings)
    if not encodings:
        return
    if size == "auto":
        size = auto_batch_size(lm, max(e.n_tokens for e in encodings))
    chunks = [encodings[i : i + int(size)] for i in range(0, len(encodings), int(size))]
    if check is not None:
        for chunk in chunks:
            check(make_probe(), chunk)
    for chunk in chunks:
        records = run_batched(
            lm, chunk, make_probe, batch_size=len(chunk), pooled_block=pooled_block, progress=False
        )
        yield from zip(chunk, records, strict=True)


def statistics_over(
    lm: LoadedModel,
    prompts: Sequence[str | Encoded],
    *,
    chat: bool = False,
    batch_size: int | str = "auto",
    stream: bool = False,
    **statistics_kwargs: Any,
) -> list[tuple[Encoded, ProbeRecords]] | Iterator[tuple[Encoded, ProbeRecords]]:
    """``lm.run_statistics`` over a list of prompts: ``(encoded, records)`` per prompt, in
    order, from right-padded batches. ``stream=True`` returns :func:`iter_batched`'s iterator
    (consecutive batches, computed as they are asked for), for per-prompt loops. The probe's
    arguments, every prompt and every span are checked before the first forward."""
    probe = lm.statistics(**statistics_kwargs)
    encs = encode_all(lm, prompts, chat)
    for enc in encs:
        probe.check_prompt(enc.n_tokens)
    kw = {"batch_size": batch_size, "pooled_block": probe.spec.pooled_block}
    if stream:
        return iter_batched(lm, encs, lambda: lm.statistics(**statistics_kwargs), **kw)
    records = run_batched(lm, encs, lambda: lm.statistics(**statistics_kwargs), **kw)
    return list(zip(encs, records, strict=True))


def captures_over(
    lm: LoadedModel,
    prompts: Sequence[str | Encoded],
    *,
    chat: bool = False,
    batch_size: int | str = "auto",
    stream: bool = False,
    **capture_kwargs: Any,
) -> list[tuple[Encoded, ProbeRecords]] | Iterator[tuple[Encoded, ProbeRecords]]:
    """``lm.run_capture`` over a list of prompts, as :func:`statistics_over`; the memory of
    every whole batch's kept tensors is checked before the first forward."""
    probe = lm.capture(**capture_kwargs)
    encs = encode_all(lm, prompts, chat)
    for enc in encs:
        probe.check_prompt(enc.n_tokens)

    def fits(cap: Any, batch: Sequence[Encoded]) -> None:
        cap.check_fits(max(e.n_tokens for e in batch), batch=len(batch))

    if check_batch_size(batch_size) == "auto":  # as many as fit, kept maps included
        longest = max(e.n_tokens for e in encs)
        batch_size = auto_batch_size(lm, longest)
        while batch_size > 1:
            try:
                probe.check_fits(longest, batch=batch_size)
                break
            except CaptureTooLargeError:
                batch_size //= 2

    kw = {"batch_size": batch_size, "check": fits}
    if stream:
        return iter_batched(lm, encs, lambda: lm.capture(**capture_kwargs), **kw)
    records = run_batched(lm, encs, lambda: lm.capture(**capture_kwargs), **kw)
    return list(zip(encs, records, strict=True))


__all__ = [
    "auto_batch_size",
    "captures_over",
    "check_batch_size",
    "encode_all",
    "forward_bytes_per_token",
    "in_order",
    "iter_batched",
    "length_batches",
    "length_groups",
    "right_pad",
    "run_batched",
    "statistics_over",
    "windowed_batches",
]
