"""Prompt sets: loading user files (text or JSONL) and the project's bundled data."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

PromptItem = dict[str, Any]


class PromptFileError(WorkbenchError):
    """A prompt file cannot be read or has a malformed line."""


def load_prompt_file(path: str | Path) -> list[PromptItem]:
    """Read prompts: ``.jsonl`` (one object per line with a ``prompt`` field plus the analyzer's
    own fields) or any other text file (one prompt per line; blank lines skipped).

    Prompts are used exactly as given. Errors name the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist or is not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc}") from None
    items: list[PromptItem] = []
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


def as_items(prompts) -> list[PromptItem]:
    """Accept strings, dicts with ``prompt`` or a file path; return prompt items."""
    if prompts is None:
        return []
    if isinstance(prompts, (str, Path)) and Path(prompts).suffix in (".txt", ".jsonl"):
        return load_prompt_file(prompts)
    if isinstance(prompts, str):
        prompts = [prompts]
    items = []
    for p in prompts:
        item = {"prompt": p} if isinstance(p, str) else dict(p)
        if not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise WorkbenchError(f"empty or missing prompt in prompt set: {p!r:.80}")
        items.append(item)
    if not items:
        raise WorkbenchError("the prompt set is empty")
    return items


def bundled_text(name: str) -> str:
    """A text file shipped in ``workbench/data`` (written for the project)."""
    return resources.files("workbench").joinpath("data", name).read_text(encoding="utf-8")
