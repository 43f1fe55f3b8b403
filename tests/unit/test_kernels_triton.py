"""The Triton path against the float64 reference, on CPU under triton's interpreter.

How the interpreter gets enabled: ``TRITON_INTERPRET=1`` only works if it is set before triton
is first imported, and in a full test session another module has usually imported triton
already (transformers does). So:

- if this process can run triton's interpreter (``TRITON_INTERPRET=1`` was set before triton's
  import, e.g. ``TRITON_INTERPRET=1 pytest tests/unit/test_kernels_triton.py``), the
  correctness tests run in-process;
- otherwise ``test_interpreter_suite_in_subprocess`` re-runs this file in a fresh interpreter
  with ``TRITON_INTERPRET=1`` and the in-process copies are skipped.

This module never modifies ``os.environ``, so it cannot switch real (GPU) triton code elsewhere
in the session into interpreter mode. The interpreter is slow: sizes are tiny (L <= 40, D=16).
Without triton installed everything here is skipped. The GPU timing test needs CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kernels import MapRequest, StatsRequest, attention, available_backends
from kernels.testing import compare_to_reference

ROOT = Path(__file__).resolve().parents[2]
_CHILD = "KERNELS_TRITON_INTERPRETER_CHILD"
HAVE_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETER_HERE = HAVE_TRITON and "triton" in available_backends("cpu")

interpreted = pytest.mark.skipif(
    not INTERPRETER_HERE,
    reason="no triton interpreter in this process: see test_interpreter_suite_in_subprocess",
)

FULL = StatsRequest(
    received=True,
    entropy=True,
    argmax=True,
    spans=((0, 3), (5, 17), (2, 30)),
    distance=True,
    pooled_block=5,
)


def qkv(b=1, h=4, hkv=2, lq=37, lk=None, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lk = lq if lk is None else lk
    return (
        torch.randn(b, h, lq, d, generator=g).to(dtype),
        torch.randn(b, hkv, lk, d, generator=g).to(dtype),
        torch.randn(b, hkv, lk, d, generator=g).to(dtype),
    )


def check(q, k, v, **kwargs):
    return compare_to_reference(q, k, v, backend="triton", **kwargs)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
def test_interpreter_suite_in_subprocess():
    if INTERPRETER_HERE:
        pytest.skip("interpreter active here: the tests below ran in-process")
    assert not os.environ.get(_CHILD), "TRITON_INTERPRET=1 did not enable the interpreter"
    env = {**os.environ, "TRITON_INTERPRET": "1", _CHILD: "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


@interpreted
def test_gqa_causal_all_stats_and_maps():
    q, k, v = qkv(lq=37)
    st = replace(FULL, maps=MapRequest(heads=(3, 0, 3), query_window=(5, 33)))
    res = check(q, k, v, stats=st)
    assert res.backend == "triton" and res.output.shape == (1, 37, 4, 16)


@interpreted
def test_mha_non_causal_rectangular_odd():
    q, k, v = qkv(h=2, hkv=2, lq=13, lk=31, seed=1)
    check(q, k, v, causal=False, stats=FULL)


@interpreted
@pytest.mark.parametrize("lq", [1, 5])
def test_decode(lq):
    q, k, v = qkv(b=2, lq=lq, lk=40, seed=lq)
    check(q, k, v, stats=replace(FULL, maps=MapRequest(heads=(1,))))


@interpreted
def test_left_padding_bias_head_scale():
    q, k, v = qkv(b=2, lq=21, seed=2)
    pos = torch.arange(21)
    mask = (pos[None, :] <= pos[:, None]).expand(2, 1, 21, 21).clone()
    mask[1, :, :, :4] = False  # rows 0-3 of sequence 1 see nothing
    bias = torch.randn(2, 4, 21)
    bias[:, :, 8:12] = -1e4
    hs = torch.tensor([1.0, 0.0, 2.0, -0.5])
    st = StatsRequest(received=True, entropy=True, argmax=True, distance=True, spans=((0, 9),))
    res = check(q, k, v, mask=mask, score_bias=bias, head_scale=hs, stats=st)
    assert torch.all(res.output[1, :4] == 0) and torch.all(res.lse[1, :, :4] == -float("inf"))
    assert torch.all(res.entropy[1, :, :4] == 0) and torch.all(res.argmax_prob[1, :, :4] == 0)


@interpreted
def test_per_head_mask_and_key_mask():
    q, k, v = qkv(lq=19, seed=3)
    g = torch.Generator().manual_seed(4)
    check(
        q,
        k,
        v,
        mask=torch.rand(1, 4, 19, 19, generator=g) > 0.3,
        stats=StatsRequest(received=True, entropy=True),
    )
    check(
        q,
        k,
        v,
        mask=torch.rand(1, 1, 1, 19, generator=g) > 0.3,
        causal=False,
        stats=StatsRequest(received=True, argmax=True),
    )


@interpreted
@pytest.mark.parametrize("b", [1, 64])
def test_pooled_edges(b):
    q, k, v = qkv(lq=17, lk=23, seed=5)
    check(q, k, v, stats=StatsRequest(pooled_block=b))


@interpreted
def test_maps_only_window():
    q, k, v = qkv(lq=37, seed=6)
    res = check(q, k, v, stats=StatsRequest(maps=MapRequest(heads=(2,), query_window=(20, 37))))
    assert res.maps.shape == (1, 1, 17, 37)


@interpreted
def test_half_inputs_and_odd_head_dim():
    q, k, v = qkv(lq=19, d=24, seed=7)
    check(q, k, v, stats=StatsRequest(entropy=True, received=True))
    q, k, v = qkv(lq=19, dtype=torch.float16, seed=8)
    res = check(
        q,
        k,
        v,
        stats=StatsRequest(entropy=True, received=True),
        tolerances=dict(atol=2e-2, rtol=2e-2, stat_atol=2e-3),
    )
    assert res.output.dtype == torch.float16


# -- softcap (Gemma 2), sliding window as a band, learned sinks (gpt-oss) -----------------------

SINKS = torch.tensor([0.5, -1.0, 2.0, 0.0])


@interpreted
def test_hand_worked_semantics_example():
    from tests.unit.test_kernels_semantics import known_problem

    q, k, v, kw = known_problem()
    res = attention(q, k, v, backend="triton", stats=StatsRequest(entropy=True), **kw)
    torch.testing.assert_close(res.sink_mass[0, 0], torch.tensor([0.5, 0.25, 0.25]))
    ln2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(res.entropy[0, 0], torch.stack([ln2, 1.5 * ln2, 1.5 * ln2]))


@interpreted
@pytest.mark.parametrize(
    "sem,block_size",
    [
        (dict(softcap=1.5, window=5, sinks=SINKS), None),  # window < BLOCK_N: a band
        (dict(window=3, sinks=SINKS), 32),  # blocks larger than the window
        (dict(softcap=2.0, window=24), 16),  # window wider than a block
    ],
)
def test_softcap_window_sinks_all_stats(sem, block_size):
    q, k, v = qkv(lq=37, seed=9)
    st = replace(FULL, maps=MapRequest(heads=(3, 0), query_window=(2, 35)))
    res = check(q, k, v, stats=st, block_size=block_size, **sem)
    assert (res.sink_mass is None) == ("sinks" not in sem)


@interpreted
def test_semantics_decode_padding_bias_head_scale():
    q, k, v = qkv(b=2, lq=3, lk=40, seed=10)
    mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    mask[1, ..., :6] = False
    bias = torch.randn(2, 4, 40, generator=torch.Generator().manual_seed(11))
    hs = torch.tensor([1.0, 0.0, 2.0, -0.5])
    kw = dict(mask=mask, score_bias=bias, head_scale=hs, softcap=3.0, window=7, sinks=SINKS)
    check(q, k, v, stats=replace(FULL, maps=MapRequest(heads=(1,))), **kw)
    check(q, k, v, causal=False, stats=StatsRequest(received=True, entropy=True), **kw)


@interpreted
def test_rows_without_keys_go_to_the_sink():
    q, k, v = qkv(b=2, lq=12, seed=12)
    mask = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    mask[1, ..., :4] = False  # rows 0-3 of sequence 1 see nothing
    st = StatsRequest(received=True, entropy=True, argmax=True, distance=True)
    res = check(q, k, v, mask=mask, window=2, sinks=SINKS, stats=st)
    assert torch.all(res.output[1, :4] == 0) and torch.all(res.sink_mass[1, :, :4] == 1)
    torch.testing.assert_close(res.lse[1, :, :4], SINKS[:, None].expand(4, 4))


@interpreted
def test_semantics_half_inputs():
    q, k, v = qkv(lq=19, dtype=torch.float16, seed=13)
    check(
        q,
        k,
        v,
        softcap=2.0,
        window=6,
        sinks=SINKS,
        stats=StatsRequest(entropy=True, received=True),
        tolerances=dict(atol=2e-2, rtol=2e-2, stat_atol=2e-3),
    )


@pytest.mark.gpu
@pytest.mark.skipif(
    not (HAVE_TRITON and torch.cuda.is_available()) or INTERPRETER_HERE,
    reason="needs CUDA and compiled (non-interpreted) triton",
)
def test_gpu_matches_torch_path_and_timing():
    import torch.nn.functional as F

    q, k, v = (t.cuda() for t in qkv(h=9, hkv=3, lq=1024, d=64))
    st = replace(StatsRequest.all(), spans=((0, 4), (100, 300)))
    tri = attention(q, k, v, stats=st, backend="triton")
    ref = attention(q, k, v, stats=st, backend="torch")
    torch.testing.assert_close(tri.output, ref.output, atol=1e-4, rtol=1e-4)
    for name in ("lse", "received", "entropy", "distance", "span_mass", "pooled"):
        torch.testing.assert_close(getattr(tri, name), getattr(ref, name), atol=1e-3, rtol=1e-3)

    q, k, v = (t.cuda().half() for t in qkv(h=9, hkv=3, lq=4096, d=64))

    def best(f, n=10):
        f()
        torch.cuda.synchronize()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return min(times)

    sdpa = best(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    out_only = best(lambda: attention(q, k, v, backend="triton"))
    all_stats = best(lambda: attention(q, k, v, stats=StatsRequest.all(), backend="triton"))
    print(
        f"\nGPU L=4096 fp16: sdpa {sdpa * 1e3:.2f} ms, triton output {out_only * 1e3:.2f} ms "
        f"({out_only / sdpa:.2f}x), output+all stats {all_stats * 1e3:.2f} ms "
        f"({all_stats / sdpa:.2f}x)"
    )
    assert all_stats < 20 * sdpa  # loose: a sanity bound, the numbers are printed above
