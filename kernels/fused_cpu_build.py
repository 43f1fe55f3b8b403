"""Build the fused CPU kernel (``kernels/fused_cpu.c``) into a shared library, once per machine.

The library is compiled with the system C compiler for the CPU it runs on
(``-O3 -march=native -fopenmp``) and kept in the workbench cache
(``$WORKBENCH_CACHE/kernels`` or the user cache dir), named by a hash of the source, the flags,
the compiler's version and the CPU's feature flags, so an edit, a new compiler or a different
machine builds a fresh copy and a stale one is never loaded. ``make install`` builds it
(``python -m kernels.fused_cpu_build``); otherwise the first statistics call does (about a
second). Without a compiler, or if the build fails, nothing breaks: :mod:`kernels.fused_cpu`
reports why and the blockwise PyTorch sweep serves every call.

Floating-point flags: ``-fassociative-math -fno-signed-zeros -fno-trapping-math`` let gcc
vectorise the row sums (they reorder additions, as any SIMD sum does); ``-ffinite-math-only``
is *not* used, since hidden cells and empty rows rely on ``-inf`` and ``-FLT_MAX``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from platformdirs import user_cache_dir

SOURCE = Path(__file__).with_name("fused_cpu.c")
FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fassociative-math",
    "-fno-signed-zeros",
)
COMPILE_TIMEOUT_S = 120


def cache_root() -> Path:
    """Root of the workbench cache: ``$WORKBENCH_CACHE`` or the user cache dir. The same rule
    as :func:`workbench.model_files.cache_dir`, written twice on purpose: ``kernels`` never
    imports ``workbench``, and importing any ``kernels`` module imports torch, which the
    command line must not do before it needs to (``tests/unit/test_fused_cpu.py`` checks that
    the two agree)."""
    env = os.environ.get("WORKBENCH_CACHE")
    return Path(env) if env else Path(user_cache_dir("workbench"))


def compiler() -> str | None:
    """The C compiler to use: ``$CC`` or the first of cc / gcc on PATH (None if none)."""
    env = os.environ.get("CC")
    if env:
        return shutil.which(env)
    return shutil.which("cc") or shutil.which("gcc")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


def library_path(cc: str) -> Path:
    """Where the library for this source, compiler and CPU lives (it may not exist yet)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode()):
        key.update(part)
    key.update(_cpu_flags().encode())
    return cache_root() / "kernels" / f"fused_cpu-{key.hexdigest()[:16]}.so"


def build() -> tuple[Path | None, str]:
    """``(path, "")`` of the built (or already cached) library, or ``(None, why not)``."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler (cc or gcc) on PATH"
    try:
        target = library_path(cc)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run {cc} --version: {exc}"
    if target.exists():
        return target, ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [cc, *FLAGS, "-o", str(out), str(SOURCE), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
                return None, f"{Path(cc).name} failed: {last}"
            os.replace(out, target)  # atomic: a concurrent builder finds a whole file or none
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"build failed: {exc}"
    return target, ""


def main() -> int:
    """Build now and say so; always exits 0 (the PyTorch sweep is the fallback)."""
    start = time.perf_counter()
    path, why = build()
    if path is None:
        print(f"fused CPU kernel not built ({why}); the PyTorch sweep will be used")
    else:
        print(f"fused CPU kernel: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
