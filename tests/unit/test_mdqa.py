"""MDQA task generator and the contextual analyzer's pure pieces (no model).

Hand-worked cases: token spans from offset mappings (BPE leading spaces, special tokens), the
contextual score from synthetic span masses, the differentiable span log-mass from synthetic
queries and keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch

from workbench.analyzers import mdqa
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.contextual_runs import aggregate, item_scores
from workbench.analyzers.focus_training import span_log_mass
from workbench.errors import WorkbenchError

# -- bundled data -------------------------------------------------------------------------------


def test_bundled_facts_are_well_formed():
    facts, fillers = mdqa.load_facts()
    assert len(facts) >= 16 and len(fillers) >= 4
    ids = [f["id"] for f in facts + fillers]
    assert len(set(ids)) == len(ids)
    docs = [d["document"] for d in facts + fillers]
    for fact in facts:
        assert fact["question"].endswith("?")
        # the answer is in its own document and in no other one (a distractor must not answer)
        assert fact["answer"].lower() in fact["document"].lower(), fact["id"]
        for answer in [fact["answer"], *fact.get("aliases", [])]:
            holders = [d for d in docs if answer.lower() in d.lower()]
            assert holders in ([], [fact["document"]]), (fact["id"], answer)


def test_split_facts_is_disjoint_and_deterministic():
    facts, _ = mdqa.load_facts()
    train, held = mdqa.split_facts(facts, 8, seed=3)
    assert len(train) == 8 and len(held) == len(facts) - 8
    assert not {f["id"] for f in train} & {f["id"] for f in held}
    assert mdqa.split_facts(facts, 8, seed=3) == (train, held)
    assert mdqa.split_facts(facts, 8, seed=4)[0] != train
    with pytest.raises(AnalyzerError, match="n_train"):
        mdqa.split_facts(facts, len(facts))


# -- generator ----------------------------------------------------------------------------------


def test_build_prompt_char_spans_are_exact():
    docs = ["Alpha beta.", "Gamma delta epsilon.", "Zeta."]
    prompt, chars = mdqa.build_prompt(docs, "What is zeta?")
    assert [prompt[a:b] for a, b in chars] == docs
    assert prompt.startswith(mdqa.INSTRUCTION)
    assert prompt.endswith("Question: What is zeta?")
    assert "Document [2]: Gamma" in prompt


def test_make_items_places_relevant_document_everywhere():
    items = mdqa.make_items(10, 5, seed=1)
    assert [it["relevant"] for it in items] == [0, 1, 2, 3, 4] * 2
    facts, fillers = mdqa.load_facts()
    by_question = {f["question"]: f for f in facts}
    filler_docs = {f["document"] for f in fillers}
    for it in items:
        fact = by_question[it["question"]]
        docs = it["documents"]
        assert len(docs) == 5 and len(set(docs)) == 5
        assert docs[it["relevant"]] == fact["document"]
        # exactly one document holds the answer
        assert sum(fact["answer"].lower() in d.lower() for d in docs) == 1
        assert sum(d in filler_docs for d in docs) == 2  # (n_docs - 1) // 2 fillers
        assert [it["prompt"][a:b] for a, b in it["doc_chars"]] == docs
        assert it["prompt"].endswith(it["question"])
    # distinct facts while there are enough of them
    assert len({it["question"] for it in items}) == 10


def test_make_items_is_deterministic_under_seed():
    a = mdqa.make_items(6, 4, seed=7)
    assert a == mdqa.make_items(6, 4, seed=7)
    assert a != mdqa.make_items(6, 4, seed=8)


def test_make_items_bad_input():
    with pytest.raises(AnalyzerError, match="n_items"):
        mdqa.make_items(0)
    with pytest.raises(AnalyzerError, match="n_docs"):
        mdqa.make_items(2, 0)
    facts, fillers = mdqa.load_facts()
    with pytest.raises(AnalyzerError, match="not enough documents"):
        mdqa.make_items(2, 6, facts=facts[:2], fillers=fillers[:1])
    with pytest.raises(AnalyzerError, match="no facts"):
        mdqa.make_items(2, 3, facts=[], fillers=fillers)


def test_is_correct_containment():
    item = {"answer": "Ilse Brandvold", "aliases": ["Brandvold"]}
    assert mdqa.is_correct("It was written by ILSE BRANDVOLD.", item)
    assert mdqa.is_correct("Brandvold wrote it", item)
    assert not mdqa.is_correct("Tomas Revel", item)


def test_answer_rows():
    # prompt of 10 tokens, answer of 3: rows 9 (predicts a0), 10 (a1), 11 (a2)
    assert mdqa.answer_rows(10, 3).tolist() == [9, 10, 11]


# -- token spans (hand-worked offsets) ----------------------------------------------------------


def test_token_spans_hand_worked():
    # text: "<s>Doc: The cat sat.\n" ; tokens: <s> | Doc | : | " The" | " cat" | " sat" | . | \n
    text = "<s>Doc: The cat sat.\n"
    offsets = [(0, 0), (3, 6), (6, 7), (7, 11), (11, 15), (15, 19), (19, 20), (20, 21)]
    a = text.index("The")
    b = text.index(".") + 1
    # the document "The cat sat." starts one character after " The"'s offset: still inside
    assert mdqa.token_spans(offsets, [(a, b)]) == [(3, 7)]
    assert mdqa.token_spans(offsets, [(a, a + 3)]) == [(3, 4)]
    # zero-width special token never counts
    assert mdqa.token_spans(offsets, [(0, 6)]) == [(1, 2)]
    with pytest.raises(AnalyzerError, match="covers no token"):
        mdqa.token_spans([(0, 0), (3, 6)], [(0, 2)])


@dataclass
class _Enc:
    input_ids: torch.Tensor
    text: str

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class _BpeLikeTokenizer:
    """Words carry their leading space (" cat"), like GPT-2 BPE; offsets as HF gives them."""

    pattern = re.compile(r" ?\w+| ?[^\w\s]|\s+")

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        pieces = [(m.start(), m.end()) for m in self.pattern.finditer(text)]
        ids = [hash(text[s:e]) % 1000 for s, e in pieces]
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = pieces
        return out


class _FakeLM:
    tokenizer = _BpeLikeTokenizer()

    def encode(self, prompt, chat=False):
        text = f"<user>\n{prompt}\n<assistant>\n" if chat else prompt
        ids = self.tokenizer(text)["input_ids"]
        return _Enc(torch.tensor([ids]), text)


def test_encode_item_spans_cover_documents_in_templated_text():
    lm = _FakeLM()
    item = mdqa.make_items(3, 3, seed=0)[1]
    ei = mdqa.encode_item(lm, item, chat=True)
    pieces = [m.group() for m in _BpeLikeTokenizer.pattern.finditer(ei.enc.text)]
    for (a, b), doc in zip(ei.spans, item["documents"], strict=True):
        assert "".join(pieces[a:b]).strip() == doc  # leading-space token included
        assert not pieces[a - 1].strip().endswith(doc[:1])  # nothing of the doc before a
    assert ei.relevant_span == ei.spans[item["relevant"]]
    # user items without doc_chars: documents are found verbatim in the prompt
    user = {k: item[k] for k in ("prompt", "documents", "relevant", "answer")}
    assert mdqa.encode_item(lm, user, chat=True).spans == ei.spans


def test_encode_item_bad_items():
    lm = _FakeLM()
    item = mdqa.make_items(1, 3, seed=0)[0]
    with pytest.raises(AnalyzerError, match="needs 'documents'"):
        mdqa.encode_item(lm, {"prompt": "x", "relevant": 0, "answer": "y"})
    with pytest.raises(AnalyzerError, match="relevant=7"):
        mdqa.encode_item(lm, {**item, "relevant": 7})
    bad = {k: item[k] for k in ("prompt", "relevant", "answer")}
    bad["documents"] = ["not in the prompt at all"]
    bad["relevant"] = 0
    with pytest.raises(AnalyzerError, match="not found"):
        mdqa.encode_item(lm, bad)
    assert issubclass(AnalyzerError, WorkbenchError)


# -- contextual score on synthetic span masses --------------------------------------------------


def test_item_scores_and_aggregate_hand_worked():
    # 1 layer, 2 heads, 2 answer tokens, 3 documents; relevant document = 1
    mass = torch.tensor(
        [
            [
                [[0.1, 0.6, 0.1], [0.1, 0.4, 0.1]],  # head 0: relevant 0.6, 0.4 -> 0.5
                [[0.2, 0.0, 0.2], [0.0, 0.2, 0.0]],  # head 1: relevant 0.0, 0.2 -> 0.1
            ]
        ]
    )
    s = item_scores(mass, relevant=1)
    assert s["relevant"][0].tolist() == pytest.approx([0.5, 0.1])
    assert s["all_docs"][0].tolist() == pytest.approx([0.7, 0.3])
    assert s["irrelevant"][0].tolist() == pytest.approx([0.2, 0.2])
    assert s["share"][0].tolist() == pytest.approx([0.5 / 0.7, 0.1 / 0.3])
    other = item_scores(torch.zeros(1, 2, 1, 3) + 0.1, relevant=0)  # relevant 0.1 everywhere
    means, note = aggregate([s, other], [True, False])  # only the correct prompt counts
    assert note == "correct prompts"
    assert means["relevant"][0].tolist() == pytest.approx([0.5, 0.1])
    assert means["relevant_all_prompts"][0].tolist() == pytest.approx([0.3, 0.1])
    means, note = aggregate([s, other], [False, False])  # none correct: all prompts, said so
    assert "none answered correctly" in note
    assert means["relevant"][0].tolist() == pytest.approx([0.3, 0.1])
    with pytest.raises(AnalyzerError):
        aggregate([], [])


def test_span_log_mass_hand_worked():
    # one query row at position 2 sees keys 0..2 (key 3 is in its future)
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0], [math.log(5.0), 0.0], [9.0, 0.0]])
    # scores log(1), log(2), log(5) -> probs 1/8, 2/8, 5/8; span [1, 3) holds 7/8
    got = span_log_mass(q, k, torch.tensor([2]), (1, 3), scaling=1.0)
    assert float(got.exp()) == pytest.approx(7 / 8)
    got = span_log_mass(q, k, torch.tensor([2]), (0, 1), scaling=1.0)
    assert float(got.exp()) == pytest.approx(1 / 8)
    # a mask hiding key 2 leaves probs 1/3, 2/3
    mask = torch.tensor([[True, True, False, True]])
    got = span_log_mass(q, k, torch.tensor([2]), (1, 3), scaling=1.0, mask=mask)
    assert float(got.exp()) == pytest.approx(2 / 3)


def test_span_log_mass_gradient_raises_span_attention():
    torch.manual_seed(0)
    k = torch.randn(6, 4)
    dq = torch.zeros(4, requires_grad=True)
    q = torch.randn(2, 4)
    rows = torch.tensor([4, 5])
    before = span_log_mass(q + dq, k, rows, (1, 3), 0.5).mean()
    (-before).backward()
    assert dq.grad is not None and float(dq.grad.norm()) > 0
    with torch.no_grad():
        after = span_log_mass(q - 0.1 * dq.grad, k, rows, (1, 3), 0.5).mean()
    assert float(after) > float(before.detach())
