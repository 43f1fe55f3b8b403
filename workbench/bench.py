"""``workbench bench``: head statistics vs a plain SDPA forward, side by side in one process.

For each sequence length the same random token ids run through (1) a plain SDPA forward,
(2) the workbench attention path with nothing attached (must match SDPA's speed), (3) a forward
with every statistic of every head through the workbench kernels, and (4) an eager
forward that keeps all maps (``output_attentions=True``, what TransformerLens / nnsight / BertViz
need), skipped with the reason printed when its maps would not fit in memory. ``load=N``
repeats each length with N busy processes beside it (the loaded ratio, same run). Times are the
median of ``repeat`` runs taken alternately; memory is the peak resident set size sampled during
each run (peak allocated device memory on CUDA).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psutil
import torch

from probes.checks import integer
from probes.memory import available_bytes
from workbench.openmp import wait_policy

if TYPE_CHECKING:
    from collections.abc import Iterator

    from workbench.lm import LoadedModel

#: Where a bench run prints its rows (``print``), or None for silence.
Log = Callable[[str], object] | None

SAMPLE_SECONDS = 0.005


class PeakMemory:
    """Peak memory during a block: RSS sampled by a thread on CPU, allocator peak on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(SAMPLE_SECONDS)

    @contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        """Track the peak over the ``with`` block; read :attr:`peak` (bytes) afterwards."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self.peak = psutil.Process().memory_info().rss
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


@dataclass
class BenchRow:
    """One sequence length's measurements (seconds, megabytes)."""

    seq: int
    sdpa_s: float
    plain_s: float
    plain_ratio: float
    stats_s: float
    ratio: float
    sdpa_peak_mb: float
    stats_peak_mb: float
    mem_ratio: float
    eager_maps_s: float | None
    eager_maps_peak_mb: float | None
    eager_skipped: str | None
    load: int = 0  # busy processes of our own running beside the measurement


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """Seconds and peak memory (bytes) of one call of ``fn``."""
    meter = PeakMemory(device)
    with meter.measure():
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, meter.peak


def eager_maps_bytes(lm: LoadedModel, seq: int) -> int:
    """Bytes of all float32 maps of one forward: layers x heads x seq^2 x 4."""
    return lm.info.n_layers * lm.info.n_heads * seq * seq * 4


def bench_length(
    lm: LoadedModel, seq: int, repeat: int = 1, eager: bool = True, log: Log = print
) -> BenchRow:
    """Measure one sequence length (random ids of shape (1, seq)); see the module docstring.

    ``log`` is accepted for symmetry with :func:`run_bench` and not used.
    """
    device = lm.device
    gen = torch.Generator().manual_seed(seq)
    vocab = lm.model.config.vocab_size
    ids = torch.randint(0, vocab, (1, seq), generator=gen).to(device)
    model = lm.model
    impl = model.config._attn_implementation

    @torch.no_grad()
    def sdpa() -> None:
        model(input_ids=ids, use_cache=False)

    @torch.no_grad()
    def stats() -> None:
        with lm.statistics(
            received=True, entropy=True, argmax=True, distance=True, pooled_block=64, spans=[(0, 1)]
        ):
            model(input_ids=ids, use_cache=False)

    sdpa_runs, plain_runs, stats_runs = [], [], []
    try:
        for _ in range(repeat):
            model.set_attn_implementation("sdpa")
            sdpa_runs.append(_timed(sdpa, device))
            model.set_attn_implementation(impl)
            plain_runs.append(_timed(sdpa, device))  # workbench path, nothing attached
            stats_runs.append(_timed(stats, device))
    finally:
        model.set_attn_implementation(impl)
    sdpa_s = statistics.median(r[0] for r in sdpa_runs)
    stats_s = statistics.median(r[0] for r in stats_runs)
    plain_s = statistics.median(r[0] for r in plain_runs)
    sdpa_peak = max(r[1] for r in sdpa_runs) / 1e6
    stats_peak = max(r[1] for r in stats_runs) / 1e6

    eager_s = eager_peak = None
    skipped = None
    need = eager_maps_bytes(lm, seq)
    free = available_bytes(device)
    if not eager:
        skipped = "disabled (--no-eager)"
    elif need * 1.3 > free:
        skipped = (
            f"eager maps need {need / 1e9:.1f} GB (+ the forward), only {free / 1e9:.1f} GB free"
        )
    else:

        @torch.no_grad()
        def eager_maps() -> None:
            out = model(input_ids=ids, use_cache=False, output_attentions=True)
            assert len(out.attentions) == lm.info.n_layers

        model.set_attn_implementation("eager")
        try:
            eager_s, peak = _timed(eager_maps, device)
            eager_peak = peak / 1e6
        finally:
            model.set_attn_implementation(impl)
    return BenchRow(
        seq=seq,
        sdpa_s=round(sdpa_s, 3),
        plain_s=round(plain_s, 3),
        plain_ratio=round(plain_s / sdpa_s, 3),
        stats_s=round(stats_s, 3),
        ratio=round(stats_s / sdpa_s, 3),
        sdpa_peak_mb=round(sdpa_peak, 1),
        stats_peak_mb=round(stats_peak, 1),
        mem_ratio=round(stats_peak / sdpa_peak, 3),
        eager_maps_s=None if eager_s is None else round(eager_s, 3),
        eager_maps_peak_mb=None if eager_peak is None else round(eager_peak, 1),
        eager_skipped=skipped,
    )


