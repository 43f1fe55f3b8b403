"""The notebooks are stored with their outputs, up to date with their code cells (issue 17.3).

Fast: nothing is executed here (`pytest --nbmake notebooks` executes them). A stored notebook
fails when its code cells changed since `make notebooks` stored it (the SHA-256 of the JSON list
of its code cells' sources differs from ``metadata["workbench"]["code_hash"]``), when it was not
executed top to bottom in one run, when a cell that prints or shows something has no output, when
it holds an error, when a plotly figure has no PNG copy (a repository page runs no JavaScript), or
when an output names an absolute path of this machine or stores a progress bar (timings).
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import importlib.util
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PLOTLY_MIME = "application/vnd.plotly.v1+json"
FIX = (
    "Run `make notebooks` to execute the notebooks and store them with their outputs "
    "(Chromium is needed for the figures' PNG copies: `make browser`)."
)
PROGRESS_BAR = re.compile(r"\d+%\|[^|]*\| *\S+/\S+ \[[^\]]*\]")  # tqdm: "40%|####  | 2/5 [..]"
USER_PATH = re.compile(r"(?<![\w.~<>-])/(?:home|Users)/[^/\s'\"]+/|(?<![\w.~<>-])/root/")


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _expected_hash(nb: dict[str, Any]) -> str:
    """The documented hash: SHA-256 of the JSON list of the code cells' sources."""
    sources = [_source(c) for c in _code_cells(nb)]
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode()).hexdigest()


