"""Softcap, sliding window and learned sinks: the definitions against independent computations.

The float64 reference is checked against numbers worked out by hand and against transformers'
own eager attention functions of Gemma 2 (softcap) and gpt-oss (sinks), called on tiny random
tensors with a sliding-window mask built by transformers' ``masking_utils``. The fast
backends are then compared to the reference (tests/unit/test_kernels_band.py and the triton
file). Bad values of the three arguments raise KernelInputError.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from kernels import KernelInputError, MapRequest, StatsRequest, attention
from kernels.testing import reference_for

LN2, LN3 = math.log(2.0), math.log(3.0)


def known_problem():
    """Three positions, one head, causal, window 2, softcap 2 ln 2, sink logit 0.

    q_i = (1, 0, 0) and scale 1, so the raw score of key j is k_j[0]: 0, ln2 * ln3, 0. The cap
    maps ln2 * ln3 to 2 ln2 * tanh(ln3 / 2) = 2 ln2 * (3 - 1) / (3 + 1) = ln 2, and 0 to 0.
    Window 2: row 2 no longer sees key 0 (2 - 2 < 0 is false). With the sink (exp(0) = 1):
      row 0: keys {0}: weights (1) + sink 1       -> A = (1/2),      sink 1/2, lse ln 2
      row 1: keys {0, 1}: weights (1, 2) + 1      -> A = (1/4, 1/2), sink 1/4, lse ln 4
      row 2: keys {1, 2}: weights (2, 1) + 1      -> A = (1/2, 1/4), sink 1/4, lse ln 4
    v = identity, so the output rows are the rows of A.
    """
    q = torch.tensor([[1.0, 0.0, 0.0]] * 3)[None, None]
    k = torch.tensor([[0.0, 0.0, 0.0], [LN2 * LN3, 0.0, 0.0], [0.0, 0.0, 0.0]])[None, None]
    v = torch.eye(3)[None, None]
    kw = dict(scale=1.0, softcap=2 * LN2, window=2, sinks=torch.zeros(1))
    return q, k, v, kw


STATS = StatsRequest(received=True, entropy=True, argmax=True, distance=True, spans=((1, 3),))


@pytest.mark.parametrize(
    "backend,block", [("reference", None), ("torch", 1), ("torch", 2), ("torch", None)]
)
def test_hand_worked_example(backend, block):
    q, k, v, kw = known_problem()
    res = attention(q, k, v, stats=STATS, backend=backend, block_size=block, **kw)
    A = torch.tensor([[0.5, 0, 0], [0.25, 0.5, 0], [0, 0.5, 0.25]])

    def close(got, want):
        torch.testing.assert_close(got.double(), torch.tensor(want).double(), atol=1e-6, rtol=0)

    close(res.output[0, :, 0], A.tolist())
    close(res.lse[0, 0], [LN2, 2 * LN2, 2 * LN2])
    close(res.sink_mass[0, 0], [0.5, 0.25, 0.25])
    # entropy includes the sink column:
    # row 0 = 2 * (1/2 ln 2), rows 1, 2 = 2 * (1/4 ln 4) + 1/2 ln 2
    close(res.entropy[0, 0], [LN2, 1.5 * LN2, 1.5 * LN2])
    close(res.received[0, 0], [0.75, 1.0, 0.25])
    close(res.sink[0, 0], [0.75 / 2, 1.0 / 2, 0.25 / 1])  # n_j under the window: 2, 2, 1
    close(res.distance[0, 0], [0.0, 0.25, 0.5])
    close(res.span_mass[0, 0, :, 0], [0.0, 0.5, 0.75])
    assert res.argmax[0, 0].tolist() == [0, 1, 1]
    close(res.argmax_prob[0, 0], [0.5, 0.5, 0.5])


# -- transformers' eager functions ----------------------------------------------------------


def sliding_mask(b: int, lq: int, lk: int, window: int | None, pad=None) -> torch.Tensor:
    """transformers' bool (B, 1, Lq, Lk) mask: causal (+ sliding window) (+ left padding)."""
    from transformers.masking_utils import (
        causal_mask_function,
        sdpa_mask,
        sliding_window_causal_mask_function,
    )

    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    am = None
    if pad is not None:
        am = torch.ones(b, lk, dtype=torch.long)
        for i, n in enumerate(pad):
            am[i, :n] = 0
    return sdpa_mask(
        batch_size=b, q_length=lq, kv_length=lk, q_offset=lk - lq, mask_function=fn,
        attention_mask=am, allow_is_causal_skip=False,
    ).bool()  # fmt: skip


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def additive(mask: torch.Tensor) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, -math.inf)


