"""The PyTorch blockwise path against the float64 eager reference (kernels/).

Every test runs twice: through the fused C kernel (:mod:`kernels.fused_cpu`, which serves
float32 CPU statistics calls) and through the blockwise PyTorch sweep it replaces.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernels import AttentionResult, MapRequest, StatsRequest, attention, fused_cpu
from kernels.testing import compare_to_reference, reference_for

ROOT = Path(__file__).resolve().parents[2]

FULL = StatsRequest(
    received=True,
    entropy=True,
    argmax=True,
    spans=((0, 3), (5, 17), (0, 1), (2, 30)),
    distance=True,
    pooled_block=5,
)


@pytest.fixture(autouse=True, params=["fused", "sweep"])
def cpu_path(request):
    """Which CPU statistics path the test exercises."""
    if request.param == "sweep":
        with fused_cpu.disabled():
            yield request.param
    else:
        assert fused_cpu.status() == "on", fused_cpu.status()
        yield request.param


def qkv(b=1, h=6, hkv=2, lq=37, lk=None, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lk = lq if lk is None else lk
    q = torch.randn(b, h, lq, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, lk, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, lk, d, generator=g).to(dtype)
    return q, k, v


def with_maps(stats: StatsRequest, heads, window=None) -> StatsRequest:
    from dataclasses import replace

    return replace(stats, maps=MapRequest(heads=tuple(heads), query_window=window))


def left_padding_mask(b: int, lq: int, lk: int, pads: list[int]) -> torch.Tensor:
    """transformers-style (B, 1, Lq, Lk) causal + left-padding bool mask."""
    pos = torch.arange(lk - lq, lk)
    m = torch.arange(lk)[None, :] <= pos[:, None]
    m = m.expand(b, 1, lq, lk).clone()
    for i, pad in enumerate(pads):
        m[i, :, :, :pad] = False
    return m


@pytest.mark.parametrize("block_size", [None, 1, 7, 16])
@pytest.mark.parametrize("h,hkv", [(6, 2), (4, 4)])
def test_gqa_and_blocks(h, hkv, block_size):
    q, k, v = qkv(h=h, hkv=hkv, lq=37)
    stats = with_maps(FULL, [0, h - 1, 1], (3, 30))
    compare_to_reference(q, k, v, stats=stats, block_size=block_size)


@pytest.mark.parametrize("lq", [37, 129])
def test_odd_lengths(lq):
    q, k, v = qkv(b=2, lq=lq, seed=lq)
    compare_to_reference(q, k, v, stats=FULL)


@pytest.mark.parametrize("lq", [1, 5])
def test_decode_against_cache(lq):
    q, k, v = qkv(b=2, lq=lq, lk=40, seed=lq)
    res = compare_to_reference(q, k, v, stats=with_maps(FULL, [2], None), block_size=2)
    assert res.output.shape == (2, lq, 6, 16)


def test_non_causal_rectangular():
    q, k, v = qkv(b=2, lq=37, lk=40)
    compare_to_reference(q, k, v, causal=False, stats=FULL, block_size=8)
    compare_to_reference(q, k, v, causal=False)  # fused-op path


def test_left_padding_gives_zero_rows():
    q, k, v = qkv(b=2, lq=37)
    mask = left_padding_mask(2, 37, 37, [0, 6])
    res = compare_to_reference(q, k, v, mask=mask, stats=with_maps(FULL, [0]), block_size=8)
    # padded query rows of the second sequence see nothing at all
    assert torch.all(res.output[1, :6] == 0)
    assert torch.all(res.lse[1, :, :6] == -math.inf)
    for name in ("entropy", "argmax", "argmax_prob", "distance"):
        assert torch.all(getattr(res, name)[1, :, :6] == 0), name
    assert torch.all(res.span_mass[1, :, :6] == 0)
    assert torch.all(res.received[1, :, :6] == 0) and torch.all(res.sink[1, :, :6] == 0)
    assert not any(torch.isnan(t).any() for t in (res.output, res.entropy, res.sink))


def test_mask_shapes_per_head_and_key_padding():
    q, k, v = qkv(b=2, lq=37)
    g = torch.Generator().manual_seed(3)
    per_head = torch.rand(2, 6, 37, 37, generator=g) > 0.3
    compare_to_reference(q, k, v, mask=per_head, stats=FULL, block_size=8)
    keys_only = torch.rand(2, 1, 1, 37, generator=g) > 0.3  # broadcast over query rows
    compare_to_reference(q, k, v, mask=keys_only, stats=FULL, block_size=8)
    compare_to_reference(q, k, v, mask=keys_only)  # output only, masked path


def test_score_bias_and_head_scale():
    q, k, v = qkv(b=2, lq=37)
    g = torch.Generator().manual_seed(5)
    bias = torch.randn(2, 6, 37, generator=g) * 3
    bias[:, :, 10:20] = -1e4  # PASTA-style strong down-weighting
    hs = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0, -1.0])
    compare_to_reference(q, k, v, score_bias=bias, head_scale=hs, stats=FULL, block_size=8)
    compare_to_reference(q, k, v, score_bias=bias[:1], head_scale=hs)  # fused-op path
    mask = left_padding_mask(2, 37, 37, [0, 4])
    compare_to_reference(q, k, v, mask=mask, score_bias=bias, head_scale=hs, stats=FULL)


def test_head_scale_scales_output_only():
    q, k, v = qkv(lq=20)
    hs = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 1.0])
    base = attention(q, k, v, stats=StatsRequest(entropy=True))
    scaled = attention(q, k, v, stats=StatsRequest(entropy=True), head_scale=hs)
    assert torch.all(scaled.output[:, :, 1] == 0)
    torch.testing.assert_close(scaled.output[:, :, 2], 2 * base.output[:, :, 2])
    torch.testing.assert_close(scaled.entropy, base.entropy)
    torch.testing.assert_close(scaled.lse, base.lse)


def test_pasta_bias_moves_mass_to_the_span():
    q, k, v = qkv(lq=30)
    span = (5, 12)
    bias = torch.zeros(1, 6, 30)
    bias[:, :, : span[0]] = math.log(0.01)  # PASTA: scale keys outside the span by alpha
    bias[:, :, span[1] :] = math.log(0.01)
    st = StatsRequest(spans=(span,))
    before = attention(q, k, v, stats=st).span_mass[..., 12:, 0]
    after = attention(q, k, v, stats=st, score_bias=bias).span_mass[..., 12:, 0]
    assert bool((after > before).all())


@pytest.mark.parametrize("b", [1, 4, 64])
def test_pooled_edges(b):
    q, k, v = qkv(lq=37, lk=41)
    compare_to_reference(q, k, v, stats=StatsRequest(pooled_block=b, received=True), block_size=9)
    res = attention(q, k, v, stats=StatsRequest(pooled_block=b))
    assert res.pooled.shape == (1, 6, math.ceil(37 / b), math.ceil(41 / b))


def test_pooled_block_one_is_the_map():
    q, k, v = qkv(lq=13)
    res = attention(q, k, v, stats=with_maps(StatsRequest(pooled_block=1), range(6)))
    torch.testing.assert_close(res.pooled, res.maps)


def test_maps_only_window_and_duplicates():
    q, k, v = qkv(b=2, lq=37)
    st = StatsRequest(maps=MapRequest(heads=(4, 1, 4), query_window=(30, 37)))
    res = compare_to_reference(q, k, v, stats=st)
    assert res.maps.shape == (2, 3, 7, 37)
    assert res.received is None and res.entropy is None
    torch.testing.assert_close(res.maps[:, 0], res.maps[:, 2])
    rows = res.maps.sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


def test_statistics_definitions_on_a_known_map():
    """One query row, three keys with scores ln 1, ln 2, ln 1 -> A = (1/4, 1/2, 1/4)."""
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[0.0, 0.0], [math.log(2.0), 0.0], [0.0, 0.0]]]])
    v = torch.eye(3)[None, None, :, :2]
    st = StatsRequest(
        received=True, entropy=True, argmax=True, distance=True, spans=((1, 3),), pooled_block=2
    )
    res = attention(q, k, v, scale=1.0, stats=st)
    a = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(res.received[0, 0], a)
    torch.testing.assert_close(res.sink[0, 0], a)  # the single query sees every key
    torch.testing.assert_close(res.entropy[0, 0, 0], -(a * a.log()).sum())
    assert res.argmax[0, 0, 0] == 1 and math.isclose(res.argmax_prob[0, 0, 0], 0.5, rel_tol=1e-6)
    torch.testing.assert_close(res.distance[0, 0, 0], torch.tensor(0.25 * 2 + 0.5 * 1))
    torch.testing.assert_close(res.span_mass[0, 0, 0, 0], torch.tensor(0.75))
    torch.testing.assert_close(res.pooled[0, 0, 0], torch.tensor([0.75 / 2, 0.25]))
    torch.testing.assert_close(res.lse[0, 0, 0], torch.tensor(math.log(4.0)))


def test_sink_score_counts_visible_queries():
    q, k, v = qkv(lq=10)
    res = attention(q, k, v, stats=StatsRequest(received=True))
    n_visible = torch.arange(10, 0, -1, dtype=torch.float32)  # T - j
    torch.testing.assert_close(res.sink, res.received / n_visible)


def test_float64_tight_and_half_inputs():
    q, k, v = qkv(b=2, lq=37, dtype=torch.float64)
    compare_to_reference(
        q, k, v, stats=FULL, tolerances=dict(atol=1e-12, rtol=1e-10, stat_atol=1e-12)
    )
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = qkv(b=2, lq=37, dtype=dtype)
        res = compare_to_reference(
            q,
            k,
            v,
            stats=FULL,
            tolerances=dict(atol=2e-2, rtol=2e-2, stat_atol=2e-3),
        )
        assert res.output.dtype == dtype and res.lse.dtype == torch.float32


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 37, 6, 16, generator=g).transpose(1, 2)  # (B, H, L, D) view
    k = torch.randn(2, 37, 2, 16, generator=g).transpose(1, 2)
    v = torch.randn(2, 37, 2, 16, generator=g).transpose(1, 2)
    compare_to_reference(q, k, v, stats=FULL, block_size=8)
    compare_to_reference(q, k, v)


def test_result_layout_and_dtypes():
    q, k, v = qkv(b=2, lq=9)
    res = attention(q, k, v, stats=StatsRequest.all(pooled_block=4), backend="torch")
    assert isinstance(res, AttentionResult) and res.backend == "torch"
    assert res.output.shape == (2, 9, 6, 16) and res.output.is_contiguous()
    assert res.lse.dtype == torch.float32 and res.argmax.dtype == torch.int64
    assert res.span_mass is None and res.maps is None
    assert StatsRequest.all().pooled_block == 64 and not StatsRequest.all().spans


def test_reference_backend_matches_reference():
    q, k, v = qkv(lq=31)
    res = attention(q, k, v, backend="reference", stats=FULL)
    ref = reference_for(q, k, v, stats=FULL)
    assert res.backend == "reference" and res.output.dtype == torch.float32
    torch.testing.assert_close(res.entropy, ref.entropy.float())


def test_auto_uses_dense_for_a_few_rows_and_torch_beyond_on_cpu():
    from kernels.dispatch import DENSE_MAX_ROWS

    q, k, v = qkv(lq=DENSE_MAX_ROWS)
    assert attention(q, k, v).backend == "dense"
    q, k, v = qkv(lq=DENSE_MAX_ROWS + 1)
    assert attention(q, k, v).backend == "torch"


@pytest.mark.parametrize("lq", [1, 3, 16])
def test_dense_decode_rows_match_blockwise_and_reference(lq):
    """A decode step (few query rows against a longer cache, GQA, every statistic): the dense
    path of ``auto`` equals the blockwise sweep and the float64 reference."""
    g = torch.Generator().manual_seed(lq)
    q = torch.randn(2, 6, lq, 16, generator=g)
    k = torch.randn(2, 2, 70, 16, generator=g)
    v = torch.randn(2, 2, 70, 16, generator=g)
    st = StatsRequest(
        received=True, entropy=True, argmax=True, distance=True, spans=((0, 5),), pooled_block=8
    )
    dense = attention(q, k, v, stats=st)
    blockwise = attention(q, k, v, stats=st, backend="torch")
    ref = reference_for(q, k, v, stats=st)
    assert dense.backend == "dense" and dense.output.dtype == torch.float32
    for name in ("output", "lse", "received", "sink", "entropy", "argmax_prob", "distance",
                 "span_mass", "pooled"):  # fmt: skip
        torch.testing.assert_close(getattr(dense, name), getattr(blockwise, name))
        torch.testing.assert_close(getattr(dense, name), getattr(ref, name).float())
    assert torch.equal(dense.argmax, ref.argmax)


PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from kernels import StatsRequest, attention
    L = int(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 9, L, 64, generator=g)
    k = torch.randn(1, 3, L, 64, generator=g)
    v = torch.randn(1, 3, L, 64, generator=g)
    attention(q[:, :, :64], k[:, :, :64], v[:, :, :64], stats=StatsRequest.all())  # warm up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = attention(q, k, v, stats=StatsRequest.all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - base) * 1024)
    """
)