def _must_show(source: str) -> bool:
    """Whether a cell must have an output: it calls print/display/.show() at top level (not in
    a def), or ends with an expression that is not a call (a call may return None)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: no opinion
        return False
    skip = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for stmt in tree.body:
        if isinstance(stmt, skip):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Name) and f.id in {"print", "display"}) or (
                    isinstance(f, ast.Attribute) and f.attr == "show"
                ):
                    return True
    last = tree.body[-1] if tree.body else None
    return (
        isinstance(last, ast.Expr)
        and not isinstance(last.value, ast.Call)
        and not source.rstrip().endswith(";")
    )


def _output_texts(out: dict[str, Any]) -> list[str]:
    texts = []
    if "text" in out:
        texts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
    texts.extend(out.get("traceback", []))
    for mime, value in out.get("data", {}).items():
        if mime.startswith("text/"):
            texts.append(value if isinstance(value, str) else "".join(value))
    return texts


def stored_problems(nb: dict[str, Any]) -> list[str]:
    """Everything that makes a stored notebook not what `make notebooks` writes ([] when fine)."""
    problems = []
    stored = nb.get("metadata", {}).get("workbench", {}).get("code_hash")
    if stored is None:
        problems.append('no metadata["workbench"]["code_hash"] (never stored by make notebooks)')
    elif stored != _expected_hash(nb):
        problems.append("its code cells changed since its outputs were stored (code_hash differs)")
    cells = _code_cells(nb)
    counts = [c.get("execution_count") for c in cells]
    if counts != list(range(1, len(cells) + 1)):
        problems.append(f"execution counts are {counts}, not 1..{len(cells)} (one run, in order)")
    local = {str(ROOT), str(Path.home()), sys.prefix} - {"/", ""}
    for i, cell in enumerate(cells, start=1):
        outputs = cell.get("outputs", [])
        if not outputs and _must_show(_source(cell)):
            problems.append(f"code cell {i} prints or shows something but has no output")
        for out in outputs:
            if out["output_type"] == "error":
                problems.append(f"code cell {i} has an error output ({out.get('ename')})")
            stderr = "".join(_output_texts(out)) if out.get("name") == "stderr" else ""
            if "Traceback" in stderr:
                problems.append(f"code cell {i} has a traceback on stderr")
            if PROGRESS_BAR.search(stderr):
                problems.append(
                    f"code cell {i} stores a progress bar (its timings change each run)"
                )
            if PLOTLY_MIME in out.get("data", {}) and "image/png" not in out["data"]:
                problems.append(f"code cell {i} has a plotly figure without a PNG copy")
            for text in _output_texts(out):
                named = [p for p in local if p in text] or USER_PATH.findall(text)
                if named:
                    problems.append(f"code cell {i} output names local paths {sorted(named)}")
    return list(dict.fromkeys(problems))  # one line per kind of problem and cell


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_four_notebooks_are_checked():
    names = [p.name for p in NOTEBOOKS]
    assert names[:4] == [
        "01_quickstart.ipynb",
        "02_finding_heads.ipynb",
        "03_steering_and_ablation.ipynb",
        "04_long_context.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_is_current(path: Path):
    problems = stored_problems(_load(path))
    assert not problems, f"notebooks/{path.name}: " + "; ".join(problems) + ". " + FIX


def test_every_notebook_with_plotly_stores_png_figures():
    """01, 02 and 04 draw plotly figures: each must show at least one on a repository page."""
    for name in ("01_quickstart", "02_finding_heads", "04_long_context"):
        nb = _load(NOTEBOOK_DIR / f"{name}.ipynb")
        outputs = [o for c in _code_cells(nb) for o in c.get("outputs", [])]
        pngs = [o for o in outputs if "image/png" in o.get("data", {})]
        assert pngs, f"notebooks/{name}.ipynb stores no PNG figure. {FIX}"


# ---- the checks above can fail: each defect planted in a stored notebook is reported ----


@pytest.fixture
def stored() -> dict[str, Any]:
    return _load(NOTEBOOK_DIR / "01_quickstart.ipynb")


def _first_cell_with(nb: dict[str, Any], predicate) -> dict[str, Any]:
    return next(c for c in _code_cells(nb) if predicate(c))


def test_edited_code_cell_is_reported(stored):
    nb = copy.deepcopy(stored)
    _code_cells(nb)[-1]["source"] += "\nprint('edited')"
    assert any("code cells changed" in p for p in stored_problems(nb))


def test_edited_markdown_cell_is_not_a_change(stored):
    nb = copy.deepcopy(stored)
    next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"] = "# retitled"
    assert stored_problems(nb) == stored_problems(stored)


def test_cleared_notebook_is_reported(stored):
    nb = copy.deepcopy(stored)
    for cell in _code_cells(nb):
        cell["outputs"], cell["execution_count"] = [], None
    problems = stored_problems(nb)
    assert any("execution counts" in p for p in problems)
    assert any("has no output" in p for p in problems)


def test_out_of_order_run_is_reported(stored):
    nb = copy.deepcopy(stored)
    _code_cells(nb)[1]["execution_count"] = 7
    assert any("execution counts" in p for p in stored_problems(nb))


def test_error_outputs_are_reported(stored):
    nb = copy.deepcopy(stored)
    cell = _code_cells(nb)[2]
    cell["outputs"].append(
        {"output_type": "error", "ename": "ValueError", "evalue": "x", "traceback": []}
    )
    cell["outputs"].append(
        {"output_type": "stream", "name": "stderr", "text": "Traceback (most recent call last):\n"}
    )
    problems = stored_problems(nb)
    assert any("error output (ValueError)" in p for p in problems)
    assert any("traceback on stderr" in p for p in problems)


def test_plotly_figure_without_png_is_reported(stored):
    nb = copy.deepcopy(stored)
    cell = _first_cell_with(
        nb, lambda c: any(PLOTLY_MIME in o.get("data", {}) for o in c["outputs"])
    )
    for out in cell["outputs"]:
        out.get("data", {}).pop("image/png", None)
    assert any("without a PNG copy" in p for p in stored_problems(nb))


def test_progress_bars_are_reported(stored):
    nb = copy.deepcopy(stored)
    bar = "sinks:  50%|█████     | 3/6 [00:00<00:00,  4.94it/s]"
    _code_cells(nb)[1]["outputs"] = [{"output_type": "stream", "name": "stderr", "text": bar}]
    assert any("progress bar" in p for p in stored_problems(nb))


def test_local_paths_are_reported(stored):
    nb = copy.deepcopy(stored)
    cell = _code_cells(nb)[1]
    for leak in (f"{ROOT}/workbench/lm.py", "/home/alice/.cache/workbench"):
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": f"see {leak}\n"}]
        assert any("local paths" in p for p in stored_problems(nb)), leak


@pytest.mark.parametrize(
    ("source", "must"),
    [
        ("x = 1\nprint(x)", True),
        ("fig.show()", True),
        ("lm.info", True),
        ("df[['a', 'b']]", True),
        ("lm.info;", False),
        ("import torch\nlm = load()", False),
        ("def f():\n    print(1)", False),
        ("helper.enable()", False),
    ],
)
def test_which_cells_must_show_something(source, must):
    assert _must_show(source) is must


# ---- the notebooks' renderer: interactive figure plus PNG copy, or interactive only ----


def _png_fallback():
    spec = importlib.util.spec_from_file_location("png_fallback", NOTEBOOK_DIR / "png_fallback.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def plotly_defaults():
    pio = pytest.importorskip("plotly.io")
    before = pio.renderers.default
    yield pio
    pio.renderers.default = before


def test_without_chromium_figures_stay_interactive(monkeypatch, capsys, plotly_defaults):
    module = _png_fallback()
    monkeypatch.setattr(module, "find_chromium", lambda: None)
    before = plotly_defaults.renderers.default
    module.enable()
    assert plotly_defaults.renderers.default == before
    assert "no Chromium/Chrome found" in capsys.readouterr().out


def test_failed_png_drawing_keeps_the_figure_and_notes_once(monkeypatch, capsys):
    module = _png_fallback()
    renderer = module.FallbackPngRenderer()

    def broken(*args, **kwargs):
        raise RuntimeError("browser crashed\nsecond line")

    monkeypatch.setattr("plotly.io._base_renderers.to_image", broken)
    assert renderer.to_mimebundle({"data": [], "layout": {}}) == {}
    assert renderer.to_mimebundle({"data": [], "layout": {}}) == {}
    out = capsys.readouterr().out
    assert out.count("note:") == 1
    assert "RuntimeError: browser crashed" in out and "second line" not in out


def test_png_copy_is_900_px_wide_at_the_figure_height(plotly_defaults):
    module = _png_fallback()
    if module.unavailable_reason() is not None:
        pytest.skip(f"no PNG drawing here: {module.unavailable_reason()}")
    go = pytest.importorskip("plotly.graph_objects")
    module.enable()
    assert plotly_defaults.renderers.default == "plotly_mimetype+workbench_png"
    fig = go.Figure(go.Heatmap(z=[[0, 1], [1, 0]]), layout={"height": 321})
    bundle = fig._repr_mimebundle_()  # what Jupyter stores for a figure
    assert PLOTLY_MIME in bundle
    png = base64.b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (900, 321)  # IHDR width, height
