"""Run the notebooks top to bottom and store them in place with their outputs (`make notebooks`).

usage: python notebooks/regenerate.py [NOTEBOOK.ipynb ...]   (default: every notebooks/*.ipynb)

Each notebook runs in a fresh kernel with the Hugging Face hub offline. Progress-bar updates are
dropped from the stored outputs (their rates and times would make every regeneration a diff),
this machine's paths replaced by stand-ins (<repo>, <venv>, ~), and no per-cell timing recorded.
A notebook is written only when every cell ran without an error, and it records in
``metadata["workbench"]["code_hash"]`` the SHA-256 of the JSON list of its code cells' sources,
which tests/integration/test_notebooks_stored.py compares with the cells as they are now.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CELL_TIMEOUT_S = 900
KERNEL_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # tqdm.auto warns on import where ipywidgets is missing; a stored warning is only noise
    "PYTHONWARNINGS": "ignore:IProgress not found",
}


def code_hash(nb: dict) -> str:
    """SHA-256 (hex) of the JSON list of ``nb``'s code cells' sources, each one string."""
    sources = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"]
            sources.append(src if isinstance(src, str) else "".join(src))
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode()).hexdigest()


def _local_paths() -> list[tuple[str, str]]:
    """Absolute paths of this machine that must not be stored, longest first, with stand-ins."""
    pairs = {str(ROOT): "<repo>", str(Path.home()): "~", sys.prefix: "<venv>"}
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _scrub(text: str) -> str:
    for path, stand_in in _local_paths():
        text = re.sub(re.escape(path) + r"(?=[/\s'\":]|$)", stand_in, text)
    return text


PROGRESS_BAR = re.compile(r"\d+%\|[^|]*\| *\S+/\S+ \[[^\]]*\]")


def is_progress_bar(out: dict) -> bool:
    """Whether ``out`` is a stderr stream of tqdm bar updates (or the blank a closed bar leaves)."""
    if out.get("output_type") != "stream" or out.get("name") != "stderr":
        return False
    pieces = re.split(r"[\r\n]", out["text"])
    return all(not p.strip() or PROGRESS_BAR.search(p) for p in pieces)


def clean_outputs(nb: nbformat.NotebookNode) -> None:
    """Drop progress-bar updates (their rates and times differ on every run) and replace this
    machine's repository, venv and home paths in text outputs by stand-ins."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [out for out in cell.outputs if not is_progress_bar(out)]
        for out in cell.outputs:
            if out.get("output_type") == "stream":
                out["text"] = _scrub(out["text"])
            elif out.get("output_type") == "error":
                out["traceback"] = [_scrub(line) for line in out["traceback"]]
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = _scrub(value)


def regenerate(path: Path, timeout: int = CELL_TIMEOUT_S) -> float:
    """Execute ``path`` in a fresh kernel and write it back with outputs; seconds taken.
    Raises ``CellExecutionError`` (and leaves the file unchanged) when a cell fails."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    clean_outputs(nb)
    nb.metadata["workbench"] = {
        "code_hash": code_hash(nb),
        "code_hash_of": "sha256 of the JSON list of the code cells' sources",
        "regenerate": "make notebooks",
    }
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Regenerate the notebooks named in ``argv`` (default: all), one at a time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(HERE.glob("*.ipynb"))
    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)
    failed = []
    for path in paths:
        print(f"{path.name}: running ...", flush=True)
        try:
            seconds = regenerate(path.resolve(), args.timeout)
        except CellExecutionError as exc:
            print(f"{path.name}: FAILED, left unchanged\n{exc}", file=sys.stderr)
            failed.append(path.name)
            continue
        print(
            f"{path.name}: stored with outputs ({seconds:.0f} s, "
            f"{path.stat().st_size / 1024:.0f} KiB)",
            flush=True,
        )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
