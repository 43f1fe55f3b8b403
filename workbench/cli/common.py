"""Pieces several ``workbench`` commands share: model options, model loading, output checks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

MODEL_HELP = "local folder or cached Hugging Face id (default: embedded SmolLM2-135M-Instruct)"


def add_model_args(
    parser: argparse.ArgumentParser,
    *,
    many: bool = False,
    model_help: str = MODEL_HELP,
    device_help: str = "cpu (default) or cuda",
) -> None:
    """``--model``, ``--dtype`` and ``--device``; ``many``: ``--model`` may repeat (a list)."""
    parser.add_argument(
        "--model", action="append" if many else "store", default=None, help=model_help
    )
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help=device_help)


def load(args: argparse.Namespace) -> LoadedModel:
    """The model of ``--model/--dtype/--device``."""
    from workbench.lm import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device)


def check_out_file(path: Path, suffix: str) -> Path:
    """``path`` if it can be written as a ``suffix`` file in an existing folder.

    Raises:
        WorkbenchError: a directory, a missing folder or the wrong suffix.
    """
    if path.is_dir():
        raise WorkbenchError(f"--out {path} is a directory; give a file name ending in {suffix}")
    if not path.parent.exists():
        raise WorkbenchError(f"--out {path}: folder {path.parent} does not exist")
    if path.suffix != suffix:
        raise WorkbenchError(f"--out {path} must end in {suffix}")
    return path


def read_prompt_lines(path: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file (one prompt a line).

    Raises:
        WorkbenchError: unreadable file or no prompt in it.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkbenchError(f"cannot read prompt file {path}: {exc}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise WorkbenchError(f"prompt file {path} has no prompts (one prompt per line)")
    return prompts
