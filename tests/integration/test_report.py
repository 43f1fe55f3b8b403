"""`workbench report` end to end on the real model: outputs, HTML/PNG, resume after SIGKILL,
Ray vs serial, --force refusal, bad input.

One small configuration (4 prompts in 2 shards, previous-token + sinks, causal top-2 with one
random draw) is shared by every run so that their tables can be compared exactly: every unit
is deterministic (fixed seeds, same thread count on Ray workers), and the driver always
assembles from the checkpoint files, so resumed, uninterrupted and Ray runs must agree
bit for bit.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from workbench.cli import main
from workbench.report.render import find_chromium

pytestmark = pytest.mark.model

PROMPTS = [
    "The cat sat on the mat. The cat sat on the mat.",
    "Alice went to the market and Bob went home. Alice went to the market.",
    "One two three four five one two three four five",
    "When Mary and John went to the store, John gave a drink to",
]
ANALYZERS = "previous_token,sinks"
TABLES = [
    "heads.parquet",
    "evidence/previous_token.parquet",
    "evidence/sinks.parquet",
    "evidence/causal.parquet",
]


def report_args(prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "report",
        "--analyzers",
        ANALYZERS,
        "--prompts",
        str(prompts),
        "--shard-size",
        "2",
        "--top-k",
        "2",
        "--draws",
        "1",
        "--examples",
        "1",
        "--out",
        str(out),
        *extra,
    ]


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "workbench.cli", *args]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def assert_same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(
            pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True, obj=name
        )


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prompts) -> Path:
    """An uninterrupted serial run, with PNGs."""
    out = tmp_path_factory.mktemp("ref") / "report"
    start = time.perf_counter()
    assert main(report_args(prompts, out, "--quiet")) == 0
    (out / "wall_s.txt").write_text(f"{time.perf_counter() - start:.1f}")
    return out


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory, prompts) -> tuple[Path, str]:
    """The same small report with --quick and without --draws (quick's own draws apply), and
    what the command printed."""
    out = tmp_path_factory.mktemp("quick") / "report"
    args = report_args(prompts, out, "--quiet", "--no-png", "--quick")
    del args[args.index("--draws") : args.index("--draws") + 2]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return out, printed.getvalue()


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.inline_sizes: list[int] = []
        self.grids: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            if attrs.get("src"):
                self.external.append(attrs["src"])
            self._in_script = True
        if tag == "section" and attrs.get("class") == "grid":
            self.grids.append(attrs.get("data-analyzer"))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.inline_sizes.append(len(data))


@pytest.mark.slow
def test_outputs(reference):
    heads = pd.read_parquet(reference / "heads.parquet")
    assert len(heads) == 30 * 9
    wanted = {"previous_token.score", "sinks.score", "sinks.is_sink_head", "previous_token.rank"}
    assert {"model", "layer", "head", "head_id", "sinks.causal_top_k"} | wanted <= set(heads)
    assert heads["sinks.causal_top_k"].sum() == 2
    csv = pd.read_csv(reference / "heads.csv")
    assert list(csv.columns) == list(heads.columns) and len(csv) == len(heads)
    causal = pd.read_parquet(reference / "evidence/causal.parquet")
    assert set(causal["analyzer"]) == {"previous_token", "sinks"}
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["counts"]["shards"]["smollm2-135m-instruct/sinks"] == 2
    assert summary["counts"]["prompts_used"]["smollm2-135m-instruct/sinks"] == 4
    assert summary["versions"]["torch"] and "compute_s" in summary["timings"]
    assert summary["params"]["top_k"] == 2


@pytest.mark.slow
def test_html_is_self_contained(reference):
    parser = _Scripts()
    parser.feed((reference / "report.html").read_text(encoding="utf-8"))
    assert parser.external == []  # no <script src=...>: opens offline
    assert max(parser.inline_sizes) > 1_000_000  # plotly.js itself is inline
    assert parser.grids == ["previous_token", "sinks"]
    text = (reference / "report.html").read_text(encoding="utf-8")
    for anchor in ("id='causal'", "id='top'", "id='params'", "id='versions'", "map-sinks-0"):
        assert anchor in text


@pytest.mark.slow
def test_pngs(reference):
    if find_chromium() is None:
        pytest.skip("no Chromium found (set BROWSER_PATH); PNG export needs one")
    pngs = sorted((reference / "figures").glob("*.png"))
    assert {p.name for p in pngs} >= {"grid_previous_token.png", "grid_sinks.png", "causal.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(reference, prompts, tmp_path):
    out = tmp_path / "report"
    args = cli(report_args(prompts, out, "--quiet", "--no-png"))
    rng = random.Random(1234)
    ref_wall = float((reference / "wall_s.txt").read_text())
    for _ in range(2):  # two kills at random points, each after a checkpoint exists
        before = set((out / "checkpoints").rglob("*")) if out.exists() else set()
        proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if set((out / "checkpoints").rglob("*.parquet")) - before or (
                before and (out / "checkpoints").exists()
            ):
                break
            time.sleep(0.1)
        time.sleep(rng.uniform(0, ref_wall / 4))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list((out / "checkpoints").rglob("*.parquet")), "no checkpoint survived the kills"
    assert not [p for p in out.rglob("*.tmp")], "a temporary file was left as a checkpoint"
    commits = [  # a unit's commit file: its table, or its JSON (attrs files precede tables)
        p
        for p in (out / "checkpoints").rglob("*")
        if p.suffix == ".parquet" or (p.suffix == ".json" and not p.name.endswith(".attrs.json"))
    ]
    done = {p: p.stat().st_mtime_ns for p in commits}
    result = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for path, mtime in done.items():  # finished shards were neither recomputed nor lost
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["units_reused"] >= 1
    assert_same_tables(reference, out)


@pytest.mark.slow
def test_ray_two_workers_matches_serial(reference, prompts, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "report"
    start = time.perf_counter()
    result = subprocess.run(
        cli(
            report_args(prompts, out, "--quiet", "--no-png", "--executor", "ray", "--workers", "2")
        ),
        env=env(),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["run"]["executor"] == "ray"
    assert summary["params"]["run"]["workers"] == 2
    serial = (reference / "wall_s.txt").read_text()
    print(f"ray report {time.perf_counter() - start:.1f} s (serial in-process run {serial} s)")
    assert_same_tables(reference, out)


def test_other_parameters_are_refused_without_force(reference, prompts, capsys):
    args = report_args(prompts, reference, "--quiet")
    args[args.index("--top-k") + 1] = "3"
    code = main(args)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "other parameters" in err and "--force" in err
    assert "top_k" in err and len(err.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("analyzer", "unknown analyzer(s) 'nope'"),
        ("utf8", "line 3: not valid UTF-8"),
        ("jsonl", "line 2: not valid JSON"),
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("address", "does not answer"),
    ],
)
def test_bad_input(case, match, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    args = report_args(prompts, out, "--quiet", "--no-png")
    if case == "analyzer":
        args[args.index(ANALYZERS)] = "sinks,nope"
    elif case == "utf8":
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"fine\nalso fine\n\xff\xfe broken\n")
        args[args.index(str(prompts))] = str(bad)
    elif case == "jsonl":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
        args[args.index(str(prompts))] = str(bad)
    elif case == "missing":
        args[args.index(str(prompts))] = str(tmp_path / "nowhere.txt")
    elif case == "file":
        out.write_text("I am a file")
    elif case == "address":
        args += ["--executor", "ray", "--address", f"127.0.0.1:{_free_port()}"]
    start = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and match in err, err
    assert len(err.splitlines()) == 1
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_two_real_models_side_by_side(prompts, tmp_path):
    """The embedded model next to the refusal organism (fine-tuned in layers 24-29 only): one
    row per (model, layer, head); below layer 24 the two models compute the same attention, so
    their scores must agree exactly, and in the fine-tuned layers they must not."""
    from workbench.organisms import refusal, refusal_training

    organism = refusal.build_refusal_organism(progress=False)
    out = tmp_path / "two"
    args = ["report", "--model", "SmolLM2-135M-Instruct", "--model", str(organism)]
    args += ["--analyzers", "previous_token", "--prompts", str(prompts), "--no-causal"]
    assert main([*args, "--examples", "0", "--no-png", "--quiet", "--out", str(out)]) == 0
    heads = pd.read_parquet(out / "heads.parquet")
    assert heads.groupby("model").size().to_dict() == {
        "SmolLM2-135M-Instruct": 270,
        "SmolLM2-135M-Instruct-refusal": 270,
    }
    base, org = (
        part.set_index("head_id")["previous_token.score"] for _, part in heads.groupby("model")
    )
    layer = heads.drop_duplicates("head_id").set_index("head_id")["layer"]
    trained = sorted(refusal_training.DEFAULT_TRAIN_LAYERS)
    assert (base[layer < trained[0]] == org[layer < trained[0]]).all()
    assert (base[layer >= trained[0]] - org[layer >= trained[0]]).abs().max() > 1e-3
    grid = (out / "report.html").read_text(encoding="utf-8")
    assert "SmolLM2-135M-Instruct-refusal" in grid


def _page_text(folder: Path) -> str:
    return html.unescape((folder / "report.html").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_quick_reaches_every_analyzer_and_says_the_evidence_is_weak(quick_report):
    from workbench.analyzers import get_analyzer
    from workbench.analyzers.base import QUICK_NOTE

    out, printed = quick_report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["quick"] is True and summary["params"]["draws"] is None
    causal = pd.read_parquet(out / "evidence/causal.parquet").set_index("analyzer")
    for name in ANALYZERS.split(","):
        attrs = summary["analyzer_attrs"]["smollm2-135m-instruct"][name]
        assert attrs["quick"] is True and attrs["note"] == QUICK_NOTE
        quick_draws = type(get_analyzer(name)).quick_params["draws"]
        assert attrs["causal"]["draws"] == quick_draws == causal.loc[name, "draws"]
        assert len(attrs["causal"]["random_k"]) == quick_draws  # the draws really ran
        assert bool(causal.loc[name, "quick"])
    assert printed.splitlines()[-1] == QUICK_NOTE
    page = _page_text(out)
    assert QUICK_NOTE in page and "id='quick'" in page


@pytest.mark.slow
def test_tables_and_page_carry_the_analyzers_uncertainty(quick_report):
    out, printed = quick_report
    summary = json.loads((out / "summary.json").read_text())
    every = summary["analyzer_attrs"]["smollm2-135m-instruct"]
    causal = pd.read_parquet(out / "evidence/causal.parquet").set_index("analyzer")
    heads = pd.read_csv(out / "heads.csv")
    page = _page_text(out)
    for name in ANALYZERS.split(","):
        attrs, row = every[name], causal.loc[name]
        c = attrs["causal"]
        # the table's values are the analyzer's, not recomputed
        for key in ("p_value", "ratio", "effect_top", "effect_random", "effect_top_lo"):
            assert row[key] == pytest.approx(c[key], nan_ok=True), key
        assert row["verdict"] == c["verdict"] and row["items"] == c["items"] == 4
        assert c["verdict"] in page and c["verdict"] in printed
        # split-half stability of the merged shards, on the page next to the scores
        stab = attrs["stability"]
        assert attrs["uncertainty"]["items"] == 4 and stab["items_per_half"] == 2
        assert f"split-half Spearman {stab['spearman']:.2f}" in page
        assert f"top-{stab['k']} overlap {stab['top_k_overlap']:.2f}" in page
        # per-head intervals in heads.csv, equal to the analyzer's table
        table = pd.read_parquet(out / f"evidence/{name}.parquet").set_index("head_id")
        mine = heads.set_index("head_id")
        for end in ("lo", "hi"):
            got = mine[f"{name}.score_{end}"]
            assert got.to_numpy() == pytest.approx(table.loc[got.index, f"score_{end}"].to_numpy())
        assert (mine[f"{name}.score_lo"] <= mine[f"{name}.score"] + 1e-12).all()
        # the per-item values stay in summary.json, out of the page
        values = [v for item in attrs["per_item"] for layer in item for v in layer]
        assert len(values) == 4 * 270
        samples = [repr(v) for v in values if len(repr(v)) > 12][:20]
        assert samples and not any(v in page for v in samples)
    assert "per_item" not in page


@pytest.mark.slow
def test_draws_still_given_and_no_quick_banner(reference):
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["params"]["quick"] is False and summary["params"]["draws"] == 1
    causal = pd.read_parquet(reference / "evidence/causal.parquet")
    assert (causal["draws"] == 1).all() and not causal["quick"].any()
    assert causal["verdict"].str.startswith("no evidence").all()  # p >= 1 / 2 with one draw
    assert (causal["p_value"] >= 0.5).all() and (causal["p_min"] == 0.5).all()
    page = _page_text(reference)
    assert "id='quick'" not in page and "id='evidence'" in page
