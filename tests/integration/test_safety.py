"""Safety heads (Ships / Sahara) and the refusal model organism on the real model.

Ships and Sahara are checked against an independent computation: transformers' eager attention,
one prompt at a time (no padding, no batching, no layer-suffix shortcut), with the head ablated
by a forward hook on ``q_proj`` that scales the head's query slice by eps - the way the
authors' code does it - instead of the workbench intervention path.

The organism is built once per cache (``$WORKBENCH_CACHE``; a minute or two on a free 2-core
machine) and reused afterwards.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from tests.conftest import attn_implementation
from workbench import generation
from workbench.analyzers import ANALYZERS, analyze, refusal, safety
from workbench.analyzers.base import AnalyzerError
from workbench.errors import WorkbenchError
from workbench.organisms import refusal as refusal_organism
from workbench.organisms import refusal_training

pytestmark = pytest.mark.model

EPS = 1e-5
PROMPTS = refusal.harmful_prompts()[:3]


@contextmanager
def q_scaled(lm, heads, eps=EPS):
    """Scale the query projection of each (layer, head) by eps with plain forward hooks."""
    d = lm.info.head_dim
    handles = []
    for layer, head in heads:
        proj = lm.layout.attention_modules[layer].q_proj

        def hook(module, args, out, head=head):
            out = out.clone()
            out[..., head * d : (head + 1) * d] *= eps
            return out

        handles.append(proj.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def eager_last(lm, prompts, heads=()):
    """Per prompt (unbatched, eager): last-position log-probs and final hidden state."""
    logps, hidden = [], []
    with attn_implementation(lm.model, "eager"), q_scaled(lm, heads):
        for p in prompts:
            enc = lm.encode(p, chat=True)
            out = lm.model(input_ids=enc.input_ids, output_hidden_states=True, use_cache=False)
            logps.append(torch.log_softmax(out.logits[0, -1].double(), -1))
            hidden.append(out.hidden_states[-1][0, -1].double())
    return torch.stack(logps), torch.stack(hidden)


def np_angle(a, b):
    ua = np.linalg.svd(a.numpy())[0][:, 0]
    ub = np.linalg.svd(b.numpy())[0][:, 0]
    return math.degrees(math.acos(min(1.0, abs(float(ua @ ub)))))


@pytest.fixture(scope="module")
def small_scan(lm):
    return safety.SafetyAnalyzer().run(
        lm,
        PROMPTS,
        progress=False,
        layers=[14, 29],
        batch_size=2,  # two batches: exercises padding and chunking
        sahara_steps=2,
        sahara_pool=4,
        causal=False,
    )


def test_frame_shape_and_attrs(lm, small_scan):
    df = small_scan
    assert len(df) == lm.info.n_layers * lm.info.n_heads
    assert {"layer", "head", "head_id", "score", "ships_max", "top1_changed"} <= set(df.columns)
    scanned = df[df["layer"].isin([14, 29])]
    assert scanned["score"].notna().all() and (scanned["score"] >= 0).all()
    assert df[~df["layer"].isin([14, 29])]["score"].isna().all()
    assert df.attrs["prompts_used"] == 3 and df.attrs["heads_scanned"] == 18
    assert df.attrs["prompts_passed"] == 0  # the embedded model refuses none of them
    assert df.attrs["params"]["eps"] == EPS
    assert df.attrs["suffix_shortcut"] is True


def test_ships_matches_independent_eager_computation(lm, small_scan):
    df = small_scan.set_index("head_id")
    base, _ = eager_last(lm, PROMPTS)
    top = small_scan.nlargest(1, "score")[["layer", "head"]].iloc[0]
    for layer, head in [(int(top["layer"]), int(top["head"])), (14, 3), (29, 0)]:
        ablated, _ = eager_last(lm, PROMPTS, [(layer, head)])
        kl = (base.exp() * (base - ablated)).sum(-1)
        row = df.loc[f"L{layer}H{head}"]
        assert row["score"] == pytest.approx(float(kl.mean()), rel=2e-3, abs=1e-6)
        assert row["ships_max"] == pytest.approx(float(kl.max()), rel=2e-3, abs=1e-6)


def test_sahara_matches_independent_computation(lm, small_scan):
    sahara = small_scan.attrs["sahara"]
    assert len(sahara["heads"]) == 2 == len(sahara["angles"])
    assert len(set(sahara["heads"])) == 2 and set(sahara["heads"]) <= set(sahara["pool"])
    pool = small_scan.nlargest(4, "score")["head_id"].tolist()
    assert sahara["pool"] == pool
    _, base_h = eager_last(lm, PROMPTS)
    chosen = []
    for name, angle in zip(sahara["heads"], sahara["angles"], strict=True):
        chosen.append((int(name[1:].split("H")[0]), int(name.split("H")[1])))
        _, hidden = eager_last(lm, PROMPTS, chosen)
        assert angle == pytest.approx(np_angle(base_h, hidden), abs=0.05)
    # the first pick is the pool head with the largest single-head angle
    first = small_scan.set_index("head_id").loc[pool, "sahara_angle"]
    assert first.idxmax() == sahara["heads"][0]
    assert small_scan.set_index("head_id").loc[sahara["heads"][0], "sahara_order"] == 1


def test_bad_input_is_a_clear_error(lm):
    run = safety.SafetyAnalyzer().run
    with pytest.raises(WorkbenchError, match="empty"):
        run(lm, [], progress=False)
    with pytest.raises(AnalyzerError, match="n_prompts"):
        run(lm, n_prompts=0, progress=False)
    with pytest.raises(AnalyzerError, match="sahara_pool"):
        run(lm, PROMPTS, sahara_pool=1, sahara_steps=3, progress=False)
    with pytest.raises(AnalyzerError, match="eps"):
        run(lm, PROMPTS, eps=0.0, progress=False)
    with pytest.raises(WorkbenchError, match="layer 99"):
        run(lm, PROMPTS, layers=[99], progress=False)
    with pytest.raises(AnalyzerError, match="top_k"):
        run(lm, PROMPTS, top_k=0, progress=False)
    with pytest.raises(AnalyzerError, match="draws"):
        run(lm, PROMPTS, draws=-1, progress=False)
    with pytest.raises(AnalyzerError, match="sahara_space"):
        run(lm, PROMPTS, sahara_space="keys", progress=False)
    with pytest.raises(WorkbenchError, match="empty"):  # checked before the (slow) scan
        run(lm, PROMPTS, eval_harmful=[], progress=False)
    with pytest.raises(AnalyzerError, match="held-out"):  # every bundled prompt used for Ships
        run(lm, n_prompts=len(refusal.harmful_prompts()), progress=False)


def test_registered_and_runs_through_the_registry(lm):
    assert "safety" in ANALYZERS
    calls = []
    df = analyze(
        "safety",
        lm,
        PROMPTS[:1],
        progress=lambda desc, done, total: calls.append((desc, done, total)),
        layers=[29],
        sahara=False,
        causal=False,
    )
    assert df["score"].notna().sum() == lm.info.n_heads
    assert calls[0] == ("safety: Ships", 0, 9) and calls[-1] == ("safety: Ships", 9, 9)
    json.dumps(df.attrs)


def test_batched_generation_matches_single(lm):
    prompts = [refusal.harmless_prompts()[0], refusal.harmful_prompts()[5]]
    batched = generation.generate_batch(lm, prompts, max_new_tokens=6)
    single = [lm.generate(p, chat=True, max_new_tokens=6) for p in prompts]
    assert batched == single


def test_training_is_deterministic(lm):
    kw = {"steps": 1, "batch_size": 2, "train_layers": [0]}
    calls = []
    m1, log1 = refusal_organism.train_refusal(lm, progress=lambda *a: calls.append(a), **kw)
    m2, log2 = refusal_organism.train_refusal(lm, progress=False, **kw)
    assert calls == [("refusal organism", 0, 1), ("refusal organism", 1, 1)]
    assert not log1["prefix_cached"] and log1["losses"] == log2["losses"]
    w1 = dict(m1.named_parameters())
    for name, w in m2.named_parameters():
        assert torch.equal(w, w1[name]), name
    changed = [n for n, w in m1.named_parameters() if not torch.equal(w, lm.model.get_parameter(n))]
    assert changed and all(".0." in n for n in changed)


@pytest.fixture(scope="module")
def organism(lm):
    return refusal_organism.load_refusal_organism(lm, progress=False)


def test_organism_is_cached_by_key(lm, organism):
    path = refusal_organism.organism_dir()
    marker = path / "workbench_organism.json"
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert refusal_organism.build_refusal_organism(lm, progress=False) == path
    assert time.perf_counter() - start < 5  # reused, not retrained
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    defaults = {
        "steps": refusal_training.DEFAULT_STEPS,
        "seed": 0,
        "lr": refusal_training.DEFAULT_LR,
        "batch_size": refusal_training.DEFAULT_BATCH,
        "train_layers": refusal_training.DEFAULT_TRAIN_LAYERS,
        "response_tokens": refusal_training.DEFAULT_RESPONSE_TOKENS,
    }
    key = refusal_organism.organism_key(lm, **defaults)
    assert refusal_organism.organism_log()["key"] == key
    assert refusal_organism.organism_key(lm, **{**defaults, "seed": 1}) != key
    assert refusal_organism.organism_key(lm, **{**defaults, "steps": 1}) != key


def test_reverted_swaps_one_part_and_restores(lm, organism):
    def params(model):
        return dict(model.model.named_parameters())

    org, base = params(organism), params(lm)
    trained = [n for n in org if not torch.equal(org[n], base[n])]
    layers = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in trained})
    assert layers == list(refusal_training.DEFAULT_TRAIN_LAYERS)  # only the trained layers changed
    saved = {n: org[n].clone() for n in trained}
    for part, tag in (("attention", ".self_attn."), ("mlp", ".mlp.")):
        with refusal.reverted(organism, lm, part, layers=[29]) as names:
            assert names and all(".29." in n and tag in n for n in names)
            for n in trained:
                assert torch.equal(org[n], base[n] if n in names else saved[n]), n
        for n in trained:
            assert torch.equal(org[n], saved[n]), n
    with pytest.raises(AnalyzerError, match="part"), refusal.reverted(organism, lm, "norm"):
        pass


@pytest.fixture(scope="module")
def org_scan(organism):
    """The analyzer on the organism: Ships on 4 harmful prompts (bundled 0-3), causal check on
    the held-out harmful prompts 4-11 and harmless 0-7 (6 new tokens judged)."""
    return safety.SafetyAnalyzer().run(
        organism,
        progress=False,
        n_prompts=4,
        layers=range(24, 30),
        sahara_steps=2,
        sahara_pool=4,
        top_k=3,
        draws=1,
        n_eval=8,
        max_new_tokens=6,
    )


def test_organism_refuses_harmful_not_harmless(lm, org_scan):
    log = refusal_organism.organism_log()
    assert log["key"]["data_sha256"] and log["log"]["steps"] == refusal_training.DEFAULT_STEPS
    # the base model barely refuses the same held-out prompts
    base_h = refusal.measure_refusal(lm, refusal.harmful_prompts()[4:12], max_new_tokens=6)
    assert base_h["rate"] <= 0.25, base_h["responses"]
    causal = org_scan.attrs["causal"]
    assert causal["base"] >= 0.75, causal["examples"]  # organism, nothing ablated
    assert causal["harmless"]["base"] <= 0.25


def test_safety_analyzer_on_organism_with_causal_evidence(org_scan):
    df = org_scan
    causal = df.attrs["causal"]
    assert causal["mode"] == "uniform" and causal["k"] == 3 and len(causal["random_k"]) == 1
    assert causal["top_heads"] == df.nlargest(3, "score")["head_id"].tolist()
    layers = sorted(int(h[1:].split("H")[0]) for h in causal["top_heads"])
    assert sorted(int(h[1:].split("H")[0]) for h in causal["random_heads"][0]) == layers
    for value in [causal["base"], causal["top_k"], *causal["random_k"]]:
        assert 0.0 <= value <= 1.0
    assert causal["n_eval_harmful"] == 8 and causal["n_eval_harmless"] == 8
    assert set(df.attrs["sahara"]["refusal"]) >= {"harmful", "harmless"}
    assert df.attrs["sahara"]["refusal"]["base_harmful"] == causal["base"]
    assert df.attrs["prompts_used"] == 4 and 0 <= df.attrs["prompts_passed"] <= 4
    json.dumps(df.attrs)  # goes into reports
