"""The analyzer parameters that select a reference code's setting where the workbench's rule
deliberately differs (issue 15, item 4): Porter stemming in the ROUGE-1 pass rule, the
reference's span search and stop tokens (retrieval), the per-prompt sink threshold (sinks), the
prompts averaged and the rows read (contextual). Expected values are worked by hand."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from workbench.analyzers import get_analyzer
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.contextual import SCORE_OVER
from workbench.analyzers.mdqa import ANSWER_ROWS, answer_rows, response_rows
from workbench.analyzers.niah_runs import (
    STOP_RULES,
    StopAtNewlineToken,
    newline_token_ids,
)
from workbench.analyzers.retrieval_rule import answer_recall, answered, overlap_span, rouge_words
from workbench.analyzers.sinks import SINK_RULES
from workbench.analyzers.stemming import measure, porter_stem, rouge_stem
from workbench.errors import WorkbenchError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok():
    """The embedded model's tokenizer alone (no weights)."""
    from transformers import AutoTokenizer

    from workbench.models import resolve_source

    _, source = resolve_source(None)
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


# -- Porter stemmer (retrieval, stemming=True) --------------------------------------------------
@pytest.mark.parametrize(
    ("word", "m"),
    # Porter 1980's own examples of the measure m
    [
        *[("tr", 0), ("ee", 0), ("tree", 0), ("by", 0)],
        *[("trouble", 1), ("oats", 1), ("trees", 1), ("ivy", 1)],
        *[("troubles", 2), ("private", 2), ("oaten", 2), ("orrery", 2)],
    ],
)
def test_measure_follows_porters_examples(word, m):
    assert measure(word) == m


@pytest.mark.parametrize(
    ("word", "stem"),
    [
        ("caresses", "caress"),  # 1a: sses -> ss
        ("ponies", "poni"),  # 1a: ies -> i
        ("ties", "tie"),  # NLTK: a four-letter word keeps ie
        ("cats", "cat"),  # 1a: s -> ""
        ("falcons", "falcon"),  # 1a, nothing else applies
        ("hopping", "hop"),  # 1b: ing, then the double consonant undone
        ("falling", "fall"),  # 1b: ing; ll is kept (l, s, z excluded), 5b needs m > 1
        ("filing", "file"),  # 1b: ing, then m = 1 and cvc -> e added; 5a keeps it (cvc)
        ("happy", "happi"),  # 1c: y -> i after a consonant
        ("generalization", "gener"),  # 2: ization -> ize, 3: alize -> al, 4: al removed
        ("relational", "relat"),  # 2: ational -> ate, 5a: e removed (m = 2)
        ("owed", "owe"),  # 1b: ed, NLTK's two-letter vowel-consonant counts as cvc -> e
        ("cried", "cri"),  # NLTK: ied -> i
        ("dying", "die"),  # NLTK irregular form
        ("by", "by"),  # NLTK: two letters are left alone
    ],
)
def test_porter_stem_of_hand_worked_words(word, stem):
    assert porter_stem(word) == stem


def test_rouge_stems_only_words_longer_than_three_characters():
    assert rouge_stem("cats") == "cat"
    assert rouge_stem("was") == "was"  # porter_stem would give "wa"
    assert porter_stem("was") == "wa"
    assert rouge_words("Was it cats?", stemming=True) == {"was": 1, "it": 1, "cat": 1}
    assert rouge_words("Was it cats?") == {"was": 1, "it": 1, "cats": 1}


def test_stemming_changes_the_pass_rule_only_when_asked():
    # answer "amber falcons" (2 words), response has "falcon": 1/2 exact, 2/2 stemmed
    assert answer_recall("amber falcons", "It is amber falcon.") == 0.5
    assert answer_recall("amber falcons", "It is amber falcon.", stemming=True) == 1.0
    assert not answered("amber falcons", "It is amber falcon.")
    assert answered("amber falcons", "It is amber falcon.", stemming=True)


def test_porter_stem_agrees_with_nltk_on_a_vocabulary():
    """Cross-check against NLTK's PorterStemmer (the stemmer rouge_score uses), where it is
    installed: every word of the bundled data, bare and with common suffixes."""
    porter = pytest.importorskip("nltk.stem.porter")
    reference = porter.PorterStemmer()
    data = Path(__file__).parents[2] / "workbench" / "data"
    words: set[str] = set()
    for name in ("corpus.txt", "needles.jsonl", "mdqa_facts.jsonl"):
        words |= set(re.findall(r"[a-z]+", (data / name).read_text(encoding="utf-8").lower()))
    suffixes = ("", "s", "ed", "ing", "ies", "ly", "ness", "fully", "ization", "ality", "ement")
    vocabulary = sorted({w + s for w in words for s in suffixes})
    assert len(vocabulary) > 5000
    wrong = [(w, reference.stem(w), porter_stem(w)) for w in vocabulary]
    wrong = [x for x in wrong if x[1] != x[2]]
    assert not wrong, wrong[:10]


