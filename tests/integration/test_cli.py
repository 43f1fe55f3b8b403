"""The ``workbench`` command line: info, capture, and one-line errors with non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import attn_implementation
from workbench.cli import EXIT_USER_ERROR, main

pytestmark = pytest.mark.model


def test_info_json(capsys, lm):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: info[k] for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim")} == {
        "n_layers": 30,
        "n_heads": 9,
        "n_kv_heads": 3,
        "head_dim": 64,
    }


def test_capture_writes_the_eager_map(tmp_path, capsys, lm):
    out = tmp_path / "map.npz"
    prompt = "Alice gave Bob a book because"
    assert (
        main(["capture", "--prompt", prompt, "--layer", "3", "--head", "4", "--out", str(out)]) == 0
    )
    data = np.load(out)
    enc = lm.encode(prompt)
    assert list(data["tokens"]) == enc.tokens
    assert data["attention"].dtype == np.float32
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        ref = lm.model(input_ids=enc.input_ids, output_attentions=True).attentions[3][0, 4]
    assert np.abs(data["attention"] - ref.numpy()).max() <= 1e-5


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["capture", "--prompt", "", "--layer", "0", "--head", "0"], "prompt is empty"),
        (["capture", "--prompt", "hi", "--layer", "30", "--head", "0"], "layer 30"),
        (["capture", "--prompt", "hi", "--layer", "0", "--head", "12"], "head 12"),
        (["info", "--model", "nobody/nothing"], "unknown model 'nobody/nothing'"),
        (["capture", "--prompt", "word " * 9000, "--layer", "0", "--head", "0"], "8192"),
    ],
)
def test_user_errors_are_one_line(args, match, tmp_path, capsys, lm):
    if args[0] == "capture":
        args = [*args, "--out", str(tmp_path / "x.npz")]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and match in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_out_path_that_is_a_directory(tmp_path, capsys):
    rc = main(["capture", "--prompt", "hi", "--layer", "0", "--head", "0", "--out", str(tmp_path)])
    assert rc == EXIT_USER_ERROR
    assert "is a directory" in capsys.readouterr().err


def test_console_script_runs(lm):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "capture",
            "--prompt",
            "hi",
            "--layer",
            "99",
            "--head",
            "0",
            "--out",
            "x.npz",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.strip().splitlines()[-1].startswith("error: layer 99")


def test_scan_list(capsys):
    assert main(["scan", "--list"]) == 0
    names = [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert {"sinks", "previous_token", "duplicate_token", "induction"} <= set(names)
    assert names == sorted(names)


def test_scan_writes_table(tmp_path, capsys, lm):
    import pandas as pd

    prompts = tmp_path / "p.txt"
    prompts.write_text("one two three one two three\n\nred green blue red green blue\n")
    out = tmp_path / "ind.parquet"
    args = [
        "scan",
        "--analyzer",
        "induction",
        "--prompts",
        str(prompts),
        "--top",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    df = pd.read_parquet(out)
    assert len(df) == 270 and list(df.columns[:4]) == ["layer", "head", "head_id", "score"]
    meta = json.loads((tmp_path / "ind.parquet.json").read_text())
    assert meta["prompts_used"] == 2 and meta["causal"]["k"] == 2


def test_scan_params_reach_the_analyzer(tmp_path, capsys, lm):
    out = tmp_path / "sinks.csv"
    args = ["scan", "--analyzer", "sinks", "--param", "n_prompts=2", "--param", "prompt_tokens=24"]
    assert main([*args, "--param", "causal=false", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((tmp_path / "sinks.csv.json").read_text())
    assert meta["prompts_used"] == 2 and "causal" not in meta
    assert meta["params"]["prompt_tokens"] == 24


def test_scan_quick_prints_stability_verdict_and_weak_evidence(tmp_path, capsys, lm):
    import math

    import pandas as pd

    from workbench.analyzers import get_analyzer
    from workbench.analyzers.base import QUICK_NOTE

    prompts = tmp_path / "p.txt"
    words = ["one two three four", "red green blue black", "cat dog cow hen", "oak elm ash fir"]
    prompts.write_text("".join(f"{w} {w}\n" for w in words) + "sun moon star sky sun moon\n")
    out = tmp_path / "ind.csv"
    args = ["scan", "--analyzer", "induction", "--prompts", str(prompts), "--top", "2"]
    assert main([*args, "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out.splitlines()
    text = (tmp_path / "ind.csv.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    # --quick reached the analyzer: its attrs say so and its causal check ran quick's draws
    assert meta["quick"] is True and meta["note"] == QUICK_NOTE
    assert meta["causal"]["draws"] == type(get_analyzer("induction")).quick_params["draws"]
    assert len(meta["causal"]["random_k"]) == meta["causal"]["draws"]
    assert meta["params"]["causal_prompts"] == 4 and meta["prompts_used"] == 5
    # the verdict, the stability and the note are printed, with the analyzer's values
    causal, stab = meta["causal"], meta["stability"]
    verdict = next(line for line in printed if line.startswith(causal["verdict"]))
    lo, hi = causal["effect_top_lo"], causal["effect_top_hi"]
    if lo is not None and math.isfinite(lo):
        assert f"95% CI [{lo:.3g}, {hi:.3g}]" in verdict
    assert (
        f"ranking stability: split-half Spearman {stab['spearman']:.2f} "
        f"(min {stab['spearman_min']:.2f}), top-{stab['k']} overlap {stab['top_k_overlap']:.2f}"
    ) in printed[printed.index(verdict) - 1]
    assert stab["items_per_half"] == 2
    assert printed[-1] == QUICK_NOTE
    # the top heads with their intervals, as in the table
    df = pd.read_csv(out)
    best = df.nlargest(1, "score").iloc[0]
    top_line = next(line for line in printed if line.startswith("top heads: "))
    first = f"{best.head_id} {best.score:.3f} [{best.score_lo:.3f}, {best.score_hi:.3f}]"
    assert top_line.startswith(f"top heads: {first}")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["scan", "--analyzer", "nope", "--out", "x.csv"], "unknown analyzer 'nope'"),
        (["scan", "--analyzer", "sinks", "--out", "x.txt"], ".csv or .parquet"),
        (
            ["scan", "--analyzer", "sinks", "--prompts", "/no/such.txt", "--out", "x.csv"],
            "does not exist",
        ),
        (
            ["scan", "--analyzer", "sinks", "--param", "n_promts=4", "--out", "x.csv"],
            "analyzer 'sinks' takes no parameter 'n_promts' (did you mean 'n_prompts'?)",
        ),
        (["scan", "--analyzer", "sinks", "--param", "n_prompts", "--out", "x.csv"], "KEY=VALUE"),
        (["organism", "--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_scan_errors(args, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == EXIT_USER_ERROR
    assert match in capsys.readouterr().err


def test_organism_prints_the_cached_folder(capsys, lm):
    from pathlib import Path

    from workbench.organisms import refusal

    assert main(["organism", "--quiet"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == refusal.organism_dir()
    assert (path / "workbench_organism.json").is_file() and (path / "config.json").is_file()


def test_app_command_comes_from_the_entry_point(capsys):
    from workbench.cli.registry import ENTRY_POINT_GROUP, all_commands

    names = [c.name for c in all_commands()]
    assert names == ["info", "capture", "bench", "generate", "scan", "organism", "report", "app"]
    with pytest.raises(SystemExit) as exc:
        main(["app", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--model", "--host", "--port", "--debug"))
    from importlib import metadata

    (entry,) = [e for e in metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == "app"]
    assert entry.value == "app.command:COMMAND"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("no_such_package.command:COMMAND", "No module named 'no_such_package'"),
        ("json:__name__", "gives a str, not a workbench.cli.registry.Command"),
    ],
)
def test_broken_entry_point_is_one_error_line(value, match, capsys, monkeypatch):
    from importlib import metadata

    from workbench.cli import registry

    broken = metadata.EntryPoint(name="broken", value=value, group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [broken])
    assert main(["broken", "--anything", "x"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: command 'broken' cannot be loaded")
    assert match in err[0]
    from workbench.cli import build_parser

    assert build_parser().parse_args(["info", "--json"]).json  # the others still work


def test_missing_command_is_one_error_line(capsys, monkeypatch):
    from workbench.cli import registry

    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [])
    assert main(["app", "--port", "1"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown command 'app'")
    assert "workbench.commands" in err[0]


def test_core_never_imports_a_front_end():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("kernels", "probes", "workbench"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                if any(n == "app" or n.startswith("app.") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
