"""``workbench generate``: greedy continuation with and without ablated / steered heads, and
the per-position KL divergence between the two next-token distributions."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from workbench.cli.common import add_model_args, load, read_prompt_lines
from workbench.cli.registry import command
from workbench.errors import WorkbenchError
from workbench.interventions import ABLATION_MODES, PASTA_ALPHA

if TYPE_CHECKING:
    from workbench.interventions import Intervention
    from workbench.lm import LoadedModel


def build_interventions(lm: LoadedModel, args: argparse.Namespace) -> list[Intervention]:
    """The interventions a ``generate`` command line asks for (composed in this order):
    an ablation of ``--ablate`` heads (``--mode``), then PASTA (Zhang et al. 2023,
    "Tell Your Model Where to Attend") on ``--pasta`` heads emphasizing ``--emphasize``.

    Both are built by :func:`workbench.interventions.recipes.build`, i.e. through the
    intervention registry, exactly as the app builds them.
    """
    from workbench.heads import parse_heads
    from workbench.interventions.recipes import Options, build

    out = []
    if args.ablate:
        heads = parse_heads(args.ablate)
        if args.mode == "mean" and not args.reference:
            raise WorkbenchError("--mode mean needs --reference FILE (one prompt per line)")
        refs = read_prompt_lines(args.reference) if args.mode == "mean" else ()
        out.append(build(lm, args.mode, heads, Options(reference=refs, factor=args.factor)))
    elif args.mode != "zero" or args.reference:
        raise WorkbenchError("--mode/--reference need --ablate HEADS")
    if args.pasta:
        if not args.emphasize:
            raise WorkbenchError("--pasta needs --emphasize SUBSTRING (the text to attend to)")
        text = Options(
            prompt=args.prompt, chat=args.chat, emphasize=args.emphasize, alpha=args.alpha
        )
        out.append(build(lm, "pasta", parse_heads(args.pasta), text))
    elif args.emphasize:
        raise WorkbenchError("--emphasize needs --pasta HEADS")
    if not out:
        raise WorkbenchError("nothing to do: give --ablate HEADS and/or --pasta HEADS")
    return out


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="prompt text, tokenized exactly as given")
    p.add_argument("--chat", action="store_true", help="apply the chat template first")
    p.add_argument("--ablate", default=None, help="heads to ablate, e.g. L5H3,L7H1")
    p.add_argument(
        "--mode",
        default="zero",
        choices=list(ABLATION_MODES),
        help="ablation mode (default zero)",
    )
    p.add_argument("--factor", type=float, default=0.0, help="output factor for --mode scale")
    p.add_argument("--reference", default=None, help="reference prompts for --mode mean")
    p.add_argument("--pasta", default=None, help="heads to steer with PASTA, e.g. L12H4")
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

    from workbench.interventions import kl_per_position

    if args.max_new_tokens < 1:
        raise WorkbenchError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    lm = load(args)
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
