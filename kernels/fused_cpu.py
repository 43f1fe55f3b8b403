"""The fused CPU path: output, LSE and row/column statistics from one C kernel per call.

The blockwise sweep (:mod:`kernels.blockwise_sweep`) finishes each block with about ten
PyTorch ops, each a pass over a (heads x rows x keys) score buffer far larger than a core's
cache; on a 2-core CPU that costs twice PyTorch's own flash attention at 4,096 tokens. The C
kernel (``kernels/fused_cpu.c``) works on tiles of ``G x tile_rows`` rows (the query heads of
one KV head) that stay in cache: one SGEMM for the scores, three passes per row (max; exp with
the entropy and distance sums; normalise with the column sums, pooled tiles and spans), one
SGEMM with the values. The SGEMM is torch's own MKL (``libtorch_cpu``) and the threads are
torch's own OpenMP pool, ``torch.get_num_threads()`` of them.

It serves :func:`kernels.blockwise.blockwise_attention` whenever row statistics are asked on a
float32 CPU problem (maps of chosen heads alongside included); float64 problems keep the
blockwise sweep, as does every problem when the library could not be built (:func:`status`
says why). Softcaps, windows, masks, score biases, head scales and learned sinks are all
handled in the kernel. Results equal
the sweep's to float32 rounding (``tests/unit/test_fused_cpu.py`` checks both against the
float64 reference); the argmax is the first key at the maximum score.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from kernels.blockwise_buffers import BlockOutputs, allocate_outputs, max_band_width
from kernels.problem import Problem

#: Score-tile budget per thread (G x tile_rows x band x 4 bytes). Measured at H=9, Hkv=3,
#: D=64 on 2 cores (min of 3, 2026-12-03, ms for tile rows 8/16/32/64): 1,024 keys 13.7 /
#: 12.1 / 12.5 / 12.3; 4,096 keys 185 / 176 / 173 / 189 (SDPA 177); 8,192 keys 760 / 687 /
#: 672 / 701 (SDPA 605). The SGEMMs want tall tiles more than the rows want an L2-sized tile.
TILE_BYTES = 2 * 1024 * 1024
MIN_TILE_ROWS, MAX_TILE_ROWS = 8, 64

_P = ctypes.c_void_p
_I = ctypes.c_int64


class _Problem(ctypes.Structure):
    """Field-for-field mirror of ``wb_problem`` in ``fused_cpu.c``."""

    _fields_ = [
        *[(n, _I) for n in ("B", "H", "Hkv", "Lq", "Lk", "D", "causal", "window")],
        ("scale", ctypes.c_double),
        ("softcap", ctypes.c_double),
        *[(n, _P) for n in ("q", "k", "v", "bias")],
        ("bias_sb", _I),
        ("mask", _P),
        *[(n, _I) for n in ("mask_sb", "mask_sh", "mask_sq", "mask_batches", "mask_heads")],
        *[(n, _P) for n in ("head_scale", "sinks", "out", "lse", "entropy", "argmax_prob")],
        ("distance", _P),
        *[(n, _P) for n in ("argmax", "span_mass", "spans")],
        ("n_spans", _I),
        *[(n, _P) for n in ("received", "count", "pooled")],
        ("pool_block", _I),
        *[(n, _P) for n in ("maps", "map_heads")],
        *[(n, _I) for n in ("n_maps", "map_w0", "map_w1", "tile_rows", "threads")],
        ("scratch", _P),
        ("scratch_per_thread", _I),
        *[(n, _P) for n in ("rec_all", "cnt_all")],
        ("sgemm", _P),
    ]


_enabled = True


@contextmanager
def disabled() -> Iterator[None]:
    """Route every call to the blockwise sweep inside the block (tests, benchmarks)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def _sgemm_address() -> int:
    lib = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    handle = ctypes.CDLL(str(lib), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    address = ctypes.cast(handle.SGEMM, ctypes.c_void_p).value
    if not address:
        raise OSError("SGEMM resolved to NULL")
    return address


@cache
def _library() -> tuple[ctypes.CDLL | None, int, str]:
    """``(library, sgemm address, "")`` or ``(None, 0, why it is off)``; built on first use."""
    from kernels.fused_cpu_build import build

    try:
        sgemm = _sgemm_address()
    except (OSError, AttributeError) as exc:
        return None, 0, f"torch's CPU library offers no SGEMM here ({exc})"
    path, why = build()
    if path is None:
        return None, 0, why
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return None, 0, f"cannot load {path}: {exc}"
    lib.wb_fused_attention.argtypes = [ctypes.POINTER(_Problem)]
    lib.wb_fused_attention.restype = None
    return lib, sgemm, ""


def status() -> str:
    """``"on"`` or ``"off (why)"``: whether CPU statistics calls use the fused kernel."""
    lib, _, why = _library()
    return "on" if lib is not None else f"off ({why})"


def fused_applicable(p: Problem) -> bool:
    """Whether :func:`fused_sweep` serves ``p`` (see the module docstring)."""
    st = p.stats
    return (
        _enabled
        and p.q.device.type == "cpu"
        and p.q.dtype == torch.float32
        and st.row_stats
        and _library()[0] is not None
    )


def tile_rows(p: Problem) -> int:
    """Query positions per tile: the largest power of two with G x rows x band x 4 bytes
    within :data:`TILE_BYTES`, clamped to [MIN_TILE_ROWS, MAX_TILE_ROWS] and to Lq."""
    band = max_band_width(p, MAX_TILE_ROWS)
    rows = TILE_BYTES // (4 * p.group * max(band, 1))
    rows = 1 << max(0, rows.bit_length() - 1)  # a power of two
    return max(1, min(max(MIN_TILE_ROWS, min(MAX_TILE_ROWS, rows)), p.Lq))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def fused_sweep(p: Problem, rows: int | None = None) -> BlockOutputs:
    """Every output of the blockwise sweep for ``p`` (pooled as tile sums, received as column
    sums, count as visible rows per key: :func:`kernels.blockwise.blockwise_attention`
    finishes them), from one call of the C kernel; ``rows`` overrides :func:`tile_rows`."""
    lib, sgemm, _ = _library()
    assert lib is not None, "fused_sweep called while the fused kernel is off"
    st = p.stats
    o = allocate_outputs(p, want_output=True, row_stats=True)
    q, k, v = (t.contiguous() for t in (p.q, p.k, p.v))
    c = _Problem(B=p.B, H=p.H, Hkv=p.Hkv, Lq=p.Lq, Lk=p.Lk, D=p.D)
    c.causal, c.window = int(p.causal), p.window or 0
    c.scale, c.softcap = p.scale, p.softcap or 0.0
    c.q, c.k, c.v = q.data_ptr(), k.data_ptr(), v.data_ptr()
    bias = None
    if p.score_bias is not None:
        bias = p.score_bias.to(torch.float32).contiguous()
        c.bias, c.bias_sb = bias.data_ptr(), (p.H * p.Lk if bias.shape[0] > 1 else 0)
    mask = None
    if p.mask is not None:
        mask = p.mask if p.mask.stride(-1) == 1 else p.mask.contiguous()
        c.mask = mask.data_ptr()
        c.mask_sb, c.mask_sh, c.mask_sq = (
            mask.stride(d) if mask.shape[d] > 1 else 0 for d in range(3)
        )
        c.mask_batches, c.mask_heads = mask.shape[0], mask.shape[1]
    head_scale = None
    if p.head_scale is not None:
        head_scale = p.head_scale.to(torch.float32).contiguous()
        c.head_scale = head_scale.data_ptr()
    sinks = None
    if p.sinks is not None:
        sinks = p.sinks.to(torch.float32).contiguous()
        c.sinks = sinks.data_ptr()
    spans = torch.tensor(st.spans or [(0, 0)], dtype=torch.int64).contiguous()
    c.spans, c.n_spans = spans.data_ptr(), len(st.spans)
    for name in ("out", "lse", "entropy", "argmax_prob", "distance", "argmax", "span_mass"):
        setattr(c, name, _ptr(getattr(o, name)))
    c.received, c.count, c.pooled = _ptr(o.received), _ptr(o.count), _ptr(o.pooled)
    c.pool_block = st.pooled_block or 1
    map_heads = None
    if st.maps is not None:
        assert o.maps is not None
        map_heads = torch.tensor(st.maps.heads, dtype=torch.int64)
        c.maps, c.map_heads, c.n_maps = o.maps.data_ptr(), map_heads.data_ptr(), len(map_heads)
        c.map_w0, c.map_w1 = st.maps.query_window or (0, p.Lq)
    c.tile_rows = tr = min(rows or tile_rows(p), p.Lq)
    c.threads = nt = max(1, torch.get_num_threads())
    # every buffer from torch's allocator here, none from malloc in the worker threads
    n_tiles = o.pooled.shape[3] if o.pooled is not None else 0
    c.scratch_per_thread = per = p.group * tr * (2 * p.D + max_band_width(p, tr)) + n_tiles
    scratch = torch.empty(nt * per, dtype=torch.float32)
    c.scratch = scratch.data_ptr()
    sums = [None, None]
    for i, (name, dst) in enumerate((("rec_all", o.received), ("cnt_all", o.count))):
        if dst is not None:
            sums[i] = torch.zeros(nt, dst.numel(), dtype=torch.float32)
            setattr(c, name, sums[i].data_ptr())
    c.sgemm = sgemm
    lib.wb_fused_attention(ctypes.byref(c))
    del (
        q,
        k,
        v,
        bias,
        mask,
        head_scale,
        sinks,
        spans,
        map_heads,
        scratch,
        sums,
    )  # alive through the call
    return o
