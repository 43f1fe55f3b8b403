"""Helpers to check a backend against the float64 reference (used by the test-suite).

``compare_to_reference`` runs :func:`kernels.attention` on the chosen backend and the float64
eager reference on the same arguments, and asserts that every requested field agrees:
output and LSE to ``atol`` (absolute), float statistics to ``rtol`` relative with an absolute
floor ``stat_atol`` (a probability mass of 1e-7 is noise, not a relative error), and argmax
exactly except where the reference's top two probabilities tie within ``tie_tol``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kernels.dispatch import attention
from kernels.problem import build_problem
from kernels.reference import reference_attention
from kernels.requests import FLOAT_STATISTICS, AttentionResult, MapRequest, StatsRequest


def reference_for(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> AttentionResult:
    """The float64 reference result (every field float64) for :func:`attention`'s arguments."""
    names = ("scale", "mask", "score_bias", "head_scale", "stats", "softcap", "window", "sinks")
    kw = {k_: kwargs.get(k_) for k_ in names}
    return reference_attention(
        build_problem(q, k, v, causal=kwargs.get("causal", True), **kw)  # type: ignore[arg-type]
    )


def _close(name: str, got: Tensor, want: Tensor, atol: float, rtol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got = got.double()
    fin = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), fin), f"{name}: finite pattern differs"
    assert torch.equal(got[~fin], want[~fin]), f"{name}: infinities differ"
    err = (got[fin] - want[fin]).abs()
    bound = atol + rtol * want[fin].abs()
    if err.numel() and bool((err > bound).any()):
        i = int((err - bound).argmax())
        raise AssertionError(
            f"{name}: max excess error {float((err - bound)[i]):.3g} "
            f"(got {float(got[fin][i]):.8g}, want {float(want[fin][i]):.8g})"
        )


def assert_close_to_reference(
    res: AttentionResult,
    ref: AttentionResult,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    stat_atol: float = 1e-6,
    tie_tol: float = 1e-6,
    full_map: Tensor | None = None,
) -> None:
    """Assert that ``res`` matches ``ref`` (see the module docstring for the tolerances).

    ``full_map``: the reference's (B, H, Lq, Lk) probabilities, used to accept argmax
    differences on near-ties; without it argmax must match exactly.
    """
    _close("output", res.output, ref.output, atol, 0.0)
    _close("lse", res.lse, ref.lse, atol, 0.0)
    for name in FLOAT_STATISTICS:
        want = getattr(ref, name)
        got = getattr(res, name)
        if want is None:
            assert got is None, f"{name} was not requested but returned"
            continue
        assert got is not None, f"{name} requested but missing"
        _close(name, got, want, stat_atol, rtol)
    if ref.argmax is not None:
        assert res.argmax is not None and res.argmax.dtype == torch.int64
        differ = res.argmax != ref.argmax
        if bool(differ.any()):
            assert full_map is not None, f"argmax differs in {int(differ.sum())} rows"
            chosen = full_map.gather(-1, res.argmax.unsqueeze(-1)).squeeze(-1)
            best = full_map.gather(-1, ref.argmax.unsqueeze(-1)).squeeze(-1)
            gap = (best - chosen)[differ]
            assert bool((gap <= tie_tol).all()), f"argmax differs beyond ties: gap {gap.max()}"


def compare_to_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    backend: str = "torch",
    tolerances: dict[str, float] | None = None,
    **kwargs: Any,
) -> AttentionResult:
    """Run ``attention(q, k, v, backend=backend, **kwargs)``, assert it matches the reference."""
    res = attention(q, k, v, backend=backend, **kwargs)
    ref = reference_for(q, k, v, **kwargs)
    full_map = None
    stats = kwargs.get("stats")
    if stats is not None and stats.argmax:
        every_head = StatsRequest(maps=MapRequest(heads=tuple(range(q.shape[1]))))
        full_map = reference_for(q, k, v, **{**kwargs, "stats": every_head}).maps
    assert_close_to_reference(res, ref, full_map=full_map, **(tolerances or {}))
    return res
