"""Retrieval heads against nightdessert/Retrieval_Head (``retrieval_head_detection.py``).

Four needle tests (about 250-550 tokens) written for this test: the reference's chat prompt
(``<book>{context}</book>`` and the question), a needle whose answer is quoted so that the
reference's span search (the answer tokenized alone, first window covering > 90 % of its
tokens) finds it in a byte-level BPE prompt. The reference decodes up to 50 tokens; the
analyzer runs with that ``max_new_tokens`` and the reference's settings: ``span="answer"``,
ROUGE-1 recall > 0.5 and stop at a newline (its defaults), and the three parameters whose
defaults deliberately differ from the reference: ``locate="overlap"`` (the reference's span
search instead of character offsets), ``stemming=True`` (rouge_score's Porter stemmer) and
``stop_tokens="newline_token"`` (only the newline token stops a decode, end-of-sequence tokens
do not).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
from tests.conftest import attn_implementation
from workbench import peer_rules as ref
from workbench.analyzers.retrieval import RetrievalAnalyzer

pytestmark = [pytest.mark.model, pytest.mark.slow]

DECODE_LEN = 50  # the reference's decode(q_outputs, input_ids[:, -1], 50)
NEEDLES = [  # (needle, question, answer); (haystack sentences, depth)
    (
        'The password for the lighthouse door is "amber falcon".',
        "What is the password for the lighthouse door?",
        "amber falcon",
        (10, 0.3),
    ),
    (
        'The name of the baker\'s grey cat is "Pickle Moon".',
        "What is the name of the baker's grey cat?",
        "Pickle Moon",
        (14, 0.5),
    ),
    (
        'The secret ingredient in the harbour soup is "roasted chestnut".',
        "What is the secret ingredient in the harbour soup?",
        "roasted chestnut",
        (18, 0.7),
    ),
    (
        'The rare orchid in the town greenhouse is called "Velvet Dawn".',
        "What is the rare orchid in the town greenhouse called?",
        "Velvet Dawn",
        (22, 0.9),
    ),
]


def needle_items() -> list[dict[str, str]]:
    """The needle inserted at a sentence boundary of the first ``n`` corpus sentences."""
    corpus = (Path(workbench.__file__).parent / "data" / "corpus.txt").read_text()
    sentences = re.split(r"(?<=[.!?])\s+", corpus.strip())
    assert len(sentences) >= 22
    items = []
    for needle, question, answer, (n, depth) in NEEDLES:
        hay = sentences[:n]
        k = round(depth * n)
        context = " ".join([*hay[:k], needle, *hay[k:]])
        prompt = (
            f"<book>{context}</book>\nBased on the content of the book, Question: {question}"
            "\nAnswer:"
        )
        items.append({"prompt": prompt, "needle": needle, "answer": answer})
    return items


def test_retrieval_agrees_with_reference_code(lm):
    items = needle_items()
    df = RetrievalAnalyzer().run(
        lm,
        items,
        max_new_tokens=DECODE_LEN,
        span="answer",
        pass_recall=0.5,
        stop_at_newline=True,
        locate="overlap",
        stemming=True,
        stop_tokens="newline_token",
        chat=True,
        causal=False,
        progress=False,
    )
    tests = []
    with attn_implementation(lm.model, "eager"):
        for item in items:
            ids = lm.tokenizer.apply_chat_template(
                [{"role": "user", "content": item["prompt"]}],
                tokenize=True,
                add_generation_prompt=True,
                return_tensors="pt",
            )
            ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
            assert ids.tolist() == lm.encode(item["prompt"], chat=True).input_ids.tolist()
            tests.append(ref.retrieval_test(lm.model, lm.tokenizer, ids, item["answer"]))
    ours_tests = df.attrs["tests"]
    assert df.attrs["params"]["locate"] == "overlap" and df.attrs["params"]["stemming"]
    assert df.attrs["tests_unlocated"] == 0
    # same answer spans, the same responses (same stop tokens) and the same tests passed
    assert [tuple(t["span"] or (-1, -1)) for t in ours_tests] == [t["span"] for t in tests]
    same = [m["response"] == t["response"] for m, t in zip(ours_tests, tests, strict=True)]
    for mine, theirs, ok in zip(ours_tests, tests, same, strict=True):
        if not ok:
            print(f"[peer] retrieval response {mine['response']!r}, ref {theirs['response']!r}")
    assert sum(same) >= len(tests) - 1  # a near-tie may flip one greedy token (fused kernels)
    passed_ref = [t["recall"] > 0.5 for t in tests]
    assert [t["passed"] for t in ours_tests] == passed_ref
    assert sum(passed_ref) >= 2, "too few tests passed for a ranking"

    ours = df["score"].to_numpy().reshape(lm.info.n_layers, lm.info.n_heads)
    result = ref.agreement(ours, ref.retrieval_head_scores(tests))
    print(
        ref.report(
            "retrieval",
            result,
            tests_passed=f"{sum(passed_ref)}/{len(tests)}",
            stemmer=ref.STEMMER,
        )
    )
    assert np.count_nonzero(ours) >= 10
    assert result["spearman"] >= 0.95
    assert result["shared"] >= ref.TOP_K - 1
