"""``workbench scan``: run one analyzer over every head and write its table (CSV or Parquet)
with the table's metadata (``FILE.json``); ``scan --list`` lists the analyzers."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.cli.common import add_model_args, check_out_file, load
from workbench.cli.registry import command
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import pandas as pd


def parse_params(analyzer: str, pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> analyzer parameters (VALUE read as JSON, else as a string).

    Keys are not checked here: :func:`check_params` does it with the analyzer's own check.
    """
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise WorkbenchError(f"--param {pair!r}: expected KEY=VALUE, e.g. layers=[7,8]")
        if key == "progress":
            raise WorkbenchError("--param progress: not a scan parameter; --quiet hides the bar")
        if key in params:
            raise WorkbenchError(f"--param {key} is given twice; give each parameter once")
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


def check_params(analyzer: str, params: dict[str, object]) -> None:
    """The analyzer's own check of ``params`` (:meth:`Analyzer.check_params`, the one the
    Python API runs), before the model loads: unknown names (with close matches), types and
    the ranges that need no model. The model-dependent ranges are checked when it runs."""
    from workbench.analyzers import get_analyzer

    get_analyzer(analyzer).check_params(None, params)


def _scan_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--analyzer", default=None, help="analyzer name (see --list)")
    p.add_argument("--list", action="store_true", help="list analyzers, one a line")
    p.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="a file (always a path): text, one prompt a line, or JSONL with a prompt field",
    )
    p.add_argument("--top", type=int, default=None, help="k of the top-k causal check")
    p.add_argument("--out", default=None, help="FILE.csv or FILE.parquet")
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="analyzer parameter, VALUE as JSON (repeatable), e.g. --param layers=[7,8]",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the analyzer's quick mode: its small task and few random draws, for a first "
        "look; the evidence is weak (the output says so)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("scan", "run an analyzer over every head, write its table", _scan_arguments)
def cmd_scan(args: argparse.Namespace) -> int:
    """Score every head with ``--analyzer`` and write the table; print the top heads."""
    if args.list:  # from the catalog: no analyzer (so no torch) is imported
        from workbench.analyzer_catalog import catalog_list

        for name, summary in catalog_list():
            print(f"{name}\t{summary}")
        return 0
    from workbench.analyzers import analyze, get_analyzer, load_prompt_file
    from workbench.serialize import jsonable

    if not args.analyzer:
        raise WorkbenchError("give --analyzer NAME (see `workbench scan --list`)")
    if not args.out:
        raise WorkbenchError("give --out FILE.csv or FILE.parquet")
    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise WorkbenchError(f"--out {out} must end in .csv or .parquet")
    check_out_file(out, out.suffix)
    get_analyzer(args.analyzer)  # unknown names fail before the model loads
    prompts = load_prompt_file(args.prompts) if args.prompts else None
    params = parse_params(args.analyzer, args.param or [])
    if args.top is not None:
        if "top_k" in params:
            raise WorkbenchError("--top and --param top_k both given; give one of them")
        params["top_k"] = args.top
    if args.quick:
        if "quick" in params:
            raise WorkbenchError("--quick and --param quick both given; give one of them")
        params["quick"] = True
    check_params(args.analyzer, params)
    lm = load(args)
    df = analyze(args.analyzer, lm, prompts, progress=not args.quiet, **params)
    tmp = out.with_name(out.name + ".partial")
    if out.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    meta = out.with_name(out.name + ".json")
    meta.write_text(json.dumps(jsonable(df.attrs, finite=True), indent=2))
    print(f"wrote {out} ({len(df)} heads) and {meta.name}")
    for line in result_lines(df):
        print(line)
    return 0


def _head(row: pd.Series) -> str:
    """``L16H0 0.740 [0.702, 0.781]`` (the interval when the table has one)."""
    text = f"{row['head_id']} {row['score']:.3f}"
    lo, hi = row.get("score_lo"), row.get("score_hi")
    if lo is not None and hi is not None and lo == lo and hi == hi:  # not NaN
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def result_lines(df: pd.DataFrame, top: int = 5) -> list[str]:
    """What ``scan`` prints about a table: its ``top`` heads with their score intervals, the
    causal check's values, then :func:`workbench.report.text.evidence_lines` (interval method,
    split-half stability, causal verdict, the weak-evidence note of a quick run)."""
    from workbench.report.text import evidence_lines

    best = df.nlargest(top, "score")
    lines = ["top heads: " + ", ".join(_head(row) for _, row in best.iterrows())]
    causal = df.attrs.get("causal") or {}
    if "base" in causal:
        lines.append(
            f"causal ({causal['metric']}): base {causal['base']:.4f}, top-{causal['k']} "
            f"ablated {causal['top_k']:.4f}, random-{causal['k']} ablated "
            f"{causal['random_k_mean']:.4f}"
        )
    return lines + evidence_lines(df.attrs)
