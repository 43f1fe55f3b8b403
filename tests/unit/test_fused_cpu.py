"""The fused C kernel (kernels/fused_cpu.c): built here, equal to the float64 reference and to
the blockwise sweep on every semantic it serves, and out of the way when it cannot run."""

from __future__ import annotations

from dataclasses import replace

import torch

from kernels import MapRequest, StatsRequest, attention, fused_cpu
from kernels.fused_cpu_build import build, library_path
from kernels.problem import build_problem
from kernels.testing import compare_to_reference

ALL = StatsRequest(
    received=True,
    entropy=True,
    argmax=True,
    distance=True,
    pooled_block=7,
    spans=((0, 3), (5, 40), (44, 50), (60, 61)),
)


MAPS = replace(ALL, maps=MapRequest(heads=(4, 0, 4), query_window=(2, 47)))


def qkv(b, h, hkv, lq, lk, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, lq, d, generator=g),
        torch.randn(b, hkv, lk, d, generator=g),
        torch.randn(b, hkv, lk, d, generator=g),
    )


def problem(q, k, v, stats=ALL, **kw):
    args = dict(scale=None, causal=True, mask=None, score_bias=None, head_scale=None)
    return build_problem(q, k, v, stats=stats, **{**args, **kw})


def test_the_kernel_is_built_and_used_on_this_machine():
    assert fused_cpu.status() == "on", fused_cpu.status()
    q, k, v = qkv(1, 6, 2, 20, 64)
    p = problem(q, k, v)
    assert fused_cpu.fused_applicable(p)
    with fused_cpu.disabled():
        assert not fused_cpu.fused_applicable(p)
    assert fused_cpu.fused_applicable(problem(q, k, v, sinks=torch.zeros(6), window=3))
    with_maps = replace(ALL, maps=MapRequest(heads=(0,)))
    assert fused_cpu.fused_applicable(problem(q, k, v, stats=with_maps))
    for other in (
        problem(q.double(), k.double(), v.double()),  # float64 keeps the sweep
        problem(q, k, v, stats=StatsRequest()),  # output only: PyTorch's flash op
    ):
        assert not fused_cpu.fused_applicable(other)


def _every_semantic():
    pad = torch.ones(3, 1, 1, 64, dtype=torch.bool)
    pad[1, ..., :9] = False
    pad[2, ..., :63] = False  # one key left: most rows see nothing
    per_head = torch.rand(3, 6, 50, 64, generator=torch.Generator().manual_seed(1)) > 0.4
    per_head[0, 2, 7] = False  # a row with no key at all
    return [
        dict(),
        dict(causal=False),
        dict(window=9),
        dict(window=9, causal=False),
        dict(softcap=4.0, score_bias=torch.randn(3, 6, 64), head_scale=torch.linspace(-1, 2, 6)),
        dict(score_bias=torch.randn(1, 6, 64)),
        dict(mask=pad),
        dict(mask=pad, window=5),
        dict(mask=per_head),
        dict(sinks=torch.linspace(-2, 3, 6)),
        dict(sinks=torch.linspace(-2, 3, 6), window=4, mask=pad, softcap=3.0),
    ]


def test_equal_to_reference_and_sweep_on_every_semantic():
    """Batch 3, GQA 6/2, decode-like Lq < Lk, tiles of 1, 3 and the default, maps of a window
    of rows for two heads (one twice) next to every statistic: every field of
    the fused result equals the float64 reference within the suite's tolerances, and the
    blockwise sweep within 2e-5 (distances of ~30 keys carry ~1e-5 of float32 rounding in
    both)."""
    q, k, v = qkv(3, 6, 2, 50, 64)
    for kw in _every_semantic():
        for rows in (1, 3, None):
            fused = compare_to_reference(q, k, v, stats=MAPS, block_size=rows, **kw)
            with fused_cpu.disabled():
                sweep = attention(q, k, v, stats=MAPS, backend="torch", **kw)
            for name in ("maps", "output", "lse", "received", "sink", "entropy", "argmax_prob",
                         "distance", "span_mass", "pooled"):  # fmt: skip
                a, b = getattr(fused, name), getattr(sweep, name)
                fin = torch.isfinite(b)
                assert torch.equal(torch.isfinite(a), fin), (kw, rows, name)
                assert torch.allclose(a[fin], b[fin], atol=2e-5, rtol=1e-5), (kw, rows, name)
            assert torch.equal(fused.argmax, sweep.argmax), (kw, rows)


def test_argmax_is_the_first_key_among_exact_ties():
    """Identical keys give identical scores: the argmax is the first visible key, as the
    reference's torch.max; with a window, the window's first key."""
    q = torch.randn(1, 2, 6, 8)
    k = torch.ones(1, 1, 6, 8)
    v = torch.randn(1, 1, 6, 8)
    res = attention(q, k, v, stats=StatsRequest(argmax=True), backend="torch")
    assert res.argmax.tolist() == [[[0] * 6] * 2]
    res = attention(q, k, v, stats=StatsRequest(argmax=True), backend="torch", window=2)
    assert res.argmax.tolist() == [[[0, 0, 1, 2, 3, 4]] * 2]
    assert torch.allclose(res.argmax_prob[0, 0], torch.tensor([1, 0.5, 0.5, 0.5, 0.5, 0.5]))


def test_a_long_prompt_at_the_default_tiles():
    """1,500 keys (tiles of 64 rows, pooled tiles across tile edges) against the reference."""
    q, k, v = qkv(1, 4, 2, 300, 1500, d=32, seed=3)
    stats = StatsRequest(received=True, entropy=True, argmax=True, distance=True, pooled_block=64)
    compare_to_reference(q, k, v, stats=stats)
    compare_to_reference(q, k, v, stats=stats, window=200)


def test_a_failed_build_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    path, why = build()
    assert path is None and "false failed" in why
    assert not any((tmp_path / "kernels").glob("*.so"))
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert build() == (None, "no C compiler (cc or gcc) on PATH")


def test_the_library_is_named_by_its_source_and_rebuilt_after_an_edit(tmp_path, monkeypatch):
    import kernels.fused_cpu_build as fb

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    path, why = build()
    assert path is not None and path.exists(), why
    assert build() == (path, "")  # cached
    edited = tmp_path / "fused_cpu.c"
    edited.write_text(fb.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(fb, "SOURCE", edited)
    cc = fb.compiler()
    assert cc is not None and library_path(cc) != path


def test_the_kernel_cache_is_the_workbench_cache(tmp_path, monkeypatch):
    from kernels.fused_cpu_build import cache_root
    from workbench.model_files import cache_dir

    assert cache_root() == cache_dir()
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    assert cache_root() == cache_dir() == tmp_path
