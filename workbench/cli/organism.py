"""``workbench organism``: build (once, cached) the refusal model organism that the safety
analyzer localises, and print its folder."""

from __future__ import annotations

import argparse
import sys
import time

from workbench.cli.common import add_model_args, load
from workbench.cli.registry import command
from workbench.errors import WorkbenchError


def _organism_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: built-in)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--quiet", action="store_true", help="print only the folder")


@command(
    "organism",
    "build (once, cached) the refusal model organism for the safety analyzer; prints its folder",
    _organism_arguments,
)
def cmd_organism(args: argparse.Namespace) -> int:
    """Build or reuse the cached organism; print its folder (stdout) and a hint (stderr)."""
    from probes.checks import integer
    from workbench.organisms.refusal import build_refusal_organism

    if args.steps is not None and args.steps < 1:
        raise WorkbenchError(f"--steps must be >= 1, got {args.steps}")
    integer("--seed", args.seed, minimum=0, maximum=2**32 - 1)
    options = {} if args.steps is None else {"steps": args.steps}
    start = time.perf_counter()
    path = build_refusal_organism(
        load(args), seed=args.seed, force=args.force, progress=not args.quiet, **options
    )
    print(path)
    if not args.quiet:
        print(
            f"refusal organism ready in {time.perf_counter() - start:.1f} s; scan it with: "
            f"workbench scan --analyzer safety --model {path} --out safety.csv",
            file=sys.stderr,
        )
    return 0
