"""Which keys are sinks: the sinks analyzer's rule (Gu et al. first-token sinks, ACT hidden
sinks) with the ``min_queries`` guard, on hand-worked attention matrices, against ACT's own
line, and the analyzer's hidden-sink counts against eager maps of the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.checks import ArgumentError
from workbench import maps
from workbench.analyzers.sinks import (
    FIRST_TOKEN_SINK,
    HIDDEN_SINK,
    MIN_QUERIES,
    NO_SINK,
    NOT_JUDGED,
    sink_rules,
)

T = 30


def scores(attn: np.ndarray) -> np.ndarray:
    """Sink score of every key, written out: sum_i A[i, j] / (T - j)."""
    n = attn.shape[-1]
    return attn.sum(-2) / np.arange(n, 0, -1)


def previous_token_head(n: int = T) -> np.ndarray:
    """Query 0 attends to itself, every later query i only to key i - 1."""
    attn = np.zeros((n, n))
    attn[0, 0] = 1.0
    attn[np.arange(1, n), np.arange(n - 1)] = 1.0
    return attn


def test_previous_token_head_marks_its_last_keys_only_under_acts_rule():
    # key j < T-1 gets weight 1 from query j+1 alone: score 1 / (T - j) (key 0: 2 / T). Over
    # 0.1 when T - j < 10, i.e. keys 21..28 of 30; key 29 receives nothing.
    sink = scores(previous_token_head())
    assert sink[0] == pytest.approx(2 / 30) and sink[21] == pytest.approx(1 / 9)
    act = sink_rules(sink, min_queries=1)
    assert np.flatnonzero(act == HIDDEN_SINK).tolist() == list(range(21, 29))
    assert act[0] == NO_SINK  # 2/30 is below Gu et al.'s 0.3
    # with the guard: keys seen by fewer than 20 queries (j >= 11) are not judged; the judged
    # ones score at most 1/20, so nothing is marked
    ours = sink_rules(sink, min_queries=MIN_QUERIES)
    assert MIN_QUERIES == 20
    assert (ours[:11] == NO_SINK).all() and (ours[11:] == NOT_JUDGED).all()
    assert not maps.sink_mask(sink, min_queries=MIN_QUERIES).any()


def test_a_real_hidden_sink_is_marked():
    # queries 0..4 put everything on key 0; queries 5..29 put 0.5 on key 0 and 0.5 on key 5.
    attn = np.zeros((T, T))
    attn[:5, 0] = 1.0
    attn[5:, 0] = 0.5
    attn[5:, 5] = 0.5
    sink = scores(attn)
    # key 0: (5 + 12.5) / 30 = 0.583 > 0.3; key 5: 12.5 / 25 = 0.5 > 0.1 (25 queries >= 20)
    assert sink[0] == pytest.approx(17.5 / 30) and sink[5] == pytest.approx(0.5)
    rules = sink_rules(sink, min_queries=MIN_QUERIES)
    assert rules[0] == FIRST_TOKEN_SINK and rules[5] == HIDDEN_SINK
    assert set(np.flatnonzero(rules > 0).tolist()) == {0, 5}
    assert maps.sink_mask(sink, min_queries=MIN_QUERIES).tolist() == [j in (0, 5) for j in range(T)]


def act_hidden_sinks(attn: torch.Tensor, threshold: float) -> list[int]:
    """ACT's line (GATECH-EIC/ACT, models/llama_modelling_aug.py, atten_process_cal),
    re-implemented for one head's (T, T) map."""
    shape = attn.shape[0]
    indices = torch.nonzero(
        torch.where(torch.sum(attn, dim=0) / torch.arange(shape, 0, -1) > threshold, 1, 0)
    )
    indices = indices[1:]
    return indices.flatten().tolist()