def test_memory_stays_far_below_one_head_map():
    """L=8192, H=9: one fp32 head map would be 256 MiB; all stats must stay well below."""
    length = 8192
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(length)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    growth = int(out.stdout.strip().splitlines()[-1])
    one_head_map = length * length * 4
    assert growth < one_head_map / 2, f"peak RSS grew by {growth / 2**20:.0f} MiB"


@pytest.mark.parametrize("chunk", [None, 64])
def test_output_only_fused_op_paths(monkeypatch, chunk):
    """Masks, decode shapes and bias without statistics use the fused op in row chunks."""
    import kernels.flash_cpu as fc

    if chunk is not None:
        monkeypatch.setattr(fc, "CHUNK_MASK_ELEMENTS", chunk)  # many tiny chunks
    q, k, v = qkv(b=2, lq=37)
    bias = torch.randn(2, 6, 37)
    hs = torch.linspace(-1, 2, 6)
    mask = left_padding_mask(2, 37, 37, [0, 5])
    compare_to_reference(q, k, v, mask=mask)
    compare_to_reference(q, k, v, mask=mask, score_bias=bias, head_scale=hs)
    compare_to_reference(q, k, v, mask=torch.rand(2, 6, 37, 37) > 0.5, causal=False)
    q5, k5, v5 = qkv(b=2, lq=5, lk=40)
    compare_to_reference(q5, k5, v5, score_bias=torch.randn(1, 6, 40))
    compare_to_reference(q5, k5, v5, mask=left_padding_mask(2, 5, 40, [0, 3]))


def test_generic_path_without_the_fused_op(monkeypatch):
    """What runs on non-CPU devices: the blockwise sweep also computes the output alone."""
    import kernels.blockwise as bw

    monkeypatch.setattr(bw, "flash_applicable", lambda p: False)
    q, k, v = qkv(b=2, lq=37)
    mask = left_padding_mask(2, 37, 37, [0, 5])
    compare_to_reference(q, k, v, block_size=8)
    compare_to_reference(q, k, v, mask=mask, score_bias=torch.randn(2, 6, 37), block_size=8)
    st = StatsRequest(maps=MapRequest(heads=(1,), query_window=(3, 9)))
    compare_to_reference(q, k, v, stats=st, block_size=8)
