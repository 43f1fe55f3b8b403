"""The ``workbench`` command line: info, capture, generate, scan, bench, report, app.

Every user error is a :class:`~workbench.errors.WorkbenchError` printed as one line
(``error: ...``) with exit status 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_USER_ERROR = 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="local folder or cached Hugging Face id (default: embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")


def _load(args: argparse.Namespace):
    from workbench.lm import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device)


def cmd_info(args: argparse.Namespace) -> int:
    lm = _load(args)
    info = {**lm.info.as_dict(), "load_seconds": round(lm.load_seconds, 3)}
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _check_out_file(path: Path, suffix: str) -> Path:
    from workbench.errors import WorkbenchError

    if path.is_dir():
        raise WorkbenchError(f"--out {path} is a directory; give a file name ending in {suffix}")
    if not path.parent.exists():
        raise WorkbenchError(f"--out {path}: folder {path.parent} does not exist")
    if path.suffix != suffix:
        raise WorkbenchError(f"--out {path} must end in {suffix}")
    return path


def cmd_capture(args: argparse.Namespace) -> int:
    import numpy as np

    out = _check_out_file(Path(args.out), ".npz")
    lm = _load(args)
    lm.head_id(args.layer, args.head)  # range checks with clear messages
    enc, records = lm.run_capture(
        args.prompt, chat=args.chat, layers=[args.layer], heads=[args.head]
    )
    attention = records.map(args.layer, args.head).numpy().astype(np.float32)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez(tmp, attention=attention, tokens=np.array(enc.tokens, dtype=np.str_))
    os.replace(tmp, out)
    print(
        f"wrote {out}: attention {attention.shape[0]}x{attention.shape[1]} of "
        f"{lm.head_id(args.layer, args.head)} over {enc.n_tokens} tokens"
    )
    return 0


def _parse_seqs(text: str, max_context: int) -> list[int]:
    from workbench.errors import WorkbenchError

    try:
        seqs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WorkbenchError(f"--seq {text!r}: give comma-separated token counts") from None
    for n in seqs:
        if not 1 <= n <= max_context:
            raise WorkbenchError(f"--seq {n}: must be between 1 and the context {max_context}")
    if not seqs:
        raise WorkbenchError("--seq is empty")
    return seqs


def cmd_bench(args: argparse.Namespace) -> int:
    from workbench.bench import rows_as_json, run_bench

    lm = _load(args)
    seqs = _parse_seqs(args.seq, lm.info.max_context)
    log = None if args.json else print
    if log:
        print(f"{lm.info.name} on {lm.device}, {lm.info.dtype}, batch 1, repeat {args.repeat}")
    rows = run_bench(lm, seqs, repeat=args.repeat, eager=not args.no_eager, log=log)
    if args.json:
        print(json.dumps(rows_as_json(lm, rows)))
    return 0


def _read_prompt_lines(path: str) -> list[str]:
    from workbench.errors import WorkbenchError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkbenchError(f"cannot read prompt file {path}: {exc}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise WorkbenchError(f"prompt file {path} has no prompts (one prompt per line)")
    return prompts


def build_interventions(lm, args: argparse.Namespace) -> list:
    """The interventions a ``generate`` command line asks for (composed in this order)."""
    from workbench import interventions as iv
    from workbench.errors import WorkbenchError
    from workbench.heads import parse_heads

    out = []
    if args.ablate:
        heads = parse_heads(args.ablate)
        params: dict = {}
        if args.mode == "mean":
            if not args.reference:
                raise WorkbenchError("--mode mean needs --reference FILE (one prompt per line)")
            params["means"] = iv.head_means(lm, _read_prompt_lines(args.reference))
        elif args.mode == "scale":
            params["factor"] = args.factor
        out.append(iv.make(args.mode, lm, heads=heads, **params))
    elif args.mode != "zero" or args.reference:
        raise WorkbenchError("--mode/--reference need --ablate HEADS")
    if args.pasta:
        if not args.emphasize:
            raise WorkbenchError("--pasta needs --emphasize SUBSTRING (the text to attend to)")
        out.append(
            iv.pasta_on_text(
                lm,
                parse_heads(args.pasta),
                args.prompt,
                args.emphasize,
                args.alpha,
                chat=args.chat,
            )
        )
    elif args.emphasize:
        raise WorkbenchError("--emphasize needs --pasta HEADS")
    if not out:
        raise WorkbenchError("nothing to do: give --ablate HEADS and/or --pasta HEADS")
    return out


def cmd_generate(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from workbench.errors import WorkbenchError
    from workbench.interventions import kl_per_position

    if args.max_new_tokens < 1:
        raise WorkbenchError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    lm = _load(args)
    enc = lm.encode(args.prompt, chat=args.chat)
    interventions = build_interventions(lm, args)
    base_logits = lm.forward(enc)[0]
    base_text = lm.generate(enc, max_new_tokens=args.max_new_tokens)
    with ExitStack() as stack:
        for intervention in interventions:
            stack.enter_context(intervention)
        new_logits = lm.forward(enc)[0]
        new_text = lm.generate(enc, max_new_tokens=args.max_new_tokens)
    kl = [float(x) for x in kl_per_position(base_logits, new_logits)]
    if args.json:
        print(
            json.dumps(
                {
                    "base_text": base_text,
                    "intervened_text": new_text,
                    "tokens": enc.tokens,
                    "kl": kl,
                    "interventions": [repr(i) for i in interventions],
                }
            )
        )
        return 0
    print(f"interventions: {', '.join(repr(i) for i in interventions)}")
    print(f"base:       {base_text!r}")
    print(f"intervened: {new_text!r}")
    print("KL(base || intervened) of the next-token distribution at each prompt position:")
    for pos, (tok, value) in enumerate(zip(enc.tokens, kl, strict=True)):
        print(f"  {pos:4d} {tok!r:>16} {value:10.5f}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from workbench.analyzers import analyze, get_analyzer, list_analyzers, load_prompt_file
    from workbench.errors import WorkbenchError

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
    _check_out_file(out, out.suffix)
    get_analyzer(args.analyzer)  # unknown names fail before the model loads
    prompts = load_prompt_file(args.prompts) if args.prompts else None
    params = parse_params(args.analyzer, args.param or [])
    if args.top is not None:
        params["top_k"] = args.top
    lm = _load(args)
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


def parse_params(analyzer: str, pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> analyzer parameters (VALUE read as JSON, else as a string).

    Keys are checked against the analyzer's ``run`` signature, so a misspelt parameter is an
    error instead of being ignored.
    """
    import inspect

    from workbench.analyzers import ANALYZERS
    from workbench.errors import WorkbenchError

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


