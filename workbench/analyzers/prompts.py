"""Prompt sets: loading user files (text or JSONL) and the project's bundled data."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from probes.checks import ArgumentError, describe
from workbench.errors import EmptyPromptError, WorkbenchError

PromptItem = dict[str, Any]


class PromptFileError(WorkbenchError):
    """A prompt file cannot be read or has a malformed line."""


def load_prompt_file(path: str | Path) -> list[PromptItem]:
    """Read prompts: ``.jsonl`` (one object per line with a ``prompt`` field plus the analyzer's
    own fields) or any other text file (one prompt per line; blank lines skipped; a leading
    UTF-8 byte-order mark dropped).

    Prompts are used exactly as given. Errors name the file and the line.
    """
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise PromptFileError(f"path must be the path of a prompt file, got {describe(path)}")
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist or is not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc}") from None
    items: list[PromptItem] = []
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is no part of the prompt
        raw = raw[3:]
    for number, raw_line in enumerate(raw.splitlines(), start=1):
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PromptFileError(
                f"{path}, line {number}: not valid UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(
                    f"{path}, line {number}: not valid JSON ({exc.msg})"
                ) from None
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise PromptFileError(
                    f"{path}, line {number}: each JSONL line needs a string field 'prompt'"
                )
            if not item["prompt"].strip():
                raise PromptFileError(f"{path}, line {number}: the prompt is empty")
            items.append(item)
        else:
            items.append({"prompt": line})
    if not items:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return items


PROMPTS_ALLOWED = (
    "None (the analyzer's own task), a prompt string, a list of prompt strings or of dicts "
    "with a 'prompt' string, or a pathlib.Path of a prompt file (.txt or .jsonl)"
)


def as_items(prompts: Any) -> list[PromptItem]:
    """Prompt items from ``prompts``: see :data:`PROMPTS_ALLOWED`. ``None`` gives ``[]``.

    Only a :class:`~pathlib.Path` is read as a file: a string is always a prompt, and a string
    that looks like nothing but a file name (``"prompts.txt"``) is refused as ambiguous.
    """
    if prompts is None:
        return []
    if isinstance(prompts, Path):
        return load_prompt_file(prompts)
    if isinstance(prompts, str):
        name = prompts.strip()
        if Path(name).suffix.lower() in (".txt", ".jsonl") and not any(c.isspace() for c in name):
            raise PromptFileError(
                f"prompts {prompts!r} looks like a file name: pass pathlib.Path({prompts!r}) to "
                f"read a prompt file, or [{prompts!r}] to use the text itself as a prompt"
            )
        prompts = [prompts]
    if (
        isinstance(prompts, (bytes, Mapping))
        or not isinstance(prompts, Iterable)
        or getattr(prompts, "ndim", 1) == 0  # a 0-d array or tensor: iterating it fails
    ):
        raise ArgumentError(f"prompts must be {PROMPTS_ALLOWED}; got {describe(prompts)}")
    items = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            item = {"prompt": p}
        elif isinstance(p, Mapping):
            item = dict(p)
        else:
            raise ArgumentError(
                f"prompts[{i}] must be a prompt string or a dict with a 'prompt' string, "
                f"got {describe(p)}"
            )
        if not isinstance(item.get("prompt"), str):
            raise ArgumentError(
                f"prompts[{i}] has no 'prompt' string: {describe(item.get('prompt'))}"
            )
        if not item["prompt"].strip():
            raise EmptyPromptError(f"prompts[{i}] is an empty prompt; give some text")
        items.append(item)
    if not items:
        raise WorkbenchError("the prompt set is empty; give at least one prompt")
    return items


def bundled_text(name: str) -> str:
    """A text file shipped in ``workbench/data`` (written for the project)."""
    return resources.files("workbench").joinpath("data", name).read_text(encoding="utf-8")
