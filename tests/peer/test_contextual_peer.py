"""Contextual heads against billzyx/focus_direction (``get_contextual_heads.py``,
``decoding_methods.py``).

Four multi-document QA prompts in the reference's format (Lost in the Middle's QA prompt:
its instruction, ``Document [i](Title: t) text`` lines, ``Question: ...`` and ``Answer:``),
written for this test with one relevant document among three fillers; the needle is the
relevant document as the reference defines it, ``(Title: t) text``. The reference generates
up to 100 tokens; the analyzer runs with that ``max_new_tokens``.

Deliberate differences, each an analyzer parameter; the test runs the reference settings:

* the reference averages over every prompt; the analyzer's default ``score`` averages over the
  prompts it answers correctly. ``score_over="all"`` is the reference setting.
* the reference reads the attention of the rows *at* the response tokens; the analyzer's
  default reads the rows that *produce* them (one position earlier). ``rows="response"`` is
  the reference setting. A second run with the default rows is compared against the
  reference's rows moved back by one, so the row offset is the only difference.
"""

from __future__ import annotations

import pytest

from tests.conftest import attn_implementation
from workbench import peer_rules as ref
from workbench.analyzers.contextual import ContextualAnalyzer

pytestmark = [pytest.mark.model, pytest.mark.slow]

MAX_LENGTH = 100  # original_decoding_with_cache(max_length=100)
INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search "
    "results (some of which might be irrelevant)."
)
FACTS = [  # title, document, question, answer
    (
        "Korven Lighthouse",
        "The old lighthouse on Korven Island was repainted last spring, and it is now bright "
        "green from top to bottom.",
        "What color is the lighthouse on Korven Island?",
        "green",
    ),
    (
        "Pell Valley FC",
        "The mascot of the Pell Valley football club is a badger named Crumble.",
        "What is the name of the Pell Valley football club's mascot?",
        "Crumble",
    ),
    (
        "Winter Gate",
        "The opera Winter Gate was written by the composer Ilse Brandvold, who finished it in a "
        "single winter.",
        "Who wrote the opera Winter Gate?",
        "Ilse Brandvold",
    ),
    (
        "Tamsel River",
        "The Tamsel River runs for 412 kilometres before it reaches the sea near the town of "
        "Orvik.",
        "How long is the Tamsel River?",
        "412",
    ),
]
FILLERS = [
    (
        "Bread baking",
        "Bakers adjust the water in a dough to the flour they use, since some flours absorb "
        "more than others.",
    ),
    (
        "Library shelves",
        "Most public libraries sort their books by subject so that readers can browse related "
        "titles together.",
    ),
    (
        "Garden frost",
        "Late frosts can damage young plants, so gardeners often cover seedlings with cloth on "
        "cold nights.",
    ),
]


def mdqa_items() -> list[dict]:
    items = []
    for i, (title, document, question, answer) in enumerate(FACTS):
        docs = [f"(Title: {t}) {d}" for t, d in FILLERS]
        relevant = i % len(docs)
        docs.insert(relevant, f"(Title: {title}) {document}")
        body = "\n".join(f"Document [{k + 1}]{d}" for k, d in enumerate(docs))
        prompt = f"{INSTRUCTION}\n\n{body}\n\nQuestion: {question}\nAnswer:"
        items.append({"prompt": prompt, "documents": docs, "relevant": relevant, "answer": answer})
    return items


def test_contextual_agrees_with_reference_code(lm):
    items = mdqa_items()
    common = {
        "answer": "generated",
        "score_over": "all",
        "max_new_tokens": MAX_LENGTH,
        "chat": True,
        "causal": False,
        "focus": False,
        "progress": False,
    }
    df = ContextualAnalyzer().run(lm, items, rows="response", **common)
    producing = ContextualAnalyzer().run(lm, items, rows="producing", **common)
    with attn_implementation(lm.model, "eager"):
        examples = [
            ref.contextual_example(
                lm.model, lm.tokenizer, it["prompt"], it["documents"][it["relevant"]]
            )
            for it in items
        ]
    for example in examples:  # the reference located every span
        assert -1 not in (*example["needle_range"], *example["response_range"])
    shape = (lm.info.n_layers, lm.info.n_heads)
    assert df.attrs["params"]["score_over"] == "all" and df.attrs["params"]["rows"] == "response"
    assert df.attrs["prompts_scored"] == len(items)
    ours = df["score"].to_numpy().reshape(shape)
    result = ref.agreement(ours, ref.show_and_save_scores(examples))
    shifted = ref.agreement(
        producing["score"].to_numpy().reshape(shape),
        ref.show_and_save_scores(examples, "score_producing"),
    )
    print(
        ref.report(
            "contextual (score_over='all', rows='response')",
            result,
            accuracy=df.attrs["accuracy"],
            max_diff_with_producing_rows=f"{shifted['max_abs_diff']:.2g}",
        )
    )
    assert result["spearman"] >= 0.95
    assert result["shared"] >= ref.TOP_K - 1
    assert result["max_abs_diff"] <= 1e-4
    assert shifted["max_abs_diff"] <= 1e-4
