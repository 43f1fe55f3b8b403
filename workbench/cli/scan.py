"""``workbench scan``: run one analyzer over every head and write its table (CSV or Parquet)
with the table's metadata (``FILE.json``); ``scan --list`` lists the analyzers."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from workbench.cli.common import add_model_args, check_out_file, load
from workbench.cli.registry import command
from workbench.errors import WorkbenchError


def parse_params(analyzer: str, pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> analyzer parameters (VALUE read as JSON, else as a string).

    Keys are checked against the analyzer's ``run`` signature, so a misspelt parameter is an
    error instead of being ignored.
    """
    import inspect

    from workbench.analyzers import ANALYZERS

    accepted = {
        name
        for name, p in inspect.signature(ANALYZERS[analyzer].run).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "progress"
    }
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise WorkbenchError(f"--param {pair!r}: expected KEY=VALUE, e.g. layers=[7,8]")
        if key not in accepted:
            raise WorkbenchError(
                f"--param {key}: {analyzer} has no such parameter; it takes: "
                + ", ".join(sorted(accepted))
            )
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = text
    return params


def _scan_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--analyzer", default=None, help="analyzer name (see --list)")
    p.add_argument("--list", action="store_true", help="list analyzers, one a line")
    p.add_argument("--prompts", default=None, help="text file (one prompt a line) or JSONL")
    p.add_argument("--top", type=int, default=None, help="k of the top-k causal check")
    p.add_argument("--out", default=None, help="FILE.csv or FILE.parquet")
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="analyzer parameter, VALUE as JSON (repeatable), e.g. --param layers=[7,8]",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("scan", "run an analyzer over every head, write its table", _scan_arguments)
def cmd_scan(args: argparse.Namespace) -> int:
    """Score every head with ``--analyzer`` and write the table; print the top heads."""
    from workbench.analyzers import analyze, get_analyzer, list_analyzers, load_prompt_file

    if args.list:
        for name, summary in list_analyzers():
            print(f"{name}\t{summary}")
        return 0
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
        params["top_k"] = args.top
    lm = load(args)
    df = analyze(args.analyzer, lm, prompts, progress=not args.quiet, **params)
    tmp = out.with_name(out.name + ".partial")
    if out.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    meta = out.with_name(out.name + ".json")
    meta.write_text(json.dumps(df.attrs, indent=2, default=str))
    best = df.nlargest(5, "score")
    print(f"wrote {out} ({len(df)} heads) and {meta.name}")
    pairs = zip(best.head_id, best.score, strict=True)
    print("top heads: " + ", ".join(f"{h} {v:.3f}" for h, v in pairs))
    causal = df.attrs.get("causal")
    if causal:
        print(
            f"causal ({causal['metric']}): base {causal['base']:.4f}, top-{causal['k']} "
            f"ablated {causal['top_k']:.4f}, random-{causal['k']} ablated "
            f"{causal['random_k_mean']:.4f}"
        )
    return 0
