"""Pieces several ``workbench`` commands share: model options, model loading, output checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from probes.checks import writable_folder
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


def _probe_write(folder: Path, option: str, target: Path) -> None:
    """Proof that ``target`` can be written in ``folder``, before any work is spent."""
    writable_folder(option, folder, target)


def check_out_file(path: Path, suffix: str, option: str = "--out") -> Path:
    """``path`` if a ``suffix`` file can be written there: the folder exists and takes a
    scratch file (checked now, before any model loads or analyzer runs).

    Raises:
        WorkbenchError: the path is a folder, its folder is missing or is a file, the suffix
            is wrong, or the folder cannot be written.
    """
    if path.is_dir():
        raise WorkbenchError(f"{option} {path} is a directory; give a file name ending in {suffix}")
    if path.suffix != suffix:
        raise WorkbenchError(f"{option} {path} must end in {suffix}")
    folder = path.parent
    if not folder.exists():
        raise WorkbenchError(f"{option} {path}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise WorkbenchError(f"{option} {path}: {folder} is a file, not a folder")
    _probe_write(folder, option, path)
    return path


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """``path`` if a folder can be written there: an existing folder that takes a scratch
    file, or a new one whose nearest existing parent is a writable folder (nothing is
    created).

    Raises:
        WorkbenchError: the path is a file, a parent is a file, or nothing can be written.
    """
    if path.exists() and not path.is_dir():
        raise WorkbenchError(f"{option} {path} is a file; give a folder (new or existing)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WorkbenchError(f"{option} {path}: {parent} is a file, so no folder can be made there")
    _probe_write(parent, option, path)
    return path


def _read_text(path: str, what: str) -> str:
    """The UTF-8 text of ``path``, a leading byte-order mark dropped (``utf-8-sig``)."""
    file = Path(path)
    if not file.is_file():
        raise WorkbenchError(f"{what} {path} does not exist or is not a file")
    try:
        return file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise WorkbenchError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise WorkbenchError(
            f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def read_prompt_lines(path: str, what: str = "prompt file") -> list[str]:
    """The non-blank lines of a UTF-8 text file (one prompt a line; a byte-order mark before
    the first one is dropped). ``what`` names the file in messages (``"--reference file"``).

    Raises:
        WorkbenchError: unreadable file or no prompt in it.
    """
    prompts = [line for line in _read_text(path, what).splitlines() if line.strip()]
    if not prompts:
        raise WorkbenchError(f"{what} {path} has no prompts (one prompt per line)")
    return prompts


#: Endings of prompt files: a ``--prompt`` that is one word with one of them is refused.
PROMPT_FILE_SUFFIXES = (".txt", ".jsonl")
PROMPT_HELP = (
    "the prompt text itself, tokenized exactly as given; @FILE reads it from FILE (UTF-8, the "
    "whole file less one final newline), @@TEXT means the text @TEXT. A one-word value ending "
    "in .txt or .jsonl is refused as ambiguous: write @FILE to read a file"
)


def prompt_text(value: str, option: str = "--prompt") -> str:
    """The prompt a ``--prompt`` value stands for: ``@FILE`` -> FILE's text, ``@@TEXT`` ->
    ``@TEXT``, anything else -> itself; a value that looks like a file name (one word ending
    in ``.txt`` / ``.jsonl``) is refused, so a file name is never tokenized as a prompt and a
    prompt is never silently read as a file.

    Raises:
        WorkbenchError: the ambiguous case, an unreadable ``@FILE``, or an empty prompt file.
    """
    if value.startswith("@@"):
        return value[1:]
    if value.startswith("@"):
        path = value[1:]
        if not path:
            raise WorkbenchError(f"{option} '@': give a file name after @, e.g. @prompt.txt")
        text = _read_text(path, f"{option} file")
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        if not text.strip():
            raise WorkbenchError(f"{option} file {path} is empty; it should hold the prompt text")
        return text
    word = value.strip()
    if not word:
        raise WorkbenchError(f"{option} is empty; give the prompt text (or @FILE)")
    if not any(c.isspace() for c in word) and word.lower().endswith(PROMPT_FILE_SUFFIXES):
        raise WorkbenchError(
            f"{option} {value!r} looks like a file name, and {option} takes the prompt text "
            f"itself: write {option} @{word} to read the prompt from that file"
        )
    return value
