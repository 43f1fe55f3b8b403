"""The PyTorch path with softcap, sliding window (a band) and learned sinks, against the reference.

Every case composes the three new arguments with GQA, KV-cache decode (Lq < Lk), masks with
padding, score_bias and head_scale; block sizes below and above the window. Then: the band
really is a band (no Lq x Lk buffer or mask is built) and a window that hides nothing is exactly
no window.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from kernels import MapRequest, StatsRequest, attention
from kernels.blockwise_sweep import BlockSweep
from kernels.problem import build_problem
from kernels.testing import compare_to_reference
from tests.unit.test_kernels_blockwise import FULL as BLOCKWISE_FULL

FULL = replace(  # every statistic; spans and maps that fit Lk >= 21, Lq >= 19
    BLOCKWISE_FULL,
    spans=((0, 3), (5, 17), (2, 21)),
    maps=MapRequest(heads=(0, 5, 1), query_window=(3, 19)),
)


def qkv(b=1, h=6, hkv=2, lq=37, lk=None, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lk = lq if lk is None else lk
    q = torch.randn(b, h, lq, d, generator=g).to(dtype) * 2
    k = torch.randn(b, hkv, lk, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, lk, d, generator=g).to(dtype)
    return q, k, v


def sinks(h=6, seed=1):
    return torch.randn(h, generator=torch.Generator().manual_seed(seed)) * 2


def padded(b, lq, lk, pads):
    """(B, 1, 1, Lk) key-padding mask: the first pads[i] keys of sequence i are padding."""
    m = torch.ones(b, 1, 1, lk, dtype=torch.bool)
    for i, n in enumerate(pads):
        m[i, ..., :n] = False
    return m


SEMANTICS = [
    dict(softcap=1.5),
    dict(window=5),
    dict(sinks=sinks()),
    dict(softcap=3.0, window=9),
    dict(window=4, sinks=sinks()),
    dict(softcap=2.0, window=1, sinks=sinks()),
]


@pytest.mark.parametrize("sem", SEMANTICS)
@pytest.mark.parametrize("block_size", [None, 1, 3, 16])
def test_gqa_blocks_against_reference(sem, block_size):
    q, k, v = qkv()
    compare_to_reference(q, k, v, stats=FULL, block_size=block_size, **sem)


@pytest.mark.parametrize("sem", SEMANTICS)
def test_decode_padding_bias_head_scale(sem):
    g = torch.Generator().manual_seed(2)
    hs = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, -1.0])
    for lq in (1, 5):  # decode steps against a cache of 23 keys
        q, k, v = qkv(b=2, lq=lq, lk=23, seed=lq)
        bias = torch.randn(2, 6, 23, generator=g)
        bias[:, :, 18:20] = math.log(0.01)  # PASTA-style down-weighting
        mask = padded(2, lq, 23, [0, 4])
        kw = dict(mask=mask, score_bias=bias, head_scale=hs, **sem)
        compare_to_reference(q, k, v, stats=replace(FULL, maps=None), block_size=2, **kw)
        compare_to_reference(q, k, v, **kw)  # output only (the fused op where it can)
    q, k, v = qkv(b=2, lq=29, seed=3)
    mask = padded(2, 29, 29, [0, 6])  # rows 0-5 of sequence 1 see nothing
    per_head = torch.rand(2, 6, 29, 29, generator=g) > 0.2
    for m in (mask, per_head):
        compare_to_reference(q, k, v, mask=m, head_scale=hs, stats=FULL, block_size=7, **sem)
        compare_to_reference(q, k, v, mask=m, head_scale=hs, **sem)


@pytest.mark.parametrize("sem", SEMANTICS)
def test_non_causal(sem):
    q, k, v = qkv(b=2, lq=21, lk=26, seed=4)
    compare_to_reference(q, k, v, causal=False, stats=FULL, block_size=8, **sem)
    compare_to_reference(q, k, v, causal=False, **sem)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    q, k, v = qkv(lq=19, dtype=dtype, seed=5)
    sem = dict(softcap=2.0, window=6, sinks=sinks())
    tol = None
    if dtype != torch.float64:
        tol = dict(atol=3e-2, rtol=3e-2, stat_atol=3e-3)
    st = StatsRequest(received=True, entropy=True, distance=True)
    res = compare_to_reference(q, k, v, stats=st, tolerances=tol, **sem)
    assert res.output.dtype == dtype and res.sink_mass.dtype == res.lse.dtype
    compare_to_reference(q, k, v, tolerances=tol, window=6, sinks=sinks())  # fused op


@pytest.mark.parametrize("chunk", [None, 50])
def test_output_only_fused_op_band_and_sinks(monkeypatch, chunk):
    """Window and sinks without statistics go through the fused CPU op in band chunks."""
    import kernels.flash_cpu as fc

    if chunk is not None:
        monkeypatch.setattr(fc, "CHUNK_MASK_ELEMENTS", chunk)  # many tiny chunks
    widths = []
    real_op = fc._op()

    def spy(q, k, v, *args, **kwargs):
        widths.append((q.shape[2], k.shape[2]))
        return real_op(q, k, v, *args, **kwargs)

    monkeypatch.setattr(fc, "_op", lambda: spy)
    q, k, v = qkv(b=2, lq=37, seed=6)
    res = compare_to_reference(q, k, v, window=4, sinks=sinks())
    assert res.sink_mass is not None and all(lk <= rows + 3 for rows, lk in widths)
    compare_to_reference(q, k, v, window=4, mask=padded(2, 37, 37, [0, 5]), sinks=sinks())
    compare_to_reference(q, k, v, sinks=sinks(), score_bias=torch.randn(1, 6, 37))
    widths.clear()
    compare_to_reference(q, k, v, softcap=2.0)  # the op cannot softcap: the sweep runs
    assert widths == []


def test_the_band_never_builds_a_full_score_buffer():
    lq = lk = 300
    q, k, v = qkv(lq=lq, d=8, seed=7)
    p = build_problem(
        q, k, v, scale=None, causal=True, mask=None, score_bias=None, head_scale=None,
        stats=StatsRequest.all(), window=20, sinks=sinks(),
    )  # fmt: skip
    sweep = BlockSweep(p, 16, want_output=True, row_stats=True)
    band = p.B * p.H * 16 * (16 + 20 - 1)
    assert sweep.sbuf.numel() == band == sweep.pbuf.numel()
    assert band * 8 < p.B * p.H * 16 * lk  # a block's full key range would be 8x larger
    # and it is exact: blockwise vs reference on this long-ish band
    compare_to_reference(q, k, v, window=20, sinks=sinks(), stats=StatsRequest.all(), block_size=16)


def test_window_hiding_nothing_is_exactly_no_window():
    q, k, v = qkv(b=2, lq=5, lk=23, seed=8)
    st = replace(FULL, spans=((0, 3),), maps=MapRequest(heads=(1,)))
    for kw in (dict(), dict(softcap=2.0), dict(sinks=sinks())):
        base = attention(q, k, v, stats=st, **kw)
        for w in (23, 24, 10**6):
            res = attention(q, k, v, stats=st, window=w, **kw)
            for name in ("output", "lse", "received", "sink", "entropy", "pooled", "maps"):
                assert torch.equal(getattr(res, name), getattr(base, name)), (w, name)
        narrower = attention(q, k, v, stats=st, window=22, **kw)  # hides key 0 from row 0
        assert not torch.equal(narrower.received, base.received)


def test_sink_mass_and_rows_sum():
    """Key probabilities sum to 1 - sink_mass; more sink logit, more sink mass."""
    q, k, v = qkv(lq=17, seed=9)
    every = StatsRequest(maps=MapRequest(heads=tuple(range(6))))
    low = attention(q, k, v, sinks=torch.zeros(6), window=3, stats=every)
    high = attention(q, k, v, sinks=torch.full((6,), 3.0), window=3, stats=every)
    torch.testing.assert_close(low.maps.sum(-1), 1 - low.sink_mass.float())
    assert bool((high.sink_mass > low.sink_mass).all())
    window_rows = StatsRequest(maps=MapRequest(heads=(2, 0), query_window=(5, 17)))
    for kw in (dict(sinks=sinks(), window=3), dict(softcap=1.0, sinks=sinks(), window=3)):
        compare_to_reference(q, k, v, stats=window_rows, block_size=4, **kw)  # maps only
