"""Contextual heads and focus directions on the real model, checked against eager attention."""

from __future__ import annotations

import math

import pytest
import torch

from probes.hooks import HOOKS_ATTR
from tests.conftest import attn_implementation
from workbench.analyzers import contextual, mdqa
from workbench.analyzers.base import AnalyzerError, get_analyzer
from workbench.analyzers.contextual_runs import answer_span_mass, greedy_ids, relevant_mass
from workbench.errors import WorkbenchError
from workbench.heads import Head
from workbench.interventions import FocusDirections, FocusDirectionSet

pytestmark = pytest.mark.model


def _clean(lm) -> bool:
    return not any(hasattr(m, HOOKS_ATTR) for m in lm.layout.attention_modules)


@pytest.fixture(scope="module")
def items():
    return mdqa.make_items(2, 3, seed=5)


@pytest.fixture(scope="module")
def eitems(lm, items):
    return [mdqa.encode_item(lm, it) for it in items]


def _eager_answer_mass(lm, ei, answer_ids):
    """(layers, heads, n_answer, n_docs) from transformers' eager output_attentions maps."""
    ids = torch.cat([ei.enc.input_ids, torch.tensor([answer_ids])], dim=1)
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        out = lm.model(input_ids=ids, output_attentions=True, use_cache=False)
    rows = mdqa.answer_rows(ei.n_prompt, len(answer_ids))
    per_layer = []
    for att in out.attentions:
        a = att[0][:, rows].double()  # (H, n, L)
        per_layer.append(torch.stack([a[..., s:e].sum(-1) for s, e in ei.spans], dim=-1))
    return torch.stack(per_layer)


def test_encoded_spans_hold_the_documents(lm, eitems):
    for ei in eitems:
        assert ei.enc.chat and "<|im_start|>assistant" in ei.enc.text
        for (a, b), doc in zip(ei.spans, ei.item["documents"], strict=True):
            decoded = lm.tokenizer.decode(ei.enc.input_ids[0, a:b])
            assert decoded.strip() == doc  # BPE leading space at most
            assert doc[:4] not in lm.tokenizer.decode(ei.enc.input_ids[0, a - 1 : a])
        assert (
            ei.answer_ids == lm.tokenizer(ei.item["answer"], add_special_tokens=False)["input_ids"]
        )


def test_answer_span_mass_equals_eager_maps(lm, eitems):
    for ei in eitems:
        got = answer_span_mass(lm, ei, ei.answer_ids)
        ref = _eager_answer_mass(lm, ei, ei.answer_ids)
        assert got.shape == (lm.info.n_layers, lm.info.n_heads, len(ei.answer_ids), 3)
        assert (got - ref).abs().max() <= 1e-4
    assert _clean(lm)


def test_teacher_forced_rows_equal_decode_steps(lm, eitems):
    """The generated-answer score reads a teacher-forced forward; it must equal the attention
    of the decode steps of greedy generation (statistics probe, one record per step)."""
    ei = eitems[0]
    with lm.statistics(
        received=False, entropy=False, argmax=False, distance=False, spans=ei.spans
    ) as stats:
        ids = greedy_ids(lm, ei.enc, 5)
    assert ids and stats.records.steps(0) >= len(ids)
    tf = answer_span_mass(lm, ei, ids)  # (L, H, n, S)
    for layer in (0, 15, 29):
        steps = [stats.records[layer, s].stats["span_mass"][0][:, -1] for s in range(len(ids))]
        decode = torch.stack(steps, dim=1).double()  # (H, n, S)
        assert (decode - tf[layer]).abs().max() <= 2e-4


def test_gold_scores_equal_eager_recomputation(lm, items, eitems):
    df = get_analyzer("contextual").run(
        lm, items, progress=False, answer="gold", causal=False, focus=False, max_new_tokens=4
    )
    assert list(df.columns[:4]) == ["layer", "head", "head_id", "score"]
    assert len(df) == lm.info.n_layers * lm.info.n_heads
    rel, alld = [], []
    for ei in eitems:
        m = _eager_answer_mass(lm, ei, ei.answer_ids).mean(2)
        rel.append(m[..., ei.relevant])
        alld.append(m.sum(-1))
    ref = torch.stack(rel).mean(0).reshape(-1).numpy()
    ref_all = torch.stack(alld).mean(0).reshape(-1).numpy()
    assert abs(df["score"].to_numpy() - ref).max() <= 1e-4
    assert abs(df["mass_all_docs"].to_numpy() - ref_all).max() <= 1e-4
    assert abs(df["mass_irrelevant"] - (df["mass_all_docs"] - df["score"])).max() <= 1e-9
    assert df.attrs["prompts_used"] == 2 and df.attrs["params"]["answer"] == "gold"
    assert 0.0 <= df.attrs["accuracy"] <= 1.0


