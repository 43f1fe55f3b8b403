"""Bad command lines end in one ``error: ...`` line naming the bad value and exit status 2,
never a traceback, and every check that needs no model runs before the model loads.

``no_model`` makes any model load fail the test, so a case that passes under it was refused
before any work; ``shared_model`` hands the commands the session's model (one load for all).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from workbench.cli import EXIT_USER_ERROR, main
from workbench.errors import WorkbenchError

CLI_MODULES = (
    "workbench.cli.model",
    "workbench.cli.generate",
    "workbench.cli.scan",
    "workbench.cli.organism",
)
CANNOT_WRITE = Path("/proc")  # exists, but no file can be created in it (root included)
BOM = b"\xef\xbb\xbf"


def one_error_line(capsys, *needles: str) -> str:
    """The one ``error:`` line on stderr; it holds every needle; no traceback anywhere."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load (a command's or a report worker's) fails the test."""
    import importlib

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    for name in CLI_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "load", refuse)
    monkeypatch.setattr("workbench.report.executors.load", refuse)
    monkeypatch.setattr("workbench.lm.load_model", refuse)


@pytest.fixture
def shared_model(monkeypatch, lm):
    """The commands get the session's model instead of loading their own."""
    import importlib

    for name in CLI_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "load", lambda args: lm)
    return lm


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    plain = tmp_path / "plain.txt"
    plain.write_text("The cat sat on the mat.\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    return {"dir": tmp_path, "plain": plain, "empty": empty}


CAPTURE = ["capture", "--prompt", "hi", "--layer", "0", "--head", "0"]
GENERATE = ["generate", "--prompt", "hi", "--ablate", "L5H3", "--max-new-tokens", "2"]
SCAN = ["scan", "--analyzer", "sinks", "--quiet"]
REPORT = ["report", "--analyzers", "sinks", "--quiet", "--no-png"]

# (arguments, what the error line must say); {dir} {plain} {empty} are test files, and every
# command without --out gets one in the test folder
BEFORE_THE_MODEL = [
    (["info", "--bogus"], ["unrecognized arguments: --bogus"]),
    ([*CAPTURE[:4], "x", *CAPTURE[5:]], ["--layer", "'x'"]),
    ([*CAPTURE[:4], "-1", *CAPTURE[5:]], ["--layer", "got -1"]),
    ([*CAPTURE[:6], "1.5"], ["--head", "'1.5'"]),
    ([*CAPTURE, "--out", "{dir}"], ["is a directory"]),
    ([*CAPTURE, "--out", "{dir}/x.png"], ["must end in .npz"]),
    ([*CAPTURE, "--out", "{dir}/missing/x.npz"], ["{dir}/missing", "does not exist"]),
    ([*CAPTURE, "--out", "{plain}/x.npz"], ["{plain}", "is a file, not a folder"]),
    (["capture", "--prompt", "prompts.txt", *CAPTURE[3:]], ["'prompts.txt'", "@prompts.txt"]),
    (["capture", "--prompt", "@{dir}/nowhere.txt", *CAPTURE[3:]], ["nowhere.txt", "does not"]),
    (["capture", "--prompt", "@{empty}", *CAPTURE[3:]], ["{empty}", "is empty"]),
    (["capture", "--prompt", "@", *CAPTURE[3:]], ["'@'"]),
    (["capture", "--prompt", "  ", *CAPTURE[3:]], ["--prompt is empty"]),
    ([*SCAN, "--top", "0"], ["top_k", "got 0"]),
    ([*SCAN, "--param", "draws=0"], ["draws", "got 0"]),
    ([*SCAN, "--param", "draws=NaN"], ["draws", "nan"]),
    ([*SCAN, "--param", "bogus_param=3"], ["'bogus_param'"]),
    ([*SCAN, "--param", "n_promts=3"], ["'n_promts'", "did you mean 'n_prompts'"]),
    ([*SCAN, "--param", "progress=false"], ["--param progress", "--quiet"]),
    ([*SCAN, "--param", "top_k=3", "--top", "3"], ["--top and --param top_k"]),
    ([*SCAN, "--param", "seed=1", "--param", "seed=2"], ["--param seed is given twice"]),
    ([*SCAN, "--quick", "--param", "quick=true"], ["--quick and --param quick"]),
    ([*SCAN, "--param", "quick=3"], ["quick must be True or False", "got 3"]),
    ([*SCAN, "--prompts", "{dir}/nowhere.txt"], ["nowhere.txt", "does not exist"]),
    ([*SCAN, "--out", "{dir}/t.txt"], [".csv or .parquet"]),
    ([*GENERATE[:-1], "0"], ["--max-new-tokens", "got 0"]),
    ([*GENERATE, "--alpha", "nan"], ["--alpha", "nan"]),
    ([*GENERATE, "--mode", "scale", "--factor", "inf"], ["--factor", "inf"]),
    (["generate", "--prompt", "hi", "--ablate", "L5H?"], ["'L5H?'"]),
    (["generate", "--prompt", "hi", "--ablate", "5.3"], ["'5.3'"]),
    (["generate", "--prompt", "hi", "--pasta", "L5H3"], ["--pasta needs --emphasize"]),
    (["generate", "--prompt", "hi", "--emphasize", "hi"], ["--emphasize needs --pasta"]),
    (["generate", "--prompt", "hi"], ["nothing to do"]),
    ([*GENERATE, "--reference", "{plain}"], ["--reference is for --mode mean"]),
    ([*GENERATE, "--mode", "mean"], ["--mode mean needs --reference"]),
    (
        [*GENERATE, "--mode", "mean", "--reference", "{dir}/no.txt"],
        ["--reference file", "no.txt", "does not exist"],
    ),
    ([*GENERATE, "--mode", "mean", "--reference", "{empty}"], ["{empty}", "has no prompts"]),
    (["generate", "--prompt", "notes.jsonl", "--ablate", "L5H3"], ["'notes.jsonl'"]),
    (["bench", "--repeat", "0", "--seq", "8"], ["--repeat", "got 0"]),
    (["bench", "--seq", "0"], ["--seq 0"]),
    (["bench", "--seq", "8,x"], ["--seq '8,x'"]),
    (["organism", "--steps", "0"], ["--steps", "got 0"]),
    (["organism", "--seed", "-1"], ["--seed", "got -1"]),
    ([*REPORT, "--draws", "0"], ["--draws", "got 0"]),
    ([*REPORT, "--quick", "--draws", "-3"], ["--draws", "got -3"]),
    ([*REPORT, "--quick=yes"], ["--quick", "ignored explicit argument 'yes'"]),
    ([*REPORT, "--top-k", "0"], ["--top-k", "got 0"]),
    ([*REPORT, "--shard-size", "0"], ["--shard-size", "got 0"]),
    ([*REPORT, "--seed", "-1"], ["--seed", "got -1"]),
    ([*REPORT, "--workers", "0"], ["--workers", "got 0"]),
    ([*REPORT, "--n-prompts", "0"], ["--n-prompts", "got 0"]),
    ([*REPORT, "--examples", "-1"], ["--examples", "got -1"]),
    ([*REPORT, "--num-gpus", "nan"], ["--num-gpus", "nan"]),
    ([*REPORT, "--num-gpus", "1"], ["--address/--num-gpus need --executor ray"]),
    (["report", "--analyzers", "sinks,nope"], ["'nope'"]),
    ([*REPORT, "--model", "nobody/nothing"], ["unknown model 'nobody/nothing'"]),
    ([*REPORT, "--dtype", "int8"], ["'int8'"]),
    ([*REPORT, "--out", "{plain}"], ["{plain}", "is a file"]),
]


def _fill(args: list[str], files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in args]


@pytest.mark.parametrize(("args", "needles"), BEFORE_THE_MODEL, ids=lambda v: " ".join(v)[:60])
def test_refused_before_the_model_loads(args, needles, files, capsys, no_model, monkeypatch):
    monkeypatch.chdir(files["dir"])
    args = _fill(args, files)
    if args[0] in ("capture", "scan", "report") and "--out" not in args:
        name = {"capture": "m.npz", "scan": "t.csv"}.get(args[0], "r")
        args += ["--out", str(files["dir"] / name)]
    assert main(args) == EXIT_USER_ERROR
    one_error_line(capsys, *_fill(needles, files))


@pytest.mark.skipif(not CANNOT_WRITE.is_dir(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    ("args", "out"),
    [(CAPTURE, "m.npz"), ([*SCAN, "--param", "n_prompts=1"], "t.parquet"), (REPORT, "rep")],
    ids=["capture", "scan", "report"],
)
def test_unwritable_out_is_refused_before_any_work(args, out, capsys, no_model):
    target = CANNOT_WRITE / out
    assert main([*args, "--out", str(target)]) == EXIT_USER_ERROR
    line = one_error_line(capsys, f"--out {target}")
    assert "cannot" in line and not target.exists()


# -- errors of the model loader -------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded_folder():
    from workbench.models import ensure_embedded_cache

    return Path(ensure_embedded_cache())


@pytest.mark.model
def test_corrupt_weights_are_one_line(embedded_folder, tmp_path, capsys):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for f in embedded_folder.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, folder / f.name)
    (folder / "model.safetensors").write_bytes(
        (embedded_folder / "model.safetensors").read_bytes()[:100_000]
    )
    assert main(["info", "--load", "--model", str(folder)]) == EXIT_USER_ERROR
    one_error_line(capsys, str(folder))


@pytest.mark.model
def test_folder_without_tokenizer_is_one_line(embedded_folder, tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    shutil.copy(embedded_folder / "config.json", folder / "config.json")
    (folder / "model.safetensors").symlink_to(embedded_folder / "model.safetensors")
    assert main(["info", "--load", "--model", str(folder)]) == EXIT_USER_ERROR
    one_error_line(capsys, str(folder), "tokenizer")


@pytest.mark.model
def test_cuda_without_cuda_is_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["info", "--device", "cuda"]) == EXIT_USER_ERROR
    one_error_line(capsys, "'cuda'")


# -- errors that need the model (one shared load) -------------------------------------------
@pytest.mark.model
def test_one_token_prompts_are_one_line(shared_model, tmp_path, capsys):
    prompts = tmp_path / "one.txt"
    prompts.write_text("a\nb\nc\n", encoding="utf-8")
    args = ["scan", "--analyzer", "induction", "--prompts", str(prompts), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "t.csv")]) == EXIT_USER_ERROR
    one_error_line(capsys, "'a'")
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.model
def test_generation_past_the_context_is_refused(shared_model, capsys, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("ran a forward before refusing the length")

    monkeypatch.setattr(type(shared_model), "forward", no_forward)
    assert main([*GENERATE[:-1], "8192"]) == EXIT_USER_ERROR
    one_error_line(capsys, "8192")


@pytest.mark.model
def test_layer_wildcard_ablates_every_head_of_the_layer(shared_model, capsys):
    args = ["generate", "--prompt", "The cat sat", "--ablate", "L5H*,L7H1", "--json"]
    assert main([*args, "--max-new-tokens", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    # SmolLM2-135M has 9 query heads per layer
    heads = [f"L5H{h}" for h in range(9)] + ["L7H1"]
    assert out["interventions"] == [f"ZeroAblation({','.join(heads)})"]


@pytest.mark.model
def test_at_file_prompt_drops_the_byte_order_mark(shared_model, tmp_path, capsys):
    import numpy as np

    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(BOM + b"Alice gave Bob a book\n")
    out = tmp_path / "m.npz"
    args = ["capture", "--prompt", f"@{prompt}", "--layer", "1", "--head", "2"]
    assert main([*args, "--out", str(out)]) == 0
    tokens = list(np.load(out)["tokens"])
    assert tokens == shared_model.encode("Alice gave Bob a book").tokens


@pytest.mark.model
def test_double_at_is_literal_text(shared_model, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "m.npz"
    args = ["capture", "--prompt", "@@home", "--layer", "0", "--head", "0", "--out", str(out)]
    assert main(args) == 0
    assert list(np.load(out)["tokens"]) == shared_model.encode("@home").tokens


def test_reference_lines_drop_the_byte_order_mark(tmp_path):
    from workbench.cli.common import read_prompt_lines

    path = tmp_path / "ref.txt"
    path.write_bytes(BOM + b"first prompt\n\nsecond prompt\n")
    assert read_prompt_lines(str(path)) == ["first prompt", "second prompt"]


# -- main itself ----------------------------------------------------------------------------
def _fake_command(monkeypatch, name: str, error: BaseException) -> None:
    from workbench.cli import registry

    def run(args: argparse.Namespace) -> int:
        raise error

    command = registry.Command(name, "test", lambda p: None, run)
    monkeypatch.setitem(registry._BUILTIN, name, command)


def test_multiline_workbench_error_is_one_line(monkeypatch, capsys):
    _fake_command(monkeypatch, "fails", WorkbenchError("first part\n  second part"))
    assert main(["fails"]) == EXIT_USER_ERROR
    assert one_error_line(capsys) == "error: first part second part"


def test_unexpected_exception_keeps_its_traceback(monkeypatch):
    _fake_command(monkeypatch, "bug", RuntimeError("a bug must stay visible"))
    with pytest.raises(RuntimeError, match="a bug must stay visible"):
        main(["bug"])


# -- the app's analyzer form ----------------------------------------------------------------
FORM = {"n_prompts": 2, "causal": True, "top_k": 3}


@pytest.mark.model
@pytest.mark.parametrize(
    ("name", "box", "needles"),
    [
        ("sinks", '{"bogus_param": 3}', ["'bogus_param'"]),
        ("safety", '{"layers": [99]}', ["layers", "99"]),
        ("sinks", '{"draws": 0}', ["draws", "got 0"]),
        ("sinks", '{"progress": false}', ["progress"]),
        ("sinks", "[1, 2]", ["JSON object"]),
        ("sinks", "{bad", ["must be JSON"]),
    ],
)
def test_app_more_parameters_are_checked(name, box, needles, lm):
    from app.views.atlas import analyzer_params

    with pytest.raises(WorkbenchError) as exc:
        analyzer_params(name, FORM, box, lm)
    for needle in needles:
        assert needle in str(exc.value)


@pytest.mark.model
def test_app_form_fields_go_only_to_analyzers_that_take_them(lm):
    from app.views.atlas import analyzer_params

    assert analyzer_params("sinks", FORM, '{"draws": 2}', lm) == {**FORM, "draws": 2}
    assert analyzer_params("atlas", FORM, "", lm) == {"n_prompts": 2}  # no causal, no top_k