# -- span search (retrieval, locate="overlap") --------------------------------------------------
def test_overlap_span_hand_worked():
    assert overlap_span([5, 7, 8, 9, 7], [7, 8, 9]) == (1, 4)
    assert overlap_span(torch.tensor([5, 7, 8, 9, 7]), [7, 8, 9]) == (1, 4)
    assert overlap_span([5, 7, 8, 9, 7], [8, 6]) is None  # 1/2 of {8, 6} at most
    # the token *set* counts: window [9, 8, 7] covers {7, 8, 9}, order ignored, first wins
    assert overlap_span([1, 9, 8, 7, 8, 9], [7, 8, 9]) == (1, 4)
    # 9 of 10 distinct tokens is 0.9, not above it
    assert overlap_span([*range(9), 99], list(range(10))) is None
    assert overlap_span(list(range(10)), list(range(10))) == (0, 10)
    with pytest.raises(AnalyzerError, match="no tokens"):
        overlap_span([1, 2], [])


def test_overlap_span_misses_a_bpe_leading_space_answer(tok):
    """Why offsets are the default: "falcon" tokenized alone is not the " falcon" of the
    prompt, so a one-word answer is not found; offsets find it."""
    prompt = "The password is amber falcon today."
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    alone = tok("falcon", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids).count("Ġfalcon") == 1
    assert overlap_span(ids, alone) is None
    quoted = tok(" falcon", add_special_tokens=False)["input_ids"]
    start = tok.convert_ids_to_tokens(ids).index("Ġfalcon")
    assert overlap_span(ids, quoted) == (start, start + 1)


# -- stop tokens (retrieval, stop_tokens="newline_token") ---------------------------------------
def test_newline_token_is_the_byte_level_newline(tok):
    assert newline_token_ids(tok) == [tok.convert_tokens_to_ids("Ċ")]
    assert tok.decode(newline_token_ids(tok)) == "\n"


def test_stop_at_newline_token_stops_only_at_the_newline_token(tok):
    nl = tok.convert_tokens_to_ids("Ċ")
    double = tok.convert_tokens_to_ids("ĊĊ")  # holds a newline, is not the newline token
    assert double != tok.unk_token_id
    rows = torch.tensor([[5, nl], [5, double], [nl, 5]])
    assert StopAtNewlineToken(tok)(rows, None).tolist() == [True, False, False]
    default = STOP_RULES["newline_or_eos"].newline(tok)
    assert default(rows, None).tolist() == [True, True, False]


def test_a_tokenizer_without_newline_token_is_refused():
    fake = SimpleNamespace(convert_tokens_to_ids=lambda tokens: [0] * len(tokens), unk_token_id=0)
    with pytest.raises(AnalyzerError, match="no newline token"):
        newline_token_ids(fake)


def test_only_the_reference_stop_rule_ignores_end_of_sequence():
    assert STOP_RULES["newline_or_eos"].eos and not STOP_RULES["newline_token"].eos


@pytest.mark.model
def test_newline_token_rule_decodes_past_end_of_sequence(lm):
    from workbench.analyzers.niah_runs import decode_greedy

    enc = lm.encode("What is the capital of France? Answer in one word.", chat=True)
    eos = lm.model.generation_config.eos_token_id
    (ours,) = decode_greedy(lm, [enc], max_new_tokens=12, stop_at_newline=False)
    (ref,) = decode_greedy(
        lm, [enc], max_new_tokens=12, stop_at_newline=False, stop_tokens="newline_token"
    )
    ours, ref = ours.tolist(), ref.tolist()
    assert eos in ours, ours  # the model ends its turn within 12 tokens
    end = ours.index(eos)
    assert ref[: end + 1] == ours[: end + 1]  # the same greedy tokens up to the end of turn
    assert len(ref) == 12 and len(ours) == end + 1  # ...then only the reference goes on
    assert lm.model.generation_config.eos_token_id == eos


# -- sink threshold (sinks, threshold_on) -------------------------------------------------------
def test_sink_rules_hand_worked():
    # head A scores 0.2, 0.2, 0.8 on three prompts (mean 0.4, above 0.3 on 1 of 3 prompts);
    # head B 0.35 on each (mean 0.35, above 0.3 on 3 of 3)
    per_prompt = np.array([[0.2, 0.35], [0.2, 0.35], [0.8, 0.35]])
    score = per_prompt.mean(0)
    share = (per_prompt > 0.3).mean(0)
    np.testing.assert_allclose(share, [1 / 3, 1.0])
    is_sink, rate = SINK_RULES["mean"](score, share, 0.3)
    assert is_sink.tolist() == [True, True] and rate == 1.0
    is_sink, rate = SINK_RULES["each_prompt"](score, share, 0.3)
    assert is_sink.tolist() == [False, True]
    assert rate == pytest.approx(2 / 3)  # 4 of 6 (prompt, head) pairs above 0.3