def test_focus_training_raises_attention_on_relevant_document(lm, eitems):
    heads = [(20, 1), (25, 4)]
    history: list[float] = []
    flags = [p.requires_grad for p in lm.model.parameters()]
    fds = contextual.train_focus_directions(
        lm, heads, eitems, steps=4, lr=0.2, seed=0, history=history
    )
    assert [p.requires_grad for p in lm.model.parameters()] == flags
    assert _clean(lm)
    # the first loss is the untouched model's -mean log relevant mass (statistics probe)
    logs = []
    for ei in eitems:
        mass = answer_span_mass(lm, ei, ei.answer_ids)
        logs.append(torch.stack([mass[lay, h, :, ei.relevant] for lay, h in heads]).log())
    first_item = None
    for ei, lg in zip(eitems, logs, strict=True):  # seeded order: find which item came first
        if math.isclose(history[0], float(-lg.mean()), rel_tol=1e-4, abs_tol=1e-4):
            first_item = ei
    assert first_item is not None, (history[0], [float(-lg.mean()) for lg in logs])
    assert set(fds.directions) == {Head(20, 1), Head(25, 4)}
    for dq, dk in fds.directions.values():
        assert dq.shape == (lm.info.head_dim,) and not dq.requires_grad
        assert float(dq.norm()) > 0 and float(dk.abs().max()) == 0
    before = relevant_mass(lm, eitems, heads)
    with FocusDirections(lm, fds, scale=1.0):
        after = relevant_mass(lm, eitems, heads)
    assert after > before
    with pytest.raises(AnalyzerError, match="steps"):
        contextual.train_focus_directions(lm, heads, eitems, steps=0)
    with pytest.raises(AnalyzerError, match="lr"):
        contextual.train_focus_directions(lm, heads, eitems, lr=-1.0)


def test_analyzer_with_causal_check_and_focus(lm, tmp_path):
    path = tmp_path / "focus.safetensors"
    df = get_analyzer("contextual").run(
        lm,
        progress=False,
        n_items=2,
        n_docs=2,
        max_new_tokens=6,
        top_k=2,
        draws=1,
        n_causal=1,
        focus_heads=2,
        focus_items=1,
        focus_steps=1,
        focus_out=str(path),
    )
    a = df.attrs
    assert a["prompts_used"] == 2 and 0 <= a["prompts_passed"] <= 2
    assert a["accuracy"] == a["prompts_passed"] / 2
    assert len(a["answers"]) == 2 and a["focus"]["eval_prompts"] == 1
    assert ((df["score"] >= 0) & (df["score"] <= df["mass_all_docs"] + 1e-9)).all()
    assert (df["mass_all_docs"] <= 1 + 1e-6).all()
    c = a["causal"]
    assert c["k"] == 2 and len(c["random_k"]) == 1 and c["mode"] == "uniform"
    assert c["top_heads"] == df.nlargest(2, "score")["head_id"].tolist()
    assert all(0 <= v <= 1 for v in [c["base"], c["top_k"], *c["random_k"]])
    assert a["causal_logprob"]["base"] < 0
    f = a["focus"]
    assert f["heads"] == df.nlargest(2, "score")["head_id"].tolist()
    assert set(f["effect"]) == {"before", "scale_0.25", "scale_1"}
    assert not set(f["train_facts"]) & {x["fact_id"] for x in a["answers"]}
    loaded = FocusDirectionSet.load(path)
    assert sorted(h.id for h in loaded.directions) == sorted(f["heads"])
    assert _clean(lm)


def test_bad_input(lm):
    analyzer = get_analyzer("contextual")
    with pytest.raises(WorkbenchError, match="empty"):
        analyzer.run(lm, [])
    with pytest.raises(AnalyzerError, match="MDQA items"):
        analyzer.run(lm, ["What is the capital of France?"])
    with pytest.raises(AnalyzerError, match="answer must be"):
        analyzer.run(lm, answer="sampled")
    with pytest.raises(AnalyzerError, match="n_items"):
        analyzer.run(lm, n_items=0)
    with pytest.raises(AnalyzerError, match="at least one head"):
        contextual.train_focus_directions(lm, [], [])
