"""``workbench report``: the batch head-attribution report (:mod:`workbench.report`), serial
or on Ray, resumable; this module only turns the command line into a
:class:`~workbench.report.ReportConfig`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from workbench.cli.common import add_model_args
from workbench.cli.registry import command
from workbench.errors import WorkbenchError


def _log_to_stderr(quiet: bool) -> None:
    """Progress lines of ``workbench.report`` on stderr (warnings only when ``quiet``)."""
    logger = logging.getLogger("workbench.report")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s report: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _analyzer_names(text: str | None) -> list[str]:
    """``--analyzers a,b`` -> names (default: every registered analyzer), all known."""
    from workbench.analyzers import ANALYZERS

    names = [a.strip() for a in text.split(",")] if text else sorted(ANALYZERS)
    analyzers = [a for a in names if a]
    unknown = [a for a in analyzers if a not in ANALYZERS]
    if unknown:
        raise WorkbenchError(
            f"--analyzers: unknown analyzer(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(ANALYZERS))}"
        )
    return analyzers


def _report_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(
        p,
        many=True,
        model_help="model (repeat for a side-by-side comparison; default: embedded SmolLM2)",
        device_help="cpu (default) or cuda (on the workers)",
        device_map=False,
    )
    p.add_argument("--analyzers", default=None, help="comma-separated names (default: all)")
    p.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="a file (always a path): text, one prompt a line, or JSONL with a prompt field",
    )
    p.add_argument(
        "--out",
        required=True,
        help="report folder (created; resumed when it exists; locked while a run writes it)",
    )
    p.add_argument("--shard-size", type=int, default=4, help="prompts per unit of work")
    p.add_argument("--top-k", type=int, default=5, help="k of the top-k causal checks")
    p.add_argument(
        "--draws",
        type=int,
        default=None,
        help="random-k control sets of every causal check (default: each analyzer's own, 39 "
        "for forward metrics, 20 for generation metrics; 3 with --quick)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-prompts", type=int, default=None, help="size of default tasks")
    p.add_argument("--examples", type=int, default=2, help="example maps per analyzer")
    p.add_argument("--no-causal", action="store_true", help="skip the causal checks")
    p.add_argument(
        "--quick",
        action="store_true",
        help="every analyzer's quick mode: small tasks and few draws for a first look; the "
        "evidence is weak (the report says so)",
    )
    p.add_argument(
        "--batch-size",
        default="auto",
        help='prompts per forward of the analyzers that batch ("auto": from free memory)',
    )
    p.add_argument("--executor", default="serial", choices=["serial", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (actors)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray worker")
    p.add_argument("--force", action="store_true", help="discard a report made differently")
    p.add_argument(
        "--figures",
        default="png",
        help="formats of the print-size figure files figures/NAME.FMT: a comma list of png, "
        "svg, pdf (default png), or none",
    )
    p.add_argument("--no-png", action="store_true", help="same as --figures none")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


@command("report", "batch head-attribution report (resumable; serial or Ray)", _report_arguments)
def cmd_report(args: argparse.Namespace) -> int:
    """Compute (or resume) the report in ``--out`` and print a one-line summary."""
    from workbench.analyzers import load_prompt_file
    from workbench.figure_export import figure_formats
    from workbench.report import ReportConfig, run_report
    from workbench.report.plan import ModelSpec

    _log_to_stderr(args.quiet)
    analyzers = _analyzer_names(args.analyzers)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"--out {out} is a file; give a folder (new or a report's)")
    prompts = load_prompt_file(args.prompts) if args.prompts else None
    formats = figure_formats(args.figures)  # checked even when --no-png drops them
    config = ReportConfig(
        models=[
            ModelSpec(m, args.dtype, "cpu" if args.device is None else args.device)
            for m in (args.model or [None])
        ],
        analyzers=analyzers,
        out=str(out),
        prompts=prompts,
        prompts_source=str(Path(args.prompts).resolve()) if args.prompts else None,
        shard_size=args.shard_size,
        top_k=args.top_k,
        draws=args.draws,
        seed=args.seed,
        causal=not args.no_causal,
        n_prompts=args.n_prompts,
        examples=args.examples,
        quick=args.quick,
        batch_size=int(args.batch_size) if args.batch_size.isdigit() else args.batch_size,
        executor=args.executor,
        address=args.address,
        workers=args.workers,
        num_gpus=args.num_gpus,
        force=args.force,
        quiet=args.quiet,
        figures=() if args.no_png else formats,
    )
    summary = run_report(config)
    counts = summary["counts"]
    print(
        f"wrote {out}: {counts['heads_rows']} head rows, {counts['units']} units "
        f"({counts['units_computed_this_run']} computed, {counts['units_reused']} reused) "
        f"in {summary['timings']['compute_s']:.1f} s"
    )
    for line in evidence_summary_lines(summary):
        print(line)
    return 0


def evidence_summary_lines(summary: dict) -> list[str]:
    """Per (model, analyzer) of a finished report: its stability and causal verdict, one line
    each, then the weak-evidence note of a quick report."""
    from workbench.analyzers.base import QUICK_NOTE
    from workbench.report.text import brief_line

    lines = []
    for model, frames in (summary.get("analyzer_attrs") or {}).items():
        for analyzer, attrs in frames.items():
            line = brief_line(attrs)
            if line:
                lines.append(f"{model}/{analyzer}: {line}")
    if (summary.get("params") or {}).get("quick"):
        lines.append(QUICK_NOTE)
    return lines