def format_row(row: BenchRow) -> str:
    """One printed line of a :class:`BenchRow`."""
    eager = (
        f"eager+maps {row.eager_maps_s:7.2f} s / {row.eager_maps_peak_mb:8.0f} MB"
        if row.eager_maps_s is not None
        else f"eager+maps skipped: {row.eager_skipped}"
    )
    return (
        f"load {row.load:2d} | seq {row.seq:6d} | "
        f"sdpa {row.sdpa_s:7.2f} s / {row.sdpa_peak_mb:7.0f} MB | "
        f"workbench path, no hooks {row.plain_s:7.2f} s ({row.plain_ratio:4.2f}x) | "
        f"stats {row.stats_s:7.2f} s / {row.stats_peak_mb:7.0f} MB | "
        f"ratio {row.ratio:5.2f}x time, {row.mem_ratio:4.2f}x mem | {eager}"
    )


def run_bench(
    lm: LoadedModel,
    seqs: list[int],
    repeat: int = 1,
    eager: bool = True,
    log: Log = print,
    load: int = 0,
) -> list[BenchRow]:
    """Warm up, then measure every length (logging each row); returns the rows.

    With ``load = N > 0`` each length is measured twice, side by side: quiet, then with ``N``
    busy processes of our own beside it (:func:`workbench.busy_load.busy_processes`, started
    for that measurement and killed after it), so the loaded ratio comes from the same run.
    """
    from workbench.busy_load import MAX_LOAD, busy_processes

    integer("load", load, minimum=0, maximum=MAX_LOAD)
    with torch.no_grad():
        lm.model(input_ids=torch.zeros(1, 16, dtype=torch.long, device=lm.device))
    rows = []
    for seq in seqs:
        for n in (0, load) if load else (0,):
            with busy_processes(n):
                row = bench_length(lm, seq, repeat=repeat, eager=eager and n == 0)
            row.load = n
            if n and eager:
                row.eager_skipped = "measured quiet only"
            rows.append(row)
            if log is not None:
                log(format_row(row))
    return rows


def rows_as_json(lm: LoadedModel, rows: list[BenchRow]) -> dict[str, Any]:
    """The ``bench --json`` object: model, device, torch threads, the OpenMP wait policy
    (:mod:`workbench.openmp`), whether the fused CPU kernel serves the statistics
    (:mod:`kernels.fused_cpu`) and one dict per row."""
    from kernels.fused_cpu import status

    return {
        "model": lm.info.name,
        "device": str(lm.device),
        "torch_threads": torch.get_num_threads(),
        "openmp_wait": wait_policy(),
        "fused_cpu_kernel": status(),
        "results": [asdict(r) for r in rows],
    }