def cmd_organism(args: argparse.Namespace) -> int:
    import time

    from workbench.analyzers.refusal import build_refusal_organism

    if args.steps is not None and args.steps < 1:
        from workbench.errors import WorkbenchError

        raise WorkbenchError(f"--steps must be >= 1, got {args.steps}")
    options = {} if args.steps is None else {"steps": args.steps}
    start = time.perf_counter()
    path = build_refusal_organism(
        _load(args), seed=args.seed, force=args.force, progress=not args.quiet, **options
    )
    print(path)
    if not args.quiet:
        print(
            f"refusal organism ready in {time.perf_counter() - start:.1f} s; scan it with: "
            f"workbench scan --analyzer safety --model {path} --out safety.csv",
            file=sys.stderr,
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import logging

    from workbench.errors import WorkbenchError
    from workbench.report import ReportConfig, run_report
    from workbench.report.plan import ModelSpec

    logger = logging.getLogger("workbench.report")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s report: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    from workbench.analyzers import ANALYZERS, load_prompt_file

    if args.analyzers:
        analyzers = [a.strip() for a in args.analyzers.split(",") if a.strip()]
    else:
        analyzers = sorted(ANALYZERS)
    unknown = [a for a in analyzers if a not in ANALYZERS]
    if unknown:
        raise WorkbenchError(
            f"--analyzers: unknown analyzer(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(sorted(ANALYZERS))}"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(f"--out {out} is a file; give a folder (new or a report's)")
    if args.executor != "ray" and (args.address or args.num_gpus):
        raise WorkbenchError("--address/--num-gpus need --executor ray")
    prompts = load_prompt_file(args.prompts) if args.prompts else None
    config = ReportConfig(
        models=[ModelSpec(m, args.dtype, args.device) for m in (args.model or [None])],
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
        executor=args.executor,
        address=args.address,
        workers=args.workers,
        num_gpus=args.num_gpus,
        force=args.force,
        quiet=args.quiet,
        png=not args.no_png,
    )
    summary = run_report(config)
    counts = summary["counts"]
    print(
        f"wrote {out}: {counts['heads_rows']} head rows, {counts['units']} units "
        f"({counts['units_computed_this_run']} computed, {counts['units_reused']} reused) "
        f"in {summary['timings']['compute_s']:.1f} s"
    )
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from app.server import serve

    serve(model=args.model, host=args.host, port=args.port, debug=args.debug)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="Attention-head workbench for mechanistic interpretability."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a model (layers, heads, KV heads, head dim)")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("capture", help="write one head's attention map to an .npz file")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="prompt text, tokenized exactly as given")
    p.add_argument("--layer", type=int, required=True, help="0-based layer")
    p.add_argument("--head", type=int, required=True, help="0-based query head")
    p.add_argument("--chat", action="store_true", help="apply the chat template first")
    p.add_argument("--out", required=True, help="output file (.npz: attention, tokens)")
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("bench", help="time head statistics against a plain SDPA forward")
    _add_model_args(p)
    p.add_argument("--seq", default="512,1024,2048,4096", help="comma-separated lengths")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager-with-maps column")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("generate", help="greedy generation, base vs ablated/steered heads")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="prompt text, tokenized exactly as given")
    p.add_argument("--chat", action="store_true", help="apply the chat template first")
    p.add_argument("--ablate", default=None, help="heads to ablate, e.g. L5H3,L7H1")
    p.add_argument(
        "--mode",
        default="zero",
        choices=["zero", "mean", "uniform", "scale"],
        help="ablation mode (default zero)",
    )
    p.add_argument("--factor", type=float, default=0.0, help="output factor for --mode scale")
    p.add_argument("--reference", default=None, help="reference prompts for --mode mean")
    p.add_argument("--pasta", default=None, help="heads to steer with PASTA, e.g. L12H4")
    p.add_argument("--emphasize", default=None, help="substring of the prompt to emphasize")
    p.add_argument("--alpha", type=float, default=0.01, help="PASTA alpha (default 0.01)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("scan", help="run an analyzer over every head, write its table")
    _add_model_args(p)
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
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser(
        "organism",
        help="build (once, cached) the refusal model organism for the safety analyzer; "
        "prints its folder",
    )
    _add_model_args(p)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: built-in)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--quiet", action="store_true", help="print only the folder")
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("report", help="batch head-attribution report (resumable; serial or Ray)")
    p.add_argument(
        "--model",
        action="append",
        default=None,
        help="model (repeat for a side-by-side comparison; default: embedded SmolLM2)",
    )
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (on the workers)")
    p.add_argument("--analyzers", default=None, help="comma-separated names (default: all)")
    p.add_argument("--prompts", default=None, help="text file (one prompt a line) or JSONL")
    p.add_argument("--out", required=True, help="report folder (created; resumed when it exists)")
    p.add_argument("--shard-size", type=int, default=4, help="prompts per unit of work")
    p.add_argument("--top-k", type=int, default=5, help="k of the top-k causal checks")
    p.add_argument("--draws", type=int, default=3, help="random-k control sets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-prompts", type=int, default=None, help="size of default tasks")
    p.add_argument("--examples", type=int, default=2, help="example maps per analyzer")
    p.add_argument("--no-causal", action="store_true", help="skip the causal checks")
    p.add_argument("--executor", default="serial", choices=["serial", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (actors)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray worker")
    p.add_argument("--force", action="store_true", help="discard a report made differently")
    p.add_argument("--no-png", action="store_true", help="skip figures/*.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("app", help="serve the Dash app")
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    from workbench.errors import WorkbenchError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # also silence transformers' weight-loading bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
