"""Retrieval-head analyzer on the real model, checked against eager attention maps."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import attn_implementation
from workbench.analyzers import retrieval
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.niah import make_niah_tasks
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.model

MAX_NEW = 16


@pytest.fixture(scope="module")
def items(lm):
    good = make_niah_tasks(lm, lengths=(128,), depths=(0.5,), n_needles=1, seed=0)[0]
    bogus = {**good, "answer": "purple elephant"}  # not in the needle: span falls back to it
    return [good, bogus]


@pytest.fixture(scope="module")
def frame(lm, items):
    return retrieval.RetrievalAnalyzer().run(
        lm, items, max_new_tokens=MAX_NEW, top_k=2, draws=1, causal_tests=2, progress=False
    )


def eager_scores(lm, item, span_key: str) -> tuple[torch.Tensor, str]:
    """Independent computation: transformers' eager attention maps of every decoding step
    (generate with output_attentions), argmax per head read off the maps, the copy rule in a
    plain loop."""
    enc = lm.encode(item["prompt"], chat=True)
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        out = lm.model.generate(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=MAX_NEW,
            do_sample=False,
            output_attentions=True,
            return_dict_in_generate=True,
            pad_token_id=lm.tokenizer.eos_token_id,
        )
    seq = out.sequences[0]
    gen = seq[enc.n_tokens :].tolist()
    steps = len(gen)
    for s, t in enumerate(gen):  # the analyzer stops after a token holding a newline
        if "\n" in lm.tokenizer.decode([t]):
            steps = s + 1
            break
    start, end = item[span_key]
    score = torch.zeros(lm.info.n_layers, lm.info.n_heads, dtype=torch.float64)
    for s in range(steps):
        for layer in range(lm.info.n_layers):
            rows = out.attentions[s][layer][0, :, -1, :]  # (H, keys): the row emitting gen[s]
            for head in range(lm.info.n_heads):
                j = int(rows[head].argmax())
                if start <= j < end and int(seq[j]) == gen[s]:
                    score[layer, head] += 1.0 / (end - start)
    response = lm.tokenizer.decode(gen[:steps], skip_special_tokens=True).strip()
    return score, response


def test_frame_schema_and_counts(frame):
    assert list(frame.columns[:4]) == ["layer", "head", "head_id", "score"]
    assert {"is_retrieval_head", "retrieval_hits", "score_all_tests"} <= set(frame.columns)
    assert len(frame) == 30 * 9
    a = frame.attrs
    assert a["analyzer"] == "retrieval" and a["tests_total"] == 2
    tests = a["tests"]
    assert tests[0]["passed"], tests[0]  # measured: the model answers this one
    assert not tests[1]["passed"]
    assert a["tests_passed"] == a["prompts_passed"] == 1
    assert a["per_length"] == {"128": {"total": 2, "passed": 1}}
    assert (frame["is_retrieval_head"] == (frame["score"] > 0.1)).all()
    assert a["n_retrieval_heads"] == int(frame["is_retrieval_head"].sum())
    assert a["params"]["span"] == "answer"


def test_scores_match_eager_attention(lm, items, frame):
    good, bogus = items
    expected_good, response = eager_scores(lm, good, "answer_span")
    assert response == frame.attrs["tests"][0]["response"]
    # the bogus answer is not in the needle: its test is scored on the whole needle span
    expected_bogus, _ = eager_scores(lm, bogus, "needle_span")
    got = torch.tensor(frame["score"].to_numpy()).view(30, 9)
    got_all = torch.tensor(frame["score_all_tests"].to_numpy()).view(30, 9)
    # near-ties between two keys may flip an argmax between kernels; allow one head
    assert int((~torch.isclose(got, expected_good)).sum()) <= 1
    assert int((~torch.isclose(got_all, (expected_good + expected_bogus) / 2)).sum()) <= 1
    assert float(expected_good.max()) > 0.1  # the model does copy the answer from the needle
    hits = torch.tensor(frame["retrieval_hits"].to_numpy()).view(30, 9)
    span = good["answer_span"][1] - good["answer_span"][0]
    assert torch.allclose(hits, got * span)


def test_causal_evidence(frame):
    c = frame.attrs["causal"]
    assert c["mode"] == "uniform" and c["k"] == 2 and len(c["random_k"]) == 1
    assert c["tests"] == 1  # only the passed test is used
    assert c["base"] == 1.0
    assert c["top_heads"] == list(frame.nlargest(2, "score")["head_id"])
    assert 0.0 <= c["top_k"] <= 1.0


def test_bad_input(lm):
    analyzer = retrieval.RetrievalAnalyzer()
    with pytest.raises(WorkbenchError, match="empty"):
        analyzer.run(lm, [], progress=False)
    with pytest.raises(AnalyzerError, match="'needle'"):
        analyzer.run(lm, ["just a prompt"], progress=False)
    with pytest.raises(AnalyzerError, match="too short for the needle"):
        analyzer.run(lm, lengths=(30,), progress=False)
    with pytest.raises(AnalyzerError, match="span"):
        analyzer.run(lm, lengths=(128,), span="sentence", progress=False)
    with pytest.raises(AnalyzerError, match="pass_recall"):
        analyzer.run(lm, pass_recall=1.5, progress=False)
    with pytest.raises(AnalyzerError, match="max_new_tokens"):
        analyzer.run(lm, max_new_tokens=0, progress=False)
    bad = {"prompt": "Some text without it.", "needle": "The vault code is 4471.", "answer": "4471"}
    with pytest.raises(WorkbenchError, match="does not occur"):
        analyzer.run(lm, [bad], progress=False, causal=False)
