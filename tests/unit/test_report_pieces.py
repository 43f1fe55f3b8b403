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
