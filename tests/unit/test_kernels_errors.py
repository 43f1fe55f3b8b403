"""Bad inputs to kernels.attention raise KernelInputError naming the problem and the value."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kernels import KernelInputError, MapRequest, StatsRequest, attention, available_backends


def qkv(b=1, h=6, hkv=2, lq=8, lk=None, d=16, dtype=torch.float32):
    lk = lq if lk is None else lk
    return (
        torch.randn(b, h, lq, d, dtype=dtype),
        torch.randn(b, hkv, lk, d, dtype=dtype),
        torch.randn(b, hkv, lk, d, dtype=dtype),
    )


def raises(match: str, *args, **kwargs):
    with pytest.raises(KernelInputError, match=match):
        attention(*args, **kwargs)


def test_is_a_value_error():
    assert issubclass(KernelInputError, ValueError)


def test_shape_mismatches():
    q, k, v = qkv()
    k2, v2 = torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    raises(r"batch mismatch: q has B=1, k/v have B=2", q, k2, v2)
    raises(r"head dim mismatch: q has D=16, k/v have D=8", q, k[..., :8], v[..., :8])
    raises(
        r"H=6 must be a multiple of KV heads Hkv=4",
        q,
        torch.randn(1, 4, 8, 16),
        torch.randn(1, 4, 8, 16),
    )
    raises(r"k and v shapes differ", q, k, v[:, :, :5])
    raises(r"q must be 4-D .* got shape \(6, 8, 16\)", q[0], k, v)
    raises(r"Lq <= Lk .* got Lq=8 > Lk=5", q, k[:, :, :5], v[:, :, :5])
    attention(q, k[:, :, :5], v[:, :, :5], causal=False)  # fine without causality


def test_dtypes():
    q, k, v = qkv()
    raises(r"unsupported dtype torch.int64", q.long(), k, v)
    raises(r"share one dtype.*torch.float32, torch.float16", q, k.half(), v)
    raises(r"q must be a torch.Tensor, got list", [1.0], k, v)


def test_spans():
    q, k, v = qkv()
    raises(
        r"span \(2, 9\) reaches past the keys: must lie in \[0, Lk=8\]",
        q,
        k,
        v,
        stats=StatsRequest(spans=((2, 9),)),
    )
    with pytest.raises(KernelInputError, match=r"0 <= start < end, got \(5, 5\)"):
        StatsRequest(spans=((5, 5),))
    with pytest.raises(KernelInputError, match=r"got \(6, 2\)"):
        StatsRequest(spans=((6, 2),))
    with pytest.raises(KernelInputError, match=r"got \(-1, 2\)"):
        StatsRequest(spans=((-1, 2),))


def test_maps():
    q, k, v = qkv()
    raises(
        r"map heads \[6\] out of range: there are H=6",
        q,
        k,
        v,
        stats=StatsRequest(maps=MapRequest(heads=(0, 6))),
    )
    raises(
        r"query_window \(2, 9\) reaches past the queries: Lq=8",
        q,
        k,
        v,
        stats=StatsRequest(maps=MapRequest(heads=(0,), query_window=(2, 9))),
    )
    with pytest.raises(KernelInputError, match="heads is empty"):
        MapRequest(heads=())
    with pytest.raises(KernelInputError, match=r"non-negative ints, got \(-1,\)"):
        MapRequest(heads=(-1,))
    with pytest.raises(KernelInputError, match=r"query_window .* got \(4, 4\)"):
        MapRequest(heads=(0,), query_window=(4, 4))


def test_pooled_block():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(KernelInputError, match=f"pooled_block must be an int >= 1.*{bad!r}"):
            StatsRequest(pooled_block=bad)
    with pytest.raises(KernelInputError, match="pooled_block"):
        StatsRequest.all(pooled_block=0)


def test_mask():
    q, k, v = qkv(b=2)
    raises(
        r"mask must be a bool tensor .* got dtype torch.float32",
        q,
        k,
        v,
        mask=torch.zeros(2, 1, 8, 8),
    )
    raises(
        r"mask shape \(2, 3, 8, 8\) is not broadcastable to \(B, 1 or H, Lq, Lk\)",
        q,
        k,
        v,
        mask=torch.ones(2, 3, 8, 8, dtype=torch.bool),
    )
    raises(r"mask shape \(8, 7\)", q, k, v, mask=torch.ones(8, 7, dtype=torch.bool))


def test_score_bias_and_head_scale():
    q, k, v = qkv(b=2)
    raises(
        r"score_bias must have shape \(B or 1, H, Lk\) = \(2 or 1, 6, 8\), got \(2, 6, 7\)",
        q,
        k,
        v,
        score_bias=torch.zeros(2, 6, 7),
    )
    raises(
        r"score_bias must have shape .* got \(2, 1, 6, 8\)",
        q,
        k,
        v,
        score_bias=torch.zeros(2, 1, 6, 8),
    )
    raises(
        r"score_bias contains NaN or \+inf", q, k, v, score_bias=torch.full((1, 6, 8), float("nan"))
    )
    raises(
        r"head_scale must have shape \(H,\) = \(6,\), got \(3,\)", q, k, v, head_scale=torch.ones(3)
    )
    raises(r"head_scale must be a floating tensor", q, k, v, head_scale=torch.ones(6).long())


def test_backend_and_options():
    q, k, v = qkv()
    raises(r"unknown backend 'cuda'; choose one of", q, k, v, backend="cuda")
    raises(r"block_size must be an int >= 1 or None, got 0", q, k, v, block_size=0)
    raises(r"scale must be a finite number or None, got nan", q, k, v, scale=float("nan"))
    raises(r"stats must be a StatsRequest or None", q, k, v, stats={"entropy": True})


def test_triton_unavailable_on_plain_cpu_explains_interpreter():
    assert "torch" in available_backends() and "reference" in available_backends()
    q, k, v = qkv()
    if importlib.util.find_spec("triton") is None:
        raises(r"needs the triton package", q, k, v, backend="triton")
        return
    if "triton" in available_backends("cpu"):
        pytest.skip("triton interpreter active in this process")
    raises(r"TRITON_INTERPRET=1", q, k, v, backend="triton")


def test_triton_rejects_float64():
    if "triton" not in available_backends("cpu"):
        pytest.skip("triton cannot run on CPU tensors in this process")
    q, k, v = qkv(dtype=torch.float64)
    raises(r"triton backend does not support float64", q, k, v, backend="triton")