def random_causal_maps(seed: int, heads: int = 6, n: int = 40) -> torch.Tensor:
    """Causal softmax maps with a strong first token and a few heavy keys."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(heads, n, n, generator=gen, dtype=torch.float64) * 2
    logits[..., 0] += 4.0
    heavy = torch.randint(1, n, (heads, 3), generator=gen)
    for h in range(heads):
        logits[h, :, heavy[h]] += 3.0
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_queries_one_is_acts_rule(seed):
    attn = random_causal_maps(seed)
    for head in attn:
        sink = (head.sum(0) / torch.arange(head.shape[0], 0, -1)).numpy()
        assert sink[0] > 0.1  # key 0 passes, so ACT's indices[1:] drops exactly key 0
        ours = np.flatnonzero(sink_rules(sink, min_queries=1) == HIDDEN_SINK).tolist()
        assert ours == act_hidden_sinks(head, 0.1)
        assert ours  # the heavy keys make the comparison non-trivial


def test_acts_slice_drops_the_first_passing_key_when_key_0_does_not_pass():
    # the documented difference. Queries 0, 1, 2 attend to themselves; 3 and 4 to key 3;
    # 5..11 half to key 3, half to key 5. Scores: key 0 1/12, key 1 1/11, key 2 1/10 (not
    # > 0.1), key 3 (2 + 3.5) / 9 = 0.61, key 5 3.5 / 7 = 0.5.
    n = 12
    attn = torch.zeros(n, n, dtype=torch.float64)
    attn[0, 0] = attn[1, 1] = attn[2, 2] = 1.0
    attn[3:5, 3] = 1.0
    attn[5:, 3] = attn[5:, 5] = 0.5
    sink = (attn.sum(0) / torch.arange(n, 0, -1)).numpy()
    assert sink[3] == pytest.approx(5.5 / 9) and sink[5] == pytest.approx(0.5)
    assert np.flatnonzero(sink_rules(sink) == HIDDEN_SINK).tolist() == [3, 5]
    assert act_hidden_sinks(attn, 0.1) == [5]  # ACT's indices[1:] drops key 3, not key 0


def test_windows_and_blocks_use_the_prompt_length():
    sink = scores(previous_token_head())
    full = maps.sink_mask(sink, min_queries=1)
    # the first 25 keys of a 30-token prompt: key j is still seen by 30 - j queries
    assert maps.sink_mask(sink[:25], n_tokens=T, min_queries=1).tolist() == full[:25].tolist()
    assert maps.sink_mask(sink[25:], offset=25, n_tokens=T).tolist() == full[25:].tolist()
    rules = np.array([FIRST_TOKEN_SINK, NO_SINK, HIDDEN_SINK, NO_SINK, NOT_JUDGED, NOT_JUDGED])
    assert maps.block_sink_rules(rules, 2, 3).tolist() == [FIRST_TOKEN_SINK, HIDDEN_SINK, -1]
    assert maps.block_sink_rules(rules[1:], 4, 2).tolist() == [HIDDEN_SINK, NOT_JUDGED]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"min_queries": 0}, "min_queries"),
        ({"min_queries": 2.0}, "min_queries"),
        ({"hidden_threshold": 1.5}, "hidden_threshold"),
        ({"n_tokens": 3}, "n_tokens"),
        ({"offset": -1}, "offset"),
    ],
)
def test_bad_arguments_are_refused(kwargs, fragment):
    with pytest.raises(ArgumentError, match=fragment):
        sink_rules(np.full(5, 0.2), **kwargs)


@pytest.mark.model
def test_analyzer_hidden_counts_with_min_queries_match_eager_maps(lm):
    from tests.conftest import attn_implementation
    from workbench.analyzers import analyze

    prompts = [
        "The quick brown fox jumps over the lazy dog while the farmer watches from the old "
        "wooden fence near the river, and the children laugh at the noisy geese.",
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
        "rho sigma tau upsilon phi chi psi omega alpha beta gamma delta",
    ]
    df = analyze("sinks", lm, prompts, progress=False, causal=False, min_queries=MIN_QUERIES)
    hidden = torch.zeros(30, 9, dtype=torch.float64)
    for prompt in prompts:
        enc = lm.encode(prompt)
        with attn_implementation(lm.model, "eager"), torch.no_grad():
            out = lm.model(input_ids=enc.input_ids, output_attentions=True)
        attn = torch.stack([m[0] for m in out.attentions]).double()  # (layers, heads, T, T)
        n = attn.shape[-1]
        assert n > MIN_QUERIES
        seen = torch.arange(n, 0, -1)
        sink = attn.sum(2) / seen
        judged = seen[1:] >= MIN_QUERIES
        hidden += ((sink[..., 1:] > 0.1) & judged).sum(-1)
    got = torch.tensor(df["hidden_sinks"].values).view(30, 9).double()
    assert torch.allclose(got, hidden / 2)
    assert df.attrs["params"]["min_queries"] == MIN_QUERIES
