"""Every ``workbench`` command under generated command lines: a bad option value, an unknown
option or a conflicting pair ends in exit status 2 and exactly one ``error:`` line on stderr,
never a traceback. Without a model (``no_model_load`` fails the test if one would load) every
check that needs none must refuse first; with the session's model handed to the commands the
checks that need it must refuse before any forward."""

from __future__ import annotations

import importlib
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import no_hooks_left
from tests.property import cli_argv
from tests.property.analyzer_values import bad as bad_param
from tests.property.analyzer_values import is_json
from tests.property.strategies import surrogate_text
from tests.property.support import CONTEXT, N_HEADS, N_LAYERS, cases, count_case
from workbench.cli import EXIT_USER_ERROR, all_commands, main

pytestmark = pytest.mark.timeout(600)

COMMANDS = ["info", "capture", "bench", "generate", "scan", "organism", "report", "app"]
CLI_MODULES = ("model", "generate", "scan", "organism")


def test_every_command_has_mutations():
    count_case()
    names = sorted(c.name for c in all_commands())
    assert names == sorted(COMMANDS), "add the new command's bad command lines to cli_argv.py"


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> cli_argv.Paths:
    root = tmp_path_factory.mktemp("cli")
    (root / "work").mkdir()
    (root / "folder").mkdir()
    (root / "plain.txt").write_text("The cat sat on the mat.\n", encoding="utf-8")
    (root / "empty.txt").write_text("\n", encoding="utf-8")
    (root / "long.txt").write_text("the cat sat " * (CONTEXT // 2), encoding="utf-8")
    return cli_argv.Paths(root / "work", root / "folder", root / "plain.txt", root / "empty.txt")


def empty_out(folder: Path) -> None:
    """Remove what an earlier example left in ``folder`` (its failure is reported there)."""
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run(argv: list[str]) -> tuple[int, str]:
    """``main(argv)``: its exit status and stderr. Written to a StringIO, as a real stderr
    writes any string (its error handler is ``backslashreplace``) where pytest's capture
    refuses lone surrogates."""
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


def one_error_line(err: str) -> str:
    """The one ``error:`` line of ``err``, and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@cases(40)
@given(data=st.data())
def test_bad_command_lines_exit_2_before_any_model(
    no_model_load, paths, monkeypatch, command, data
):
    count_case()
    empty_out(paths.workdir)
    monkeypatch.chdir(paths.workdir)  # relative names resolve in an empty folder
    mutation = data.draw(st.one_of(cli_argv.mutations(command, paths)), label="mutation")
    argv = cli_argv.base(command, paths) + mutation
    status, err = run(argv)
    one_error_line(err)
    assert status == EXIT_USER_ERROR
    assert sorted(p.name for p in paths.workdir.iterdir()) == [], "a command wrote output"


@pytest.fixture
def shared_model(monkeypatch, lm):
    """The commands get the session's model instead of loading one."""
    for name in CLI_MODULES:
        module = importlib.import_module(f"workbench.cli.{name}")
        monkeypatch.setattr(module, "load", lambda args: lm)
    return lm


def needs_the_model(paths: cli_argv.Paths) -> st.SearchStrategy[list[str]]:
    """Command lines whose fault only the model shows: ranges, the context, the tokenizer."""
    prompt = ["--prompt", "the cat sat on the mat"]
    out = ["--out", str(paths.workdir / "x.npz")]
    long_file = paths.workdir.parent / "long.txt"
    return st.one_of(
        st.integers(N_LAYERS, 10**6).map(
            lambda n: ["capture", *prompt, "--layer", str(n), "--head", "0", *out]
        ),
        st.integers(N_HEADS, 10**6).map(
            lambda n: ["capture", *prompt, "--layer", "0", "--head", str(n), *out]
        ),
        surrogate_text.map(
            lambda p: ["capture", "--prompt", p, "--layer", "0", "--head", "0", *out]
        ),
        st.just(["capture", "--prompt", f"@{long_file}", "--layer", "0", "--head", "0", *out]),
        st.integers(CONTEXT + 1, 10**7).map(lambda n: ["bench", "--seq", f"8,{n}"]),
        st.tuples(st.integers(0, 99), st.integers(0, 99))
        .filter(lambda lh: lh[0] >= N_LAYERS or lh[1] >= N_HEADS)
        .map(lambda lh: ["generate", *prompt, "--ablate", f"L{lh[0]}H{lh[1]}"]),
        st.integers(CONTEXT - 5, 10**6).map(
            lambda n: ["generate", *prompt, "--ablate", "L1H1", "--max-new-tokens", str(n)]
        ),
        st.sampled_from(["dog", "Cat", "sat  on"]).map(
            lambda e: ["generate", *prompt, "--pasta", "L1H1", "--emphasize", e]
        ),
        surrogate_text.map(lambda p: ["generate", "--prompt", p, "--ablate", "L1H1"]),
        st.sampled_from(
            [(n, p) for n in sorted(cli_argv.ANALYZERS) for p in cli_argv.ANALYZERS[n].parameters()
             if p != "progress"]
        ).flatmap(
            lambda np_: bad_param(np_[1], model=True, json_only=True)
            .filter(is_json)
            .map(lambda v, np_=np_: ["scan", "--analyzer", np_[0], "--quiet",
                                     "--out", str(paths.workdir / "t.csv"),
                                     "--param", f"{np_[1]}={cli_argv.json.dumps(v)}"])
        ),
    )  # fmt: skip


@pytest.mark.model
@cases(120)
@given(data=st.data())
def test_faults_only_the_model_shows_exit_2_before_any_forward(
    shared_model, forwards, paths, monkeypatch, data
):
    count_case(forwards)
    empty_out(paths.workdir)
    monkeypatch.chdir(paths.workdir)
    argv = data.draw(needs_the_model(paths), label="argv")
    status, err = run(argv)
    one_error_line(err)
    assert status == EXIT_USER_ERROR
    assert not forwards and no_hooks_left(shared_model)
    assert sorted(p.name for p in paths.workdir.iterdir()) == [], "a command wrote output"
