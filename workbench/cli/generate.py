"""``workbench generate``: greedy continuation with and without ablated / steered heads, and
the per-position KL divergence between the two next-token distributions."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from workbench.cli.common import PROMPT_HELP, add_model_args, load, prompt_text, read_prompt_lines
from workbench.cli.registry import command
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.heads import Head
    from workbench.interventions import Intervention
    from workbench.interventions.recipes import Options
    from workbench.lm import LoadedModel

HEADS_HELP = "heads {}, e.g. L5H3,L7H1; L5H* is every head of layer 5"


def _heads(option: str, text: str, n_heads: int | None) -> list[Head]:
    """``--ablate`` / ``--pasta`` as heads (:func:`workbench.heads.parse_heads`; ``L5H*`` is
    every head of layer 5). ``n_heads=None`` (no model yet) checks the syntax only."""
    from workbench.heads import parse_heads

    try:
        return parse_heads(text, n_heads=1 if n_heads is None else n_heads)
    except WorkbenchError as exc:
        raise WorkbenchError(f"{option} {text!r}: {exc}") from None


def check_request(args: argparse.Namespace) -> tuple[Options, Options]:
    """Everything a ``generate`` command line asks for that needs no model, checked before the
    model loads: which options go together, the head syntax, --reference read, numbers
    finite, --max-new-tokens >= 1. Returns the ablation's and PASTA's :class:`Options`."""
    from probes.checks import integer, number
    from workbench.interventions.recipes import Options, check_options

    integer("--max-new-tokens", args.max_new_tokens, minimum=1)
    number("--alpha", args.alpha)
    number("--factor", args.factor)
    prompt = prompt_text(args.prompt)
    if args.ablate:
        _heads("--ablate", args.ablate, None)
        if args.mode == "mean" and not args.reference:
            raise WorkbenchError("--mode mean needs --reference FILE (one prompt per line)")
        if args.reference and args.mode != "mean":
            raise WorkbenchError(f"--reference is for --mode mean, not --mode {args.mode}")
    elif args.mode != "zero" or args.reference:
        raise WorkbenchError("--mode/--reference need --ablate HEADS")
    if args.pasta:
        _heads("--pasta", args.pasta, None)
        if not args.emphasize:
            raise WorkbenchError("--pasta needs --emphasize SUBSTRING (the text to attend to)")
    elif args.emphasize:
        raise WorkbenchError("--emphasize needs --pasta HEADS")
    if not (args.ablate or args.pasta):
        raise WorkbenchError("nothing to do: give --ablate HEADS and/or --pasta HEADS")
    refs = read_prompt_lines(args.reference, "--reference file") if args.reference else ()
    ablation = check_options(Options(reference=refs, factor=args.factor))
    pasta = check_options(
        Options(prompt=prompt, chat=args.chat, emphasize=args.emphasize or "", alpha=args.alpha)
    )
    return ablation, pasta


def build_interventions(
    lm: LoadedModel,
    args: argparse.Namespace,
    request: tuple[Options, Options] | None = None,
) -> list[Intervention]:
    """The interventions a ``generate`` command line asks for (composed in this order):
    an ablation of ``--ablate`` heads (``--mode``), then PASTA (Zhang et al. 2023,
    "Tell Your Model Where to Attend") on ``--pasta`` heads emphasizing ``--emphasize``.

    Both are built by :func:`workbench.interventions.recipes.build`, i.e. through the
    intervention registry, exactly as the app builds them. ``request``: what
    :func:`check_request` returned for ``args`` (checked again when None).
    """
    from workbench.interventions.recipes import build

    ablation, pasta = check_request(args) if request is None else request
    n_heads = lm.info.n_heads
    out = []
    if args.ablate:
        out.append(build(lm, args.mode, _heads("--ablate", args.ablate, n_heads), ablation))
    if args.pasta:
        out.append(build(lm, "pasta", _heads("--pasta", args.pasta, n_heads), pasta))
    return out


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    from workbench.interventions import ABLATION_MODES, PASTA_ALPHA  # torch: only when used

    add_model_args(p)
    p.add_argument("--prompt", required=True, help=PROMPT_HELP)
    p.add_argument("--chat", action="store_true", help="apply the chat template first")
    p.add_argument("--ablate", default=None, help=HEADS_HELP.format("to ablate"))
    p.add_argument(
        "--mode",
        default="zero",
        choices=list(ABLATION_MODES),
        help="ablation mode (default zero)",
    )
    p.add_argument("--factor", type=float, default=0.0, help="output factor for --mode scale")
    p.add_argument("--reference", default=None, help="reference prompts for --mode mean")
    p.add_argument("--pasta", default=None, help=HEADS_HELP.format("to steer with PASTA"))
    p.add_argument("--emphasize", default=None, help="substring of the prompt to emphasize")
    p.add_argument(
        "--alpha",
        type=float,
        default=PASTA_ALPHA,
        help=f"PASTA alpha (default {PASTA_ALPHA})",
    )
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("generate", "greedy generation, base vs ablated/steered heads", _generate_arguments)
def cmd_generate(args: argparse.Namespace) -> int:
    """Base vs intervened greedy text and KL(base || intervened) at every prompt position."""
    from contextlib import ExitStack

    from workbench.generation import check_generation_length
    from workbench.interventions import kl_per_position

    request = check_request(args)  # before the model loads
    lm = load(args)
    enc = lm.encode(request[1].prompt, chat=args.chat)
    check_generation_length(lm, enc.n_tokens, args.max_new_tokens)
    interventions = build_interventions(lm, args, request)
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
