"""Commands that look at one model: ``info``, ``capture`` (one head's map) and ``bench``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.cli.common import PROMPT_HELP, add_model_args, check_out_file, load, prompt_text
from workbench.cli.registry import command
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


def _info_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--load",
        action="store_true",
        help="load the weights too (checks they give finite logits, prints load_seconds); "
        "without it, a model with safetensors weights is described from its files alone",
    )


@command("info", "describe a model (layers, heads, KV heads, head dim)", _info_arguments)
def cmd_info(args: argparse.Namespace) -> int:
    """Print the model's description (layers, heads, KV heads, head dim, parameters).

    From the files alone (config.json and the safetensors headers: a fraction of a second, no
    torch) unless ``--load``, a dtype/device/device map, or weights that are not safetensors
    (or the embedded model not yet dequantized) ask for the model itself.
    """
    from workbench.model_files import describe_files

    placed = args.dtype != "float32" or args.device is not None or args.device_map is not None
    described = None if args.load or placed else describe_files(args.model)
    if described is not None:
        info = {**described.as_dict(), "weights": "not loaded (--load loads and checks them)"}
    else:
        lm = load(args)
        info = {**lm.info.as_dict(), "load_seconds": round(lm.load_seconds, 3)}
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _capture_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompt", required=True, help=PROMPT_HELP)
    p.add_argument("--layer", type=int, required=True, help="0-based layer")
    p.add_argument("--head", type=int, required=True, help="0-based query head")
    p.add_argument("--chat", action="store_true", help="apply the chat template first")
    p.add_argument("--out", required=True, help="output file (.npz: attention, tokens)")


@command("capture", "write one head's attention map to an .npz file", _capture_arguments)
def cmd_capture(args: argparse.Namespace) -> int:
    """Write one head's (L, L) attention map and the tokens to an ``.npz`` file."""
    import numpy as np

    from probes.checks import integer

    out = check_out_file(Path(args.out), ".npz")
    prompt = prompt_text(args.prompt)
    integer("--layer", args.layer, minimum=0)  # the model's ranges are checked once it loads
    integer("--head", args.head, minimum=0)
    lm = load(args)
    lm.head_id(args.layer, args.head)  # range checks with clear messages
    enc, records = lm.run_capture(prompt, chat=args.chat, layers=[args.layer], heads=[args.head])
    attention = records.map(args.layer, args.head).numpy().astype(np.float32)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez(tmp, attention=attention, tokens=np.array(enc.tokens, dtype=np.str_))
    os.replace(tmp, out)
    print(
        f"wrote {out}: attention {attention.shape[0]}x{attention.shape[1]} of "
        f"{lm.head_id(args.layer, args.head)} over {enc.n_tokens} tokens"
    )
    return 0


def parse_seqs(text: str, max_context: int | None = None) -> list[int]:
    """``"512,1024"`` -> ``[512, 1024]``, each between 1 and ``max_context`` (``None``: not
    known yet, any length >= 1)."""
    try:
        seqs = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WorkbenchError(f"--seq {text!r}: give comma-separated token counts") from None
    for n in seqs:
        if n < 1 or (max_context is not None and n > max_context):
            limit = f"the context {max_context}" if max_context is not None else "the context"
            raise WorkbenchError(f"--seq {n}: must be between 1 and {limit}")
    if not seqs:
        raise WorkbenchError("--seq is empty")
    return seqs


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--seq", default="512,1024,2048,4096", help="comma-separated lengths")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    p.add_argument("--no-eager", action="store_true", help="skip the eager-with-maps column")
    p.add_argument(
        "--load",
        type=int,
        default=0,
        help="also measure each length with N busy processes of our own beside it (0-16)",
    )
    p.add_argument(
        "--analyzers",
        action="store_true",
        help="time sinks, induction, retrieval and contextual as the workbench runs them "
        "against the papers' reference way (eager maps, one prompt at a time); --seq, "
        "--repeat and --no-eager do not apply",
    )
    p.add_argument("--quick", action="store_true", help="with --analyzers: two prompts per family")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("bench", "time head statistics against a plain SDPA forward", _bench_arguments)
def cmd_bench(args: argparse.Namespace) -> int:
    """Time head statistics against a plain SDPA forward (:mod:`workbench.bench`), or with
    ``--analyzers`` each analyzer against its paper's reference way
    (:mod:`workbench.bench_analyzers`)."""
    from probes.checks import integer
    from workbench.bench import rows_as_json, run_bench
    from workbench.busy_load import MAX_LOAD

    parse_seqs(args.seq)  # the syntax, before the model loads
    integer("--repeat", args.repeat, minimum=1)
    integer("--load", args.load, minimum=0, maximum=MAX_LOAD)
    if args.quick and not args.analyzers:
        raise WorkbenchError("--quick: only with --analyzers (the analyzer task sizes)")
    if args.analyzers and args.load:
        raise WorkbenchError(
            f"--load {args.load}: only for the forward bench, not with --analyzers "
            "(the busy processes are bounded in time; run the analyzer bench quiet)"
        )
    lm = load(args)
    if args.analyzers:
        return _bench_analyzers(lm, quick=args.quick, as_json=args.json)
    seqs = parse_seqs(args.seq, lm.info.max_context)
    log = None if args.json else print
    if log:
        import torch

        from kernels.fused_cpu import status
        from workbench.openmp import wait_policy

        print(
            f"{lm.info.name} on {lm.device}, {lm.info.dtype}, batch 1, repeat {args.repeat}, "
            f"{torch.get_num_threads()} threads, {wait_policy()}, fused CPU kernel {status()}"
        )
    rows = run_bench(lm, seqs, repeat=args.repeat, eager=not args.no_eager, log=log, load=args.load)
    if args.json:
        print(json.dumps(rows_as_json(lm, rows)))
    return 0


def _bench_analyzers(lm: LoadedModel, *, quick: bool, as_json: bool) -> int:
    """``bench --analyzers``: :mod:`workbench.bench_analyzers`, printed or as one JSON object."""
    from workbench.bench_analyzers import analyzer_rows_as_json, run_analyzer_bench

    log = None if as_json else print
    if log:
        task = "quick task (2 prompts each)" if quick else "default task sizes"
        print(f"{lm.info.name} on {lm.device}, {lm.info.dtype}, {task}; reference = eager maps")
    rows = run_analyzer_bench(lm, quick=quick, log=log)
    if as_json:
        print(json.dumps(analyzer_rows_as_json(lm, rows)))
    return 0
