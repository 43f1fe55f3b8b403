"""QR heads (qr_retrieval) on the real model, checked against transformers' eager attention.

The reference rule (princeton-pli/QRHead attn_retriever.py) is re-applied here with NumPy to
eager ``output_attentions`` maps of the query and null-query prompts: mean over the query-span
rows (instruction to the prompt's end), query minus null, per document the sum of the tokens
strictly above mean - 2 * std (ddof=1), gold documents summed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probes.hooks import HOOKS_ATTR
from tests.conftest import attn_implementation
from workbench.analyzers import analyze, mdqa
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.qr_rule import encode_pair
from workbench.cli import main

pytestmark = pytest.mark.model


def _clean(lm) -> bool:
    return not any(hasattr(m, HOOKS_ATTR) for m in lm.layout.attention_modules)


@pytest.fixture(scope="module")
def items():
    return mdqa.make_items(3, 4, seed=3)


@pytest.fixture(scope="module")
def table(lm, items):
    """The analyzer on the three items, two per forward (one batch with a shared window)."""
    return analyze("qr_retrieval", lm, items, causal=False, batch_size=2, progress=False)


def _eager_rows_mean(lm, enc, start) -> np.ndarray:
    """(layers, heads, keys): eager attention of rows start..end averaged over the rows."""
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        out = lm.model(input_ids=enc.input_ids, output_attentions=True, use_cache=False)
    return np.stack([a[0, :, start:].double().numpy().mean(1) for a in out.attentions])


def _reference_doc_score(values: np.ndarray) -> np.ndarray:
    """(L, H, n) -> (L, H): the reference's outlier rule, written with NumPy."""
    if values.shape[-1] < 2:
        return np.zeros(values.shape[:-1])
    threshold = values.mean(-1, keepdims=True) - 2 * values.std(-1, ddof=1, keepdims=True)
    return np.where(values > threshold, values, 0.0).sum(-1)


def _eager_item(lm, item):
    pair = encode_pair(lm, item)
    query = _eager_rows_mean(lm, pair.enc, pair.query_start)
    null = _eager_rows_mean(lm, pair.null, pair.query_start)
    n = min(query.shape[-1], null.shape[-1])
    cal = query[..., :n] - null[..., :n]
    docs = np.stack([_reference_doc_score(cal[..., a:b]) for a, b in pair.spans], -1)
    gold = list(pair.gold)
    return {
        "score": docs[..., gold].sum(-1),
        "mass_query": sum(query[..., a:b].sum(-1) for a, b in (pair.spans[g] for g in gold)),
        "mass_null": sum(null[..., a:b].sum(-1) for a, b in (pair.spans[g] for g in gold)),
        "top1_gold": np.isin(docs.argmax(-1), gold).astype(float),
    }


def test_spans_hold_the_documents_and_the_query(lm, items):
    for item in items:
        pair = encode_pair(lm, item)
        for i, ((a, b), doc) in enumerate(zip(pair.spans, item["documents"], strict=True)):
            text = lm.tokenizer.decode(pair.enc.input_ids[0, a:b]).strip()
            assert text == f"[{i + 1}] {doc}"
        tail = lm.tokenizer.decode(pair.enc.input_ids[0, pair.query_start :])
        assert tail.startswith("Please find information") and item["question"] in tail
        null_tail = lm.tokenizer.decode(pair.null.input_ids[0, pair.query_start :])
        assert "Query: N/A" in null_tail and item["question"] not in null_tail
        assert tail.endswith("<|im_start|>assistant\n")
        assert pair.gold == (item["relevant"],)


def test_scores_equal_the_rule_on_eager_maps(lm, items, table):
    per_item = np.asarray(table.attrs["per_item"])  # (items, L, H)
    refs = [_eager_item(lm, item) for item in items]
    shape = (lm.info.n_layers, lm.info.n_heads)
    for i, ref in enumerate(refs):
        assert np.abs(per_item[i] - ref["score"]).max() <= 1e-5
    for column in ("mass_query", "mass_null"):
        mean = np.mean([ref[column] for ref in refs], axis=0)
        assert np.abs(table[column].to_numpy().reshape(shape) - mean).max() <= 1e-5
    top1 = np.mean([ref["top1_gold"] for ref in refs], axis=0)
    assert np.abs(table["top1_gold"].to_numpy().reshape(shape) - top1).max() <= 1e-9
    score = np.mean([ref["score"] for ref in refs], axis=0)
    assert np.abs(table["score"].to_numpy().reshape(shape) - score).max() <= 1e-5
    unfiltered = table["mass_query"] - table["mass_null"]
    assert np.allclose(table["score_unfiltered"], unfiltered, atol=1e-12)
    assert _clean(lm)


def test_one_item_per_forward_gives_the_same_table(lm, items, table):
    alone = analyze("qr_retrieval", lm, items, causal=False, batch_size=1, progress=False)
    for column in ("score", "mass_query", "mass_null", "top1_gold"):
        assert np.abs(alone[column].to_numpy() - table[column].to_numpy()).max() <= 1e-6


def test_the_null_query_is_a_parameter(lm, items):
    pair = encode_pair(lm, items[0], null_query="nothing")
    assert "Query: nothing" in pair.null.text
    df = analyze("qr_retrieval", lm, items[:1], causal=False, null_query="nothing", progress=False)
    assert df.attrs["params"]["null_query"] == "nothing"


def test_causal_check_ablates_the_top_heads(lm, items):
    df = analyze(
        "qr_retrieval",
        lm,
        items[:2],
        top_k=2,
        draws=2,
        causal_prompts=2,
        progress=False,
    )
    causal = df.attrs["causal"]
    assert causal["top_heads"] == df.nlargest(2, "score")["head_id"].tolist()
    assert causal["mode"] == "uniform" and causal["items"] == 2 and len(causal["random_k"]) == 2
    # the unablated metric: gold answer log-prob per token after the QA prompt, by hand
    for value, item in zip(causal["base_items"], items[:2], strict=True):
        prompt, _ = mdqa.build_prompt(item["documents"], item["question"])
        enc = lm.encode(prompt, chat=True)
        answer = lm.tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
        ids = torch.cat([enc.input_ids, torch.tensor([answer])], dim=1)
        with torch.no_grad():
            logits = lm.model(input_ids=ids, use_cache=False).logits[0].double()
        logp = torch.log_softmax(logits[enc.n_tokens - 1 : -1], -1)
        expected = float(logp[torch.arange(len(answer)), torch.tensor(answer)].mean())
        assert value == pytest.approx(expected, abs=1e-4)
    assert _clean(lm)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"question": None}, "question"),
        ({"relevant": 7}, "relevant"),
        ({"documents": "one text"}, "documents"),
        ({"documents": []}, "documents"),
    ],
)
def test_bad_items_are_refused_before_any_forward(lm, items, change, match):
    item = {**items[0], **change}
    if change.get("question", "") is None:
        del item["question"]
    with pytest.raises(AnalyzerError, match=match):
        analyze("qr_retrieval", lm, [item], causal=False, progress=False)
    assert _clean(lm)


def test_scan_command(tmp_path, capsys, lm):
    out = tmp_path / "qr.csv"
    args = ["scan", "--analyzer", "qr_retrieval", "--param", "n_items=2", "--param", "n_docs=3"]
    assert main([*args, "--param", "causal=false", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((tmp_path / "qr.csv.json").read_text())
    assert meta["prompts_used"] == 2 and meta["params"]["n_docs"] == 3
