"""Side-by-side timings at SmolLM2-135M layer shapes (B=1, H=9, Hkv=3, D=64, fp32, causal).

Run: ``python -m kernels.bench_kernels [--lengths 1024 4096] [--repeats 7] [--threads N]
[--device cuda --dtype bfloat16] [--peak 32768]``.

Prints, per length, PyTorch's attention (``F.scaled_dot_product_attention`` with GQA; forced
to the FlashAttention backend on CUDA with ``--dtype bfloat16/float16``), our output-only call,
our output + all statistics call (``StatsRequest.all()``), and their ratios to SDPA. Timings
are the minimum over interleaved repeats (the machine may be shared). ``--peak L`` also runs
output + all statistics once at length L in a fresh subprocess and reports its peak RSS
growth over the inputs.

``python -m kernels.bench_kernels --semantics [--seq 8192 32768] [--shapes gemma2 gpt_oss]``
instead runs :mod:`kernels.bench_semantics`: Gemma-2-like (softcap + 4,096 window) and
gpt-oss-like (sinks + 128 window) shapes against SDPA, and windowed vs full-causal statistics.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels import StatsRequest, attention

B, H, HKV, D = 1, 9, 3, 64


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _inputs(
    length: int, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, length, D, generator=g).to(device, dtype)
    k = torch.randn(B, HKV, length, D, generator=g).to(device, dtype)
    v = torch.randn(B, HKV, length, D, generator=g).to(device, dtype)
    return q, k, v


def sdpa_baseline(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Callable[[], object]:
    """PyTorch's fastest causal attention on these inputs: FlashAttention on CUDA in 16-bit
    (keys and values repeated to the query heads beforehand, outside the timing, as the flash
    backend wants), plain SDPA with GQA otherwise."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        rep = q.shape[1] // k.shape[1]
        k_full, v_full = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)

        def flash() -> object:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return F.scaled_dot_product_attention(q, k_full, v_full, is_causal=True)

        return flash
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu"
) -> dict[str, float]:
    """Minimum wall time of each function, the functions run in turn ``repeats`` times."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, f in fns.items():
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def bench(
    length: int,
    repeats: int,
    device: str = "cpu",
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    q, k, v = _inputs(length, device, dtype)
    stats = StatsRequest.all()
    fns: dict[str, Callable[[], object]] = {
        "sdpa": sdpa_baseline(q, k, v),
        "ours_output": lambda: attention(q, k, v, backend=backend),
        "ours_all_stats": lambda: attention(q, k, v, stats=stats, backend=backend),
    }
    return time_interleaved(fns, repeats, device)


def _peak_child(length: int) -> None:
    q, k, v = _inputs(length)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    attention(q, k, v, stats=StatsRequest.all(), backend="torch")
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{(peak - base) / 1024:.0f} {dt:.1f}")


def peak_memory(length: int) -> tuple[float, float]:
    """(peak RSS growth in MiB, seconds) of one output + all-stats call, in a subprocess."""
    out = subprocess.run(
        [sys.executable, "-m", "kernels.bench_kernels", "--peak-child", str(length)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--semantics" in argv:
        from kernels.bench_semantics import main as semantics_main

        semantics_main([a for a in argv if a != "--semantics"])
        return
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="--semantics: Gemma-2 / gpt-oss shapes, see kernels.bench_semantics --help",
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--peak", type=int, default=0, help="also measure peak memory at this L")
    ap.add_argument("--peak-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peak_child:
        _peak_child(args.peak_child)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"B={B} H={H} Hkv={HKV} D={D} {args.dtype} causal, device={args.device}, "
        f"threads={torch.get_num_threads()}, min of {args.repeats}"
    )
    print(
        f"{'L':>6} {'sdpa ms':>9} {'output ms':>10} {'all-stats ms':>13} "
        f"{'output/sdpa':>12} {'stats/sdpa':>11}"
    )
    for length in args.lengths:
        t = bench(length, args.repeats, args.device, args.backend, DTYPES[args.dtype])
        print(
            f"{length:>6} {t['sdpa'] * 1e3:>9.1f} {t['ours_output'] * 1e3:>10.1f} "
            f"{t['ours_all_stats'] * 1e3:>13.1f} {t['ours_output'] / t['sdpa']:>12.2f} "
            f"{t['ours_all_stats'] / t['sdpa']:>11.2f}"
        )
    if args.peak:
        mib, secs = peak_memory(args.peak)
        inputs = (B * H + 2 * B * HKV) * args.peak * D * 4 / 2**20
        print(
            f"peak RSS growth, output + all stats at L={args.peak}: {mib:.0f} MiB "
            f"(inputs {inputs:.0f} MiB, one fp32 L x L head map {args.peak**2 * 4 / 2**30:.1f} "
            f"GiB), {secs:.1f} s"
        )


if __name__ == "__main__":
    main()
