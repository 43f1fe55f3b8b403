"""Needle-in-a-haystack task generator and the retrieval-score rule (tokenizer only, no model)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from workbench.analyzers import niah
from workbench.analyzers.niah import NiahError, char_span_to_tokens, make_niah_tasks
from workbench.analyzers.retrieval_rule import answer_recall, answered, copy_events, retrieval_score
from workbench.errors import WorkbenchError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok():
    """The embedded model's tokenizer alone (no weights)."""
    from transformers import AutoTokenizer

    from workbench.models import resolve_source

    _, source = resolve_source(None)
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


# -- bundled data -------------------------------------------------------------------------------
def test_bundled_needles_are_well_formed():
    needles = niah.load_needles()
    assert len(needles) >= 12
    assert len({n.needle for n in needles}) == len(needles)
    for n in needles:
        assert n.answer.lower() in n.needle.lower()  # the answer's tokens are in the needle
        assert n.answer.lower() not in n.question.lower()  # ...and not given away by the question
        assert n.question.endswith("?")


def test_user_needle_file_and_errors(tmp_path):
    good = tmp_path / "n.jsonl"
    good.write_text(json.dumps({"needle": "A b c.", "question": "A?", "answer": "b"}) + "\n\n")
    assert niah.load_needles(good) == [niah.Needle("A b c.", "A?", "b")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"needle": "x", "question": "y"}\n')
    with pytest.raises(NiahError, match=r"line 1.*'answer'"):
        niah.load_needles(bad)
    with pytest.raises(NiahError, match="does not exist"):
        niah.load_needles(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(NiahError, match="empty"):
        niah.haystack_text(empty)


# -- span location --------------------------------------------------------------------------------
def test_char_span_to_tokens_hand_worked():
    # text "ab cd ef": tokens "ab" (0,2), " cd" (2,5), " ef" (5,8), plus a zero-width special
    offsets = [(0, 0), (0, 2), (2, 5), (5, 8)]
    assert char_span_to_tokens(offsets, 3, 5) == (2, 3)  # "cd": the token " cd" owns the space
    assert char_span_to_tokens(offsets, 0, 8) == (1, 4)  # special token excluded
    with pytest.raises(NiahError):
        char_span_to_tokens(offsets, 4, 4)


def test_needle_located_despite_bpe_leading_space(tok):
    needle = "The secret ingredient of Mara's soup is smoked paprika."
    prompt = f"Boats came back before dawn. {needle} The bakery opened.\n\nQuestion: What?"
    text = niah.prompt_text(tok, prompt)
    where = niah.locate_needle(tok, text, needle, "smoked paprika")
    ids = where["input_ids"]
    a, b = where["needle_span"]
    assert tok.decode(ids[a:b]).strip() == needle
    assert tok.convert_ids_to_tokens(ids[a]) == "ĠThe"  # the leading space lives in the token
    a2, b2 = where["answer_span"]
    assert a <= a2 < b2 <= b and tok.decode(ids[a2:b2]).strip() == "smoked paprika"
    # the pitfall: the needle tokenized alone starts with "The" (no space) and does not occur
    alone = tok(needle, add_special_tokens=False)["input_ids"]
    assert all(ids[i : i + len(alone)] != alone for i in range(len(ids)))


def test_needle_missing_is_a_clear_error(tok):
    with pytest.raises(NiahError, match="does not occur"):
        niah.locate_needle(tok, "some text", "a needle", "needle")


# -- generated tasks ------------------------------------------------------------------------------
def test_make_tasks_places_needles(tok):
    items = make_niah_tasks(tok, lengths=(256, 384), depths=(0.0, 0.5, 1.0), n_needles=2, seed=3)
    assert len(items) == 2 * 2 * 3
    for item in items:
        ids = tok(item["text"], add_special_tokens=False)["input_ids"]
        assert len(ids) == item["n_tokens"]
        assert abs(item["n_tokens"] - item["context_length"]) <= 4
        a, b = item["needle_span"]
        assert tok.decode(ids[a:b]).strip() == item["needle"]
        a2, b2 = item["answer_span"]
        assert tok.decode(ids[a2:b2]).strip().lower() == item["answer"].lower()
        assert item["prompt"] in item["text"] and item["text"].count(item["needle"]) == 1
        assert item["question"] in item["prompt"]
    # depth ordering within one (needle, length), same haystack: snapping to sentence ends
    # moves a needle back by at most a sentence (~30 tokens)
    for k in range(0, len(items), 3):
        d0, d5, d1 = (items[k + j]["needle_depth"] for j in range(3))
        assert d0 == 0.0 < d5 < d1
        assert 0.5 - 40 / 256 < d5 <= 0.5 and 1.0 - 40 / 256 < d1 <= 1.0
    # depth 0 opens the context; elsewhere the needle follows a sentence end or a line break
    for item in items:
        before = item["prompt"][: item["prompt"].index(item["needle"])]
        if item["depth"] == 0.0:
            assert before == ""
        else:
            assert before.endswith((". ", "! ", "? ", "\n")), before[-30:]


def test_make_tasks_deterministic_under_seed(tok):
    one = make_niah_tasks(tok, lengths=(128,), depths=(0.3, 0.7), seed=7)
    two = make_niah_tasks(tok, lengths=(128,), depths=(0.3, 0.7), seed=7)
    other = make_niah_tasks(tok, lengths=(128,), depths=(0.3, 0.7), seed=8)
    assert one == two
    assert [i["prompt"] for i in one] != [i["prompt"] for i in other]


def test_user_haystack_and_needles(tok, tmp_path):
    hay = tmp_path / "hay.txt"
    hay.write_text("Zebras graze on the plain. Lions sleep in the shade. Rain falls in March.\n")
    needles = [
        {
            "needle": "The vault code is 4471.",
            "question": "What is the vault code?",
            "answer": "4471",
        }
    ]
    items = make_niah_tasks(
        tok, lengths=(200,), depths=(0.5,), needles=needles, n_needles=None, haystack=hay
    )
    assert len(items) == 1 and "Zebras" in items[0]["prompt"]  # cycled to reach the length
    assert items[0]["n_tokens"] >= 190


def test_bad_parameters(tok):
    with pytest.raises(NiahError, match="too short for the needle"):
        make_niah_tasks(tok, lengths=(40,), depths=(0.5,))
    with pytest.raises(NiahError, match="depths"):
        make_niah_tasks(tok, depths=(1.5,))
    with pytest.raises(NiahError, match="lengths"):
        make_niah_tasks(tok, lengths=())
    with pytest.raises(NiahError, match="n_needles"):
        make_niah_tasks(tok, n_needles=100)
    assert issubclass(NiahError, WorkbenchError)


# -- the retrieval rule on a hand-worked case -----------------------------------------------------
def test_copy_events_hand_worked():
    # prompt ids: positions 0..5, needle span [2, 5) holding tokens 30, 31, 32
    prompt = torch.tensor([10, 11, 30, 31, 32, 12])
    emitted = torch.tensor([30, 31, 99])  # step 2 emits a token not in the needle
    sequence = torch.cat([prompt, emitted])
    # argmax (S=3, L=1, H=4)
    argmax = torch.tensor(
        [
            [[2, 2, 0, 3]],  # head0 copies (pos 2 holds 30), head1 too, head2 outside, head3 no
            [[3, 4, 3, 3]],  # head0 copies 31, head1 points at 32 != 31, head2/3 copy
            [[4, 6, 5, 7]],  # emitted 99: no copy (head3 points at a generated token)
        ]
    )
    events = copy_events(argmax, emitted, sequence, (2, 5))
    expected = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 1, 1]], [[0, 0, 0, 0]]], dtype=torch.bool)
    assert torch.equal(events, expected)
    score = retrieval_score(argmax, emitted, sequence, (2, 5))
    assert torch.allclose(score, torch.tensor([[2 / 3, 1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64))


def test_answer_recall_rule():
    assert answer_recall("smoked paprika", "The secret ingredient is smoked paprika.") == 1.0
    assert answer_recall("smoked paprika", "It is paprika") == 0.5
    assert not answered("smoked paprika", "It is paprika")  # strictly above 0.5, as reference
    assert answered("third stair of the tower", "Under the third stair.")  # 4/5 words
    assert answer_recall("", "anything") == 0.0