# -- contextual: prompts averaged, rows read ----------------------------------------------------
def test_contextual_rows_hand_worked():
    # a 10-token prompt and a 3-token answer: the rows producing the answer are 9, 10, 11
    # (the last prompt token predicts the first answer token); the answer tokens sit at 10-12
    assert answer_rows(10, 3).tolist() == [9, 10, 11]
    assert response_rows(10, 3).tolist() == [10, 11, 12]
    assert ANSWER_ROWS["producing"] is answer_rows and ANSWER_ROWS["response"] is response_rows


def test_contextual_score_over_hand_worked():
    assert [SCORE_OVER["correct"](c, "generated") for c in (True, False)] == [True, False]
    assert SCORE_OVER["correct"](False, "gold")  # gold answers count every prompt
    assert all(SCORE_OVER["all"](c, a) for c in (True, False) for a in ("generated", "gold"))


# -- parameter checks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("analyzer", "param", "good", "bad"),
    [
        ("retrieval", "locate", "overlap", "regex"),
        ("retrieval", "stemming", True, "yes"),
        ("retrieval", "stop_tokens", "newline_token", "eos"),
        ("sinks", "threshold_on", "each_prompt", "median"),
        ("contextual", "score_over", "all", "wrong"),
        ("contextual", "rows", "response", "answer"),
    ],
)
def test_new_parameters_are_checked_before_any_work(analyzer, param, good, bad):
    a = get_analyzer(analyzer)
    assert param in a.parameters()
    assert a.check_params(None, {param: good}) == {param: good}
    with pytest.raises(WorkbenchError, match=param) as info:
        a.check_params(None, {param: bad})
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


# -- the parameters through the analyzers (real model) ------------------------------------------
SINK_PROMPTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Rain fell on the harbour while the fishing boats waited for the tide to turn.",
    "A small bakery on the corner sold bread, pastries and strong black coffee.",
]


@pytest.mark.model
def test_sinks_threshold_on_each_prompt_is_the_mean_of_single_prompt_indicators(lm):
    from workbench.analyzers.sinks import SinkAnalyzer

    kwargs = {"first_threshold": 0.3, "causal": False, "progress": False}
    single = [
        SinkAnalyzer().run(lm, [p], threshold_on="each_prompt", **kwargs) for p in SINK_PROMPTS
    ]
    # one prompt: the share is 1 exactly where that prompt's score is above the threshold
    indicators = np.stack([(df["score"] > 0.3).to_numpy(dtype=float) for df in single])
    for df, ind in zip(single, indicators, strict=True):
        np.testing.assert_array_equal(df["sink_prompt_share"].to_numpy(), ind)
    whole = SinkAnalyzer().run(lm, SINK_PROMPTS, threshold_on="each_prompt", **kwargs)
    np.testing.assert_allclose(whole["sink_prompt_share"], indicators.mean(0), atol=1e-12)
    assert whole.attrs["sink_rate"] == pytest.approx(indicators.mean())
    assert (whole["is_sink_head"] == (indicators.mean(0) > 0.5)).all()
    assert whole.attrs["params"]["threshold_on"] == "each_prompt"
    # the default thresholds the mean score instead
    default = SinkAnalyzer().run(lm, SINK_PROMPTS, **kwargs)
    assert (default["is_sink_head"] == (whole["score"] > 0.3)).all()
    assert default.attrs["sink_rate"] == pytest.approx((whole["score"] > 0.3).mean())
    # report shards merge to the whole run's rule
    first_two = SinkAnalyzer().run(lm, SINK_PROMPTS[:2], threshold_on="each_prompt", **kwargs)
    merged = SinkAnalyzer().merge([first_two, single[2]])
    assert merged.attrs["sink_rate"] == pytest.approx(whole.attrs["sink_rate"])
    assert (merged["is_sink_head"] == whole["is_sink_head"]).all()


@pytest.mark.model
def test_retrieval_overlap_search_scores_an_unfound_span_zero(lm):
    from workbench.analyzers.retrieval import RetrievalAnalyzer

    needle = "The password for the lighthouse door is amber falcon."
    item = {
        "prompt": f"Notes from the harbour. {needle} The tide was low that day.\n"
        "What is the password for the lighthouse door? Answer in two words.",
        "needle": needle,
        "answer": "falcon",  # alone it tokenizes as 'fal' 'con', in the text as ' falcon'
    }
    kwargs = {"max_new_tokens": 8, "causal": False, "progress": False}
    found = RetrievalAnalyzer().run(lm, [item], **kwargs)
    missed = RetrievalAnalyzer().run(lm, [item], locate="overlap", **kwargs)
    assert found.attrs["tests_unlocated"] == 0 and found.attrs["tests"][0]["span"] is not None
    start, end = found.attrs["tests"][0]["span"]
    assert end - start == 1  # the one token ' falcon'
    assert missed.attrs["tests_unlocated"] == 1 and missed.attrs["tests"][0]["span"] is None
    assert (missed["score_all_tests"] == 0).all() and (missed["score"] == 0).all()
    assert missed.attrs["params"]["locate"] == "overlap"
