"""Several prompts in one forward: right padding that no statistic can see, records per prompt.

Prompts of different lengths run as one batch right-padded to the longest: prompt ``b`` holds
positions ``[0, n_b)`` of row ``b`` and padding after it. Under the causal mask a real query
never sees a pad key (pad keys come after it), so only the pad *queries* could change what a
probe keeps: they would attend to the prompt's keys and add to every per-key sum. Inside
:func:`right_padded` the workbench attention path therefore gives each pad query row no
visible key at all (a ``(B, 1, Lq, 1)`` bool mask broadcast over keys, stride 0, with the
causal flag kept), so the kernels give it output 0 and statistics 0 and leave it out of each
key's count of queries that see it. :func:`split_records` then cuts the batch's records into
one :class:`~probes.records.ProbeRecords` per prompt, shaped as a one-prompt forward's
(batch 1, ``n_b`` queries and keys; pooled maps re-averaged over each prompt's own cells), so
batched statistics equal one-prompt-at-a-time statistics up to float rounding.

Right padding keeps every position (RoPE, spans, argmax indices, distances) that of the
prompt alone; it is for single forwards. Generation pads on the left (see
:mod:`workbench.generation`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace

import torch
from torch import Tensor

from probes import checks
from probes.errors import ProbeError
from probes.records import LayerRecord, ProbeRecords

_LENGTHS: ContextVar[tuple[int, ...] | None] = ContextVar("workbench_right_padding", default=None)

#: Record statistics by the length dimension(s) they index (after batch and head).
QUERY_STATS = ("entropy", "argmax", "argmax_prob", "distance", "lse", "sink_mass", "span_mass")
KEY_STATS = ("received", "sink")


@contextmanager
def right_padded(lengths: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Inside the block, row ``b`` of every forward holds a prompt of ``lengths[b]`` tokens
    followed by padding that the workbench attention path hides (see the module docstring).

    Restored on exit; per thread and per async context (a ``ContextVar``)."""
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__") or not lengths:
        raise ProbeError(f"lengths must be a non-empty list of token counts, got {lengths!r}")
    value = tuple(checks.integer(f"lengths[{i}]", n, minimum=1) for i, n in enumerate(lengths))
    token = _LENGTHS.set(value)
    try:
        yield value
    finally:
        _LENGTHS.reset(token)


def query_padding_mask(batch: int, n_queries: int, n_keys: int, device: torch.device) -> Tensor:
    """Inside :func:`right_padded`: bool ``(B, 1, Lq, Lk)`` (a stride-0 view over keys), True
    on real query rows. Raises :class:`ProbeError` when the call does not match the lengths."""
    lengths = _LENGTHS.get()
    assert lengths is not None
    if batch != len(lengths) or n_queries != n_keys or max(lengths) > n_queries:
        raise ProbeError(
            f"a right-padded batch of {len(lengths)} prompts (longest {max(lengths)} tokens) "
            f"expects one forward over (B={len(lengths)}, L >= {max(lengths)}) without a KV "
            f"cache; this attention call has B={batch}, {n_queries} queries, {n_keys} keys"
        )
    rows = torch.arange(n_queries, device=device)
    real = rows[None, :] < torch.tensor(lengths, device=device)[:, None]  # (B, Lq)
    return real[:, None, :, None].expand(batch, 1, n_queries, n_keys)


def padding_active() -> bool:
    """Whether a :func:`right_padded` block is active in this context."""
    return _LENGTHS.get() is not None


def padded_lengths() -> tuple[int, ...] | None:
    """The prompt lengths of the active :func:`right_padded` block (row ``b`` holds
    ``lengths[b]`` real tokens), or None outside one."""
    return _LENGTHS.get()


def _cut(value: Tensor | None, b: int, dims: dict[int, slice]) -> Tensor | None:
    if value is None:
        return None
    index: list[slice] = [slice(b, b + 1)] + [slice(None)] * (value.dim() - 1)
    for dim, cut in dims.items():
        index[dim] = cut
    return value[tuple(index)].clone()


def _pooled(value: Tensor, b: int, n: int, padded: int, block: int) -> Tensor:
    """One prompt's block-pooled map from the batch's: its tiles, each mean re-taken over the
    cells the prompt alone has (pad cells hold 0, so sum = mean x padded cells)."""
    from kernels.blockwise import pooled_cell_counts

    tiles = math.ceil(n / block)
    kw = {"device": value.device, "dtype": value.dtype}
    sums = (
        value[b : b + 1, :, :tiles, :tiles]
        * pooled_cell_counts(padded, padded, block, **kw)[:tiles, :tiles]
    )
    return sums / pooled_cell_counts(n, n, block, **kw)


def _cut_record(rec: LayerRecord, b: int, n: int, pooled_block: int | None) -> LayerRecord:
    if rec.query_offset != 0 or rec.n_queries != rec.n_keys:
        raise ProbeError("split_records expects the records of one forward without a KV cache")
    upto = slice(0, n)
    stats: dict[str, Tensor] = {}
    for name, value in rec.stats.items():
        if name in QUERY_STATS or name in KEY_STATS:  # (1, H, n) or (1, H, n, S)
            stats[name] = _cut(value, b, {2: upto})
        elif name == "pooled":
            if pooled_block is None:
                raise ProbeError("records hold a pooled map: give split_records its pooled_block")
            stats[name] = _pooled(value, b, n, rec.n_keys, pooled_block)
        else:
            raise ProbeError(f"split_records does not know how to cut statistic {name!r}")
    w0, w1 = rec.window
    window = (min(w0, n), min(w1, n))
    rows = slice(0, max(0, window[1] - w0))  # the map rows of window positions below n
    return replace(
        rec,
        n_queries=n,
        n_keys=n,
        window=window,
        maps=_cut(rec.maps, b, {2: rows, 3: upto}),
        q=_cut(rec.q, b, {2: upto}),
        k=_cut(rec.k, b, {2: upto}),
        v=_cut(rec.v, b, {2: upto}),
        z=_cut(rec.z, b, {2: upto}),
        stats=stats,
    )


def split_records(
    records: ProbeRecords, lengths: Sequence[int], pooled_block: int | None = None
) -> list[ProbeRecords]:
    """The records of a right-padded batch forward, one :class:`ProbeRecords` per prompt.

    Args:
        records: what a probe kept in one forward over ``(B, L)`` right-padded ids.
        lengths: ``n_b``, the real tokens of each row (``B`` of them).
        pooled_block: the statistics probe's ``pooled_block`` when it kept a pooled map.

    Returns:
        ``B`` records, each shaped as a one-prompt forward's: batch 1, ``n_b`` queries and
        keys, maps restricted to the rows of the capture window inside the prompt.
    """
    out = [ProbeRecords() for _ in lengths]
    for layer in records.layers_fired:
        for rec in records.by_layer[layer]:
            for b, n in enumerate(lengths):
                out[b].add(_cut_record(rec, b, int(n), pooled_block))
    return out


__all__ = ["padding_active", "query_padding_mask", "right_padded", "split_records"]
