"""Timings and peak memory at Gemma-2-like and gpt-oss-like layer shapes, against SDPA.

Run: ``python -m kernels.bench_kernels --semantics [--seq 8192 32768] [--shapes gemma2 gpt_oss]
[--device cuda] [--repeats 3]`` (or ``python -m kernels.bench_semantics`` with the same flags).

Shapes (B=1, causal, one layer):

- ``gemma2``: Gemma-2-2B attention, H=8, Hkv=4, D=256, softcap 50, sliding window 4,096.
- ``gpt_oss``: gpt-oss-20b attention, H=64, Hkv=8, D=64, learned sinks, sliding window 128.

Per shape and length it prints plain SDPA (full causal: the only thing it can do, without the
softcap, window or sinks), our output-only call and our output + all statistics call
(``StatsRequest.all()``) with the shape's exact semantics, and the same statistics call without
the window (full causal, softcap and sinks kept); then the ratios to SDPA and windowed/full.
Peak memory is the growth of CUDA's max allocated bytes (on CUDA) or of the peak RSS of a
fresh subprocess (on CPU) over the inputs, for one call each.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import StatsRequest, attention


@dataclass(frozen=True)
class Shape:
    """One model's attention layer: heads, head dim and its exact attention semantics."""

    H: int
    HKV: int
    D: int
    softcap: float | None
    window: int | None
    sinks: bool


SHAPES = {
    "gemma2": Shape(H=8, HKV=4, D=256, softcap=50.0, window=4096, sinks=False),
    "gpt_oss": Shape(H=64, HKV=8, D=64, softcap=None, window=128, sinks=True),
}
CALLS = ("sdpa", "output", "stats", "stats_full")


def _inputs(s: Shape, length: int, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, s.H, length, s.D, generator=g).to(device, dtype)
    k = torch.randn(1, s.HKV, length, s.D, generator=g).to(device, dtype)
    v = torch.randn(1, s.HKV, length, s.D, generator=g).to(device, dtype)
    return q, k, v


def calls(
    s: Shape, length: int, device: str, dtype: torch.dtype, backend: str = "auto"
) -> dict[str, Callable[[], object]]:
    """The four timed calls (see the module docstring) on fresh random inputs."""
    q, k, v = _inputs(s, length, device, dtype)
    sinks = torch.linspace(-1.0, 1.0, s.H, device=device) if s.sinks else None
    exact = dict(softcap=s.softcap, window=s.window, sinks=sinks, backend=backend)
    full = {**exact, "window": None}
    every = StatsRequest.all()
    return {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "output": lambda: attention(q, k, v, **exact),
        "stats": lambda: attention(q, k, v, stats=every, **exact),
        "stats_full": lambda: attention(q, k, v, stats=every, **full),
    }


def _high_water_bytes() -> int:
    """This process's peak resident memory. ``VmHWM`` belongs to the address space, which
    ``exec`` makes anew; ``getrusage``'s ``ru_maxrss`` would start at the parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: approximate


def _child(shape: str, length: int, which: str, device: str, dtype: str) -> None:
    fn = calls(SHAPES[shape], length, device, getattr(torch, dtype))[which]
    base = _high_water_bytes()
    fn()
    print(_high_water_bytes() - base)


def peak_bytes(shape: str, length: int, which: str, device: str, dtype: torch.dtype) -> float:
    """Peak memory growth of one call over its inputs, in bytes (see the module docstring)."""
    if device.startswith("cuda"):
        fn = calls(SHAPES[shape], length, device, dtype)[which]
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    args = ["--child", shape, str(length), which, device, str(dtype).split(".")[-1]]
    out = subprocess.run(
        [sys.executable, "-m", "kernels.bench_semantics", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.split()[-1])


def run(
    shapes: list[str], lengths: list[int], repeats: int, device: str, dtype: torch.dtype,
    backend: str = "auto",
) -> list[dict[str, float | str | int]]:  # fmt: skip
    """Time and measure every shape x length; print one row each and return the rows."""
    from kernels.bench_kernels import time_interleaved

    print(f"B=1 causal, device={device}, dtype={dtype}, min of {repeats}; times in ms, MiB")
    print(
        f"{'shape':>8} {'L':>6} {'sdpa':>8} {'output':>8} {'stats':>8} {'full st':>8} "
        f"{'out/sdpa':>9} {'st/sdpa':>8} {'st/full':>8} {'MiB sdpa':>9} {'MiB st':>8} "
        f"{'MiB full':>9} {'mem st/sdpa':>11}"
    )
    rows = []
    for name in shapes:
        for length in lengths:
            t = time_interleaved(
                calls(SHAPES[name], length, device, dtype, backend), repeats, device
            )
            mem = {c: peak_bytes(name, length, c, device, dtype) / 2**20 for c in CALLS}
            row = {"shape": name, "L": length, **{f"ms_{c}": t[c] * 1e3 for c in CALLS}}
            row.update({f"mib_{c}": mem[c] for c in CALLS})
            rows.append(row)
            print(
                f"{name:>8} {length:>6} {t['sdpa'] * 1e3:>8.1f} {t['output'] * 1e3:>8.1f} "
                f"{t['stats'] * 1e3:>8.1f} {t['stats_full'] * 1e3:>8.1f} "
                f"{t['output'] / t['sdpa']:>9.2f} {t['stats'] / t['sdpa']:>8.2f} "
                f"{t['stats'] / t['stats_full']:>8.3f} {mem['sdpa']:>9.0f} {mem['stats']:>8.0f} "
                f"{mem['stats_full']:>9.0f} {mem['stats'] / max(mem['sdpa'], 1e-9):>11.2f}"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, nargs="+", default=[8192, 32768], help="key lengths")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        shape, length, which, device, dtype = args.child
        _child(shape, int(length), which, device, dtype)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    run(args.shapes, args.seq, args.repeats, args.device, getattr(torch, dtype), args.backend)


if __name__ == "__main__":
    main()
