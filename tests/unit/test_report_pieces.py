"""Pure pieces of the report: plan, fingerprint, store, merge rule, address checks."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pandas as pd
import pytest

from workbench.analyzers import top_heads
from workbench.analyzers.base import merge_mean_frames
from workbench.report.assemble import causal_table, heads_table
from workbench.report.executors import check_reachable, make_executor
from workbench.report.plan import ModelSpec, ReportConfig, ReportError, fingerprint, split
from workbench.report.store import Store, atomic_write


def frame(scores, used, model="m"):
    n = len(scores)
    df = pd.DataFrame(
        {
            "layer": np.arange(n) // 2,
            "head": np.arange(n) % 2,
            "head_id": [f"L{i // 2}H{i % 2}" for i in range(n)],
            "score": np.asarray(scores, dtype=float),
            "extra": np.asarray(scores, dtype=float) * 2,
        }
    )
    df.attrs = {"prompts_used": used, "prompts_total": used, "seconds": 1.0, "params": {}}
    return df


def test_split_is_contiguous():
    assert split(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_weighted_mean_equals_mean_over_prompts():
    per_prompt = np.random.default_rng(0).random((5, 4))
    shards = [
        frame(per_prompt[:2].mean(0), 2),
        frame(per_prompt[2:4].mean(0), 2),
        frame(per_prompt[4:].mean(0), 1),
    ]
    merged = merge_mean_frames(shards)
    np.testing.assert_allclose(merged["score"], per_prompt.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged["extra"], 2 * per_prompt.mean(0), rtol=1e-12)
    assert merged.attrs["prompts_used"] == 5 and merged.attrs["shards"] == 3


def test_merge_refuses_boolean_flags_without_override():
    a, b = frame([1, 2], 1), frame([3, 4], 1)
    a["flag"] = b["flag"] = True
    with pytest.raises(NotImplementedError, match="flag"):
        merge_mean_frames([a, b])


def test_fingerprint_changes_with_content_not_with_executor():
    base = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x")
    ray = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="y", executor="ray")
    other = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x", top_k=3)
    assert fingerprint(base, [])[0] == fingerprint(ray, [])[0]
    assert fingerprint(base, [])[0] != fingerprint(other, [])[0]


def test_store_claim_resume_refuse_force(tmp_path):
    store = Store(tmp_path / "r")
    assert store.claim("a", {"top_k": 5}, force=False) is False
    store.save_json("m/x/causal-0000", {"v": 1})
    assert store.claim("a", {"top_k": 5}, force=False) is True
    with pytest.raises(ReportError, match=r"other parameters \(differing: top_k\).*--force"):
        store.claim("b", {"top_k": 3}, force=False)
    (tmp_path / "r" / "mine.txt").write_text("keep me")
    store.claim("b", {"top_k": 3}, force=True)
    assert not store.has("m/x/causal-0000", table=False)
    assert (tmp_path / "r" / "mine.txt").read_text() == "keep me"  # only our files removed


def test_store_refuses_foreign_folder_and_file(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ReportError, match="not empty and holds no report"):
        Store(tmp_path).claim("a", {}, force=False)
    with pytest.raises(ReportError, match="is a file"):
        Store(tmp_path / "data.txt").claim("a", {}, force=False)


def test_frame_roundtrip_keeps_attrs(tmp_path):
    store = Store(tmp_path)
    df = frame([0.5, 0.25], 2)
    df.attrs["causal"] = {"top_heads": ["L0H0"], "base": np.float64(1.5)}
    store.save_frame("m/a/shard-0000", df)
    back = store.load_frame("m/a/shard-0000")
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back.attrs["causal"]["base"] == 1.5


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write(tmp_path / "f.json", json.dumps({"a": 1}).encode())
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_heads_and_causal_tables():
    a = frame([0.1, 0.9, 0.5, 0.2], 1)
    a.attrs["causal"] = {
        "base": 1.0,
        "top_k": 2.0,
        "random_k_mean": 1.2,
        "random_k": [1.2],
        "k": 1,
        "draws": 1,
        "metric": "loss",
        "top_heads": ["L0H1"],
        "random_heads": [["L0H0"]],
    }
    table = heads_table({"m1": {"a": a}, "m2": {"a": frame([1, 2, 3, 4], 1)}})
    assert len(table) == 8 and set(table["model"]) == {"m1", "m2"}
    row = table[(table.model == "m1") & (table.head_id == "L0H1")].iloc[0]
    assert row["a.rank"] == 1 and row["a.causal_top_k"]
    assert top_heads(a, 2) == [(0, 1), (1, 0)]
    causal = causal_table({"m1": {"a": a}})
    assert causal.loc[0, "effect_top_k"] == pytest.approx(1.0)


def test_unknown_executor():
    with pytest.raises(ReportError, match="unknown executor 'dask'"):
        make_executor("dask")


def test_unanswered_address_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    start = time.perf_counter()
    with pytest.raises(ReportError, match="does not answer"):
        check_reachable(f"127.0.0.1:{port}", timeout=5)
    assert time.perf_counter() - start < 10
    with pytest.raises(ReportError, match="HOST:PORT"):
        check_reachable("nonsense")


# -- uncertainty and quick mode in the report (issue 15) ----------------------------------------
def _causal(p_value_case: str = "hand") -> dict:
    """A causal check on a loss (lower is better) with per-item values worked by hand:
    base 1 on 4 items; top-k ablated [2, 3, 2, 3] -> effect 1.5; three random draws with
    effects 0, 0.5, 0.5 (mean 1/3) -> ratio 4.5, none hurts as much: p = (1 + 0) / (3 + 1)."""
    from workbench.analyzers.uncertainty import causal_significance

    base, top = [1.0] * 4, [2.0, 3.0, 2.0, 3.0]
    random = [[1.0] * 4, [1.5] * 4, [1.0, 2.0, 1.0, 2.0]]
    out = {
        "metric": "loss",
        "higher_is_better": False,
        "mode": "zero",
        "k": 1,
        "draws": 3,
        "items": 4,
        "base": 1.0,
        "top_k": 2.5,
        "random_k": [1.0, 1.5, 1.5],
        "random_k_mean": 4 / 3,
        "top_heads": ["L0H1"],
        "random_heads": [["L0H0"], ["L0H0"], ["L0H0"]],
        "base_items": base,
        "top_k_items": top,
        "random_k_items": random,
    }
    out.update(causal_significance(base, top, random, higher_is_better=False, k=1))
    return out


def test_causal_table_carries_every_significance_key():
    from workbench.analyzers.uncertainty import causal_significance
    from workbench.report.assemble import SIGNIFICANCE_KEYS

    a = frame([0.1, 0.9, 0.5, 0.2], 4)
    a.attrs["causal"] = _causal()
    a.attrs["quick"] = True
    row = causal_table({"m": {"a": a}}).iloc[0]
    # the keys the analyzers' function produces, all of them columns
    produced = set(causal_significance([1.0], [2.0], [[1.0]], k=1))
    assert produced == set(SIGNIFICANCE_KEYS) and produced <= set(row.index)
    assert row["effect_top"] == pytest.approx(1.5)  # hand-worked, see _causal
    assert row["effect_random"] == pytest.approx(1 / 3)
    assert row["ratio"] == pytest.approx(4.5)
    assert row["p_value"] == pytest.approx(0.25) and row["p_min"] == pytest.approx(0.25)
    assert row["effect_random_each"] == "0,0.5,0.5"
    assert row["verdict"] == a.attrs["causal"]["verdict"] and "no evidence" in row["verdict"]
    assert row["effect_top_lo"] == a.attrs["causal"]["effect_top_lo"]
    assert row["effect_top_lo"] <= 1.5 <= row["effect_top_hi"]
    assert row["items"] == 4 and bool(row["quick"]) and not bool(row["significant"])
    # raw changes keep their meaning: ablated minus base, in the metric's sign
    assert row["effect_top_k"] == pytest.approx(1.5) and row["effect_random_k"] == pytest.approx(
        1 / 3
    )


def test_causal_table_of_a_check_without_significance():
    a = frame([0.1, 0.9], 1)
    a.attrs["causal"] = {"base": 1.0, "top_k": 2.0, "random_k_mean": 1.2, "random_k": [1.2]}
    row = causal_table({"m": {"a": a}}).iloc[0]
    assert np.isnan(row["p_value"]) and row["verdict"] is None and row["effect_random_each"] == ""


def _stable_frame() -> pd.DataFrame:
    df = frame([0.1, 0.9, 0.5, 0.2], 8)
    df["score_lo"], df["score_hi"] = df["score"] - 0.05, df["score"] + 0.05
    df.attrs.update(
        {
            "uncertainty": {"level": 0.95, "resamples": 1000, "items": 8},
            "stability": {
                "spearman": 0.9123,
                "spearman_min": 0.8,
                "top_k_overlap": 0.75,
                "k": 4,
                "splits": 20,
                "items_per_half": 4,
            },
            "per_item": [[[0.123456789, 0.9], [0.5, 0.2]]] * 8,
            "causal": _causal(),
        }
    )
    return df


def test_evidence_summary_reads_the_attrs():
    from workbench.report.assemble import evidence_summary

    df = _stable_frame()
    row = evidence_summary({"m": {"a": df}}).iloc[0]
    assert row["items"] == 8 and row["spearman"] == 0.9123 and row["spearman_min"] == 0.8
    assert row["top_k_overlap"] == 0.75 and row["stability_k"] == 4 and not row["quick"]
    assert row["p_value"] == pytest.approx(0.25) and row["ratio"] == pytest.approx(4.5)
    assert row["verdict"] == df.attrs["causal"]["verdict"]
    bare = evidence_summary({"m": {"a": frame([1.0, 2.0], 1)}}).iloc[0]
    assert np.isnan(bare["spearman"]) and bare["verdict"] is None and bare["items"] is None


def test_evidence_lines():
    from workbench.analyzers.base import QUICK_NOTE
    from workbench.report.text import causal_text, evidence_lines, stability_text

    attrs = _stable_frame().attrs
    assert stability_text(attrs) == (
        "ranking stability: split-half Spearman 0.91 (min 0.80), top-4 overlap 0.75 "
        "(20 splits, 4 items a half)"
    )
    line = causal_text(attrs["causal"])
    assert line.startswith(attrs["causal"]["verdict"] + "; top-1 effect 1.5, 95% CI [")
    assert line.endswith("; random-1 effect 0.333 (mean of 3 draws)")
    few = {"stability": {"spearman": float("nan"), "top_k_overlap": float("nan"), "k": 10,
                         "items_per_half": 1, "splits": 0}}  # fmt: skip
    assert "not measurable (1 item(s) a half" in stability_text(few)
    assert causal_text({"skipped": "no test passed"}) == "no causal check: no test passed"
    assert causal_text(None) is None and stability_text({}) is None
    lines = evidence_lines({**attrs, "quick": True})
    assert lines[0] == "score intervals: 95% percentile bootstrap over 8 items (1000 resamples)"
    assert lines[-1] == QUICK_NOTE and len(lines) == 4
    companion = evidence_lines({"causal_logprob": attrs["causal"]})
    assert companion == [f"causal_logprob: {line}"]


def test_config_draws_default_to_each_analyzers_own_and_quick_reaches_them():
    import inspect

    from workbench.analyzers import get_analyzer
    from workbench.analyzers.causal import CHEAP_DRAWS, GENERATION_DRAWS

    config = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x")
    assert config.draws is None and config.quick is False
    params = config.analyzer_params()
    assert "draws" not in params and params["quick"] is False
    sinks, retrieval = type(get_analyzer("sinks")), type(get_analyzer("retrieval"))
    assert "draws" not in sinks.select(params)  # so the analyzer's own default applies:
    assert inspect.signature(sinks.run).parameters["draws"].default == CHEAP_DRAWS
    assert inspect.signature(retrieval.run).parameters["draws"].default == GENERATION_DRAWS
    quick = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x", quick=True)
    assert sinks.select(quick.analyzer_params())["quick"] is True
    three = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x", draws=3)
    assert three.analyzer_params()["draws"] == 3
    digests = {fingerprint(c, [])[0] for c in (config, quick, three)}
    assert len(digests) == 3 and fingerprint(quick, [])[1]["quick"] is True


def test_config_checks_draws_and_quick(tmp_path):
    from workbench.report.checks import check_config

    def config(**kw):
        return ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out=str(tmp_path), **kw)

    check_config(config(draws=None, quick=True))
    with pytest.raises(ReportError, match=r"--draws.*got 0"):
        check_config(config(draws=0))
    with pytest.raises(ReportError, match="quick"):
        check_config(config(quick="yes"))


def test_batch_size_reaches_the_analyzers_and_is_not_content(tmp_path):
    from workbench.analyzers import get_analyzer
    from workbench.report.checks import check_config

    base = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x")
    four = ReportConfig(models=[ModelSpec(None)], analyzers=["sinks"], out="x", batch_size=4)
    assert base.analyzer_params()["batch_size"] == "auto"
    assert get_analyzer("sinks").select(four.analyzer_params())["batch_size"] == 4
    assert get_analyzer("safety").select(four.analyzer_params())["batch_size"] == 4
    assert fingerprint(base, [])[0] == fingerprint(four, [])[0]  # batched == unbatched
    for bad in (0, "many", 2.5):
        with pytest.raises(ReportError, match="--batch-size"):
            check_config(
                ReportConfig(
                    models=[ModelSpec(None)], analyzers=["sinks"], out=str(tmp_path), batch_size=bad
                )
            )


def test_causal_prompts_of_quick_mode():
    from workbench.analyzers import get_analyzer
    from workbench.report.run import causal_prompts

    an = get_analyzer("previous_token")
    assert causal_prompts(an, False) == an.causal_prompts
    assert causal_prompts(an, True) == type(an).quick_params["causal_prompts"]


def test_top_table_leads_with_the_score_interval():
    from workbench.report.render import top_table

    df = _stable_frame()
    cols = ["layer", "head", "head_id", "score", "extra", "score_lo", "score_hi"]
    best = top_table(df[cols], 2)
    assert list(best.columns) == ["head_id", "score", "score_lo", "score_hi", "extra"]
    assert list(best["head_id"]) == ["L0H1", "L1H0"]
    assert best["score_lo"].tolist() == pytest.approx([0.85, 0.45])


def test_page_shows_verdict_stability_and_quick_but_no_per_item(tmp_path):
    pytest.importorskip("plotly")
    import html as html_lib

    from workbench.analyzers.base import QUICK_NOTE
    from workbench.report.render import render_html

    df = _stable_frame()
    df.attrs["quick"] = True
    results = {"m": {"a": df}}
    path = tmp_path / "report.html"
    summary = {"params": {"quick": True}, "versions": {}}
    render_html(path, results, causal_table(results), [], summary)
    page = html_lib.unescape(path.read_text(encoding="utf-8"))
    assert QUICK_NOTE in page and "id='evidence'" in page
    assert df.attrs["causal"]["verdict"] in page
    assert "split-half Spearman 0.91 (min 0.80), top-4 overlap 0.75" in page
    assert "0.123456789" not in page and "per_item" not in page  # per-item values stay out
    df.attrs["quick"] = False
    render_html(path, results, causal_table(results), [], {"params": {"quick": False}})
    assert QUICK_NOTE not in html_lib.unescape(path.read_text(encoding="utf-8"))
