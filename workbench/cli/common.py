"""Pieces several ``workbench`` commands share: model options, model loading, output checks."""

from __future__ import annotations

import argparse
import json
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
    device_map: bool = True,
) -> None:
    """``--model``, ``--dtype``, ``--device`` and (``device_map``) ``--device-map``; ``many``:
    ``--model`` may repeat (a list)."""
    parser.add_argument(
        "--model", action="append" if many else "store", default=None, help=model_help
    )
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    parser.add_argument("--device", default=None, help=device_help)
    if device_map:
        parser.add_argument(
            "--device-map",
            default=None,
            help="spread a model that does not fit one device: 'auto' (accelerate), or a JSON "
            'object from module names to devices, e.g. \'{"": "cuda:0"}\'',
        )


def load(args: argparse.Namespace) -> LoadedModel:
    """The model of ``--model/--dtype/--device/--device-map``."""
    from workbench.lm import load_model

    device_map = getattr(args, "device_map", None)
    if device_map is not None and device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(
                f"--device-map {device_map!r} is not valid JSON ({exc.msg}); give 'auto' or an "
                'object such as \'{"": "cuda:0"}\''
            ) from None
    device = args.device if args.device is not None or device_map is not None else "cpu"
    return load_model(args.model, dtype=args.dtype, device=device, device_map=device_map)


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