@pytest.mark.parametrize(
    "lq,lk,window,pad", [(11, 11, 4, None), (3, 13, 5, None), (11, 11, 3, [0, 2])]
)
def test_reference_equals_gemma2_eager(lq, lk, window, pad):
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    b, h, hkv, d, cap = 2, 4, 2, 8, 0.7
    q, k, v = (
        rand(b, h, lq, d, seed=1) * 3,
        rand(b, hkv, lk, d, seed=2),
        rand(b, hkv, lk, d, seed=3),
    )
    mask = sliding_mask(b, lq, lk, window, pad)
    module = SimpleNamespace(num_key_value_groups=h // hkv, head_dim=d, training=False)
    out, maps = eager_attention_forward(
        module, q, k, v, additive(mask), scaling=0.3, softcap=cap
    )  # (B, Lq, H, D), (B, H, Lq, Lk)
    key_ok = None  # ours: causal and window from positions, the mask carries the padding only
    if pad is not None:
        key_ok = torch.ones(b, 1, 1, lk, dtype=torch.bool)
        for i, n in enumerate(pad):
            key_ok[i, ..., :n] = False
    kw = dict(scale=0.3, softcap=cap, window=window, mask=key_ok)
    every = StatsRequest(maps=MapRequest(heads=tuple(range(h))))
    ref = reference_for(q, k, v, stats=every, **kw)
    rows = mask.any(-1)[:, 0]  # (B, Lq) rows that see a key (eager is uniform on the others)
    r4 = rows[:, None, :, None].expand_as(maps)
    # Gemma 2's eager softmax runs in float32 (dtype=torch.float32) even for float64 inputs
    torch.testing.assert_close(ref.output[rows], out[rows], atol=1e-6, rtol=0)
    torch.testing.assert_close(ref.maps[r4], maps[r4], atol=1e-6, rtol=0)
    fast = attention(q.float(), k.float(), v.float(), stats=every, block_size=3, **kw)
    torch.testing.assert_close(fast.output[rows].double(), out[rows], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.maps[r4].double(), maps[r4], atol=1e-5, rtol=0)


@pytest.mark.parametrize("lq,lk,window", [(11, 11, None), (11, 11, 4), (2, 12, 5)])
def test_reference_equals_gpt_oss_eager(lq, lk, window):
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    b, h, hkv, d = 2, 4, 2, 8
    q, k, v = (
        rand(b, h, lq, d, seed=4) * 2,
        rand(b, hkv, lk, d, seed=5),
        rand(b, hkv, lk, d, seed=6),
    )
    sinks = rand(h, seed=7) * 2
    mask = sliding_mask(b, lq, lk, window)
    module = SimpleNamespace(num_key_value_groups=h // hkv, sinks=sinks, training=False)
    out, maps = eager_attention_forward(module, q, k, v, additive(mask), scaling=0.4)
    every = StatsRequest(entropy=True, maps=MapRequest(heads=tuple(range(h))))
    kw = dict(scale=0.4, window=window, sinks=sinks)
    ref = reference_for(q, k, v, stats=every, **kw)
    torch.testing.assert_close(ref.output, out, atol=1e-12, rtol=0)
    torch.testing.assert_close(ref.maps, maps, atol=1e-12, rtol=0)
    sink_p = 1 - maps.sum(-1)  # what eager dropped: the sink column
    torch.testing.assert_close(ref.sink_mass, sink_p, atol=1e-12, rtol=0)
    ent = -torch.special.xlogy(maps, maps).sum(-1) - torch.special.xlogy(sink_p, sink_p)
    torch.testing.assert_close(ref.entropy, ent, atol=1e-12, rtol=0)
    fast = attention(q.float(), k.float(), v.float(), stats=every, block_size=4, **kw)
    torch.testing.assert_close(fast.output.double(), out, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.sink_mass.double(), sink_p, atol=1e-5, rtol=0)


def test_pasta_bias_acts_on_the_capped_logit():
    """score_bias log(alpha) multiplies the capped probability: A' ∝ alpha * exp(cap(s))."""
    q, k, v = (
        rand(1, 2, 6, 4, seed=8).float() * 4,
        rand(1, 2, 6, 4, seed=9).float(),
        rand(1, 2, 6, 4, seed=10).float(),
    )
    bias = torch.zeros(1, 2, 6)
    bias[..., 2] = math.log(0.25)
    every = StatsRequest(maps=MapRequest(heads=(0, 1)))
    plain = attention(q, k, v, softcap=1.5, stats=every).maps.double()
    biased = attention(q, k, v, softcap=1.5, score_bias=bias, stats=every).maps.double()
    want = plain.clone()
    want[..., 2] *= 0.25
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(biased, want, atol=1e-6, rtol=0)


def test_rows_without_keys_put_all_mass_on_the_sink():
    q, k, v = (rand(2, 2, 6, 4, seed=s).float() for s in (11, 12, 13))
    mask = sliding_mask(2, 6, 6, None, pad=[0, 3])
    sinks = torch.tensor([0.5, -1.0])
    res = attention(
        q, k, v, mask=mask, sinks=sinks, window=2, stats=StatsRequest.all(pooled_block=2)
    )
    assert torch.all(res.output[1, :3] == 0)
    torch.testing.assert_close(res.lse[1, :, :3], sinks[:, None].expand(2, 3))
    assert torch.all(res.sink_mass[1, :, :3] == 1)
    for name in ("entropy", "argmax_prob", "distance"):
        assert torch.all(getattr(res, name)[1, :, :3] == 0), name
    no_sink = attention(q, k, v, mask=mask, window=2)
    assert torch.all(no_sink.lse[1, :, :3] == -math.inf) and no_sink.sink_mass is None


# -- bad inputs -------------------------------------------------------------------------------


def qkv():
    return rand(1, 4, 5, 8).float(), rand(1, 2, 5, 8).float(), rand(1, 2, 5, 8).float()


@pytest.mark.parametrize(
    "bad,match",
    [
        (0.0, r"softcap must be a finite number > 0 or None, got 0.0"),
        (-2.0, r"softcap must be a finite number > 0 or None, got -2.0"),
        (math.inf, r"softcap must be a finite number > 0 or None, got inf"),
        (math.nan, r"softcap must be a finite number > 0 or None, got nan"),
        (True, r"softcap must be a finite number > 0 or None, got True"),
        ("50", r"softcap must be a finite number > 0 or None, got '50'"),
    ],
)
def test_bad_softcap(bad, match):
    with pytest.raises(KernelInputError, match=match):
        attention(*qkv(), softcap=bad)


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "4"])
def test_bad_window(bad):
    with pytest.raises(KernelInputError, match=r"window must be an int >= 1 .* got " + repr(bad)):
        attention(*qkv(), window=bad)


def test_bad_sinks():
    q, k, v = qkv()
    for bad, match in [
        ([0.0] * 4, r"sinks must be a floating tensor of shape \(H,\) = \(4,\) or None, got \["),
        (torch.zeros(4, dtype=torch.long), r"sinks must be a floating tensor of shape \(H,\)"),
        (torch.zeros(2), r"sinks must have shape \(H,\) = \(4,\), got \(2,\)"),
        (torch.zeros(1, 4), r"sinks must have shape \(H,\) = \(4,\), got \(1, 4\)"),
        (torch.tensor([0.0, math.nan, 0.0, 0.0]), r"sinks must be finite, got \[0.0, nan"),
        (torch.tensor([0.0, math.inf, 0.0, 0.0]), r"sinks must be finite"),
        (torch.zeros(4, device="meta"), r"sinks is on meta, q on cpu"),
    ]:
        with pytest.raises(KernelInputError, match=match):
            attention(q, k, v, sinks=bad)
