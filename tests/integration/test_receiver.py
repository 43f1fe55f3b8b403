"""Receiver heads on the embedded model, against a reference written here: the
``output_attentions`` maps of a plain float64 attention (the model in float64) pooled to
sentence blocks as the reference code pools them (interp-reasoning/thought-anchors
``_compute_averaged_matrix`` and ``get_vertical_scores``, in numpy) and
``scipy.stats.kurtosis``; plus the refusals, the causal metric and the command line."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from tests.conftest import attn_implementation, no_hooks_left
from workbench.analyzers import analyze
from workbench.analyzers.base import AnalyzerError
from workbench.analyzers.receiver import TEXTS, sentence_spans, split_sentences
from workbench.cli import main

pytestmark = pytest.mark.model

#: Three bundled texts of different lengths, in one batch: every sentence boundary of the three
#: becomes a span of the batch's probe, and each text adds up its own (TEXTS[1] is the text
#: whose scores float32 rounding moves most).
CHOSEN = [TEXTS[0], TEXTS[1], TEXTS[8]]


def token_spans(lm, text: str) -> list[tuple[int, int]]:
    """Each sentence's tokens from the tokenizer's offsets, written here: the tokens whose
    characters overlap the sentence, token 0 (the sink) left out."""
    offsets = lm.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    out = []
    for a, b in split_sentences(text):
        toks = [t for t, (s, e) in enumerate(offsets) if s < b and e > a and e > s and t > 0]
        out.append((toks[0], toks[-1] + 1))
    return out


def eager64(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Plain float64 attention (transformers' eager computes its softmax in float32 even for a
    float64 model): GQA by repeating the KV heads, additive causal mask, softmax."""
    groups = query.shape[1] // key.shape[1]
    k = key.double().repeat_interleave(groups, dim=1)
    v = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ k.transpose(-1, -2) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : k.shape[-2]].double()
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v).to(query.dtype).transpose(1, 2).contiguous(), weights


AttentionInterface.register("test_eager64", eager64)
AttentionMaskInterface.register("test_eager64", eager_mask)


@pytest.fixture
def lm64(lm):
    """The embedded model in float64 for one test (float32 -> float64 -> float32 is exact).

    Kurtosis divides by the squared variance of a head's sentence scores: float32 rounding of
    the attention (1e-7) moves it by up to 1.6e-5 on the bundled texts (measured, kernels vs
    transformers' eager), so the 1e-5 comparison is made where both sides are exact."""
    lm.model.double()
    try:
        yield lm
    finally:
        lm.model.float()


def reference_kurtosis(lm, text: str, proximity: int, pool: str) -> np.ndarray:
    """(layers, heads): float64 maps -> block means (or masses) -> vertical scores -> kurtosis."""
    enc = lm.encode(text)
    with attn_implementation(lm.model, "test_eager64"), torch.no_grad():
        maps = lm.model(input_ids=enc.input_ids, output_attentions=True, use_cache=False)
    spans = token_spans(lm, text)
    n = len(spans)
    out = np.zeros((lm.info.n_layers, lm.info.n_heads))
    for layer, att in enumerate(maps.attentions):
        for head in range(lm.info.n_heads):
            a = att[0, head].double().numpy()
            mat = np.zeros((n, n))
            for i, (r0, r1) in enumerate(spans):
                for j, (c0, c1) in enumerate(spans):
                    block = a[r0:r1, c0:c1]
                    mat[i, j] = block.mean() if pool == "mean" else block.sum(1).mean()
            mat[np.triu_indices_from(mat, k=1)] = np.nan
            mat[np.triu_indices_from(mat, k=-proximity + 1)] = np.nan
            with warnings.catch_warnings():  # the last sentences: mean of nothing
                warnings.simplefilter("ignore", RuntimeWarning)
                vert = np.array([np.nanmean(mat[j + proximity :, j]) for j in range(n)])
            out[layer, head] = stats.kurtosis(vert, fisher=True, bias=True, nan_policy="omit")
    return out


@pytest.mark.parametrize(("pool", "proximity"), [("mean", 4), ("mass", 3)])
def test_receiver_equals_the_eager_reference(lm64, pool, proximity):
    lm = lm64
    df = analyze(
        "receiver",
        lm,
        CHOSEN,
        pool=pool,
        proximity=proximity,
        causal=False,
        batch_size=3,
        progress=False,
    )
    items = np.asarray(df.attrs["per_item"])
    for i, text in enumerate(CHOSEN):
        ref = reference_kurtosis(lm, text, proximity, pool)
        assert np.isfinite(ref).all()
        assert np.abs(items[i] - ref).max() <= 1e-5, (pool, i, np.abs(items[i] - ref).max())
    assert np.allclose(df["score"], items.mean(0).reshape(-1), atol=1e-12)
    assert df.attrs["sentences"] == [len(token_spans(lm, t)) for t in CHOSEN]
    assert no_hooks_left(lm)


def test_sentence_spans_leave_out_the_sink_token(lm):
    """SmolLM2 adds no BOS: token 0 is the text's first word, in sentence 0 unless left out."""
    text = TEXTS[0]
    assert lm.encode(text).tokens[0] == "We"
    assert sentence_spans(lm.tokenizer, text) == token_spans(lm, text)
    kept = sentence_spans(lm.tokenizer, text, exclude_bos=False)
    assert kept[0] == (0, token_spans(lm, text)[0][1]) and kept[1:] == token_spans(lm, text)[1:]


def test_too_few_sentences_refused_before_any_forward(lm, forwards):
    short = "One sentence is here. Another one is here. And a third one here."
    with pytest.raises(AnalyzerError, match=r"prompt 1 has 3 sentence\(s\).*at least"):
        analyze("receiver", lm, [TEXTS[0], short], progress=False)
    assert not forwards and no_hooks_left(lm)


def test_causal_metric_is_the_loss_from_sentence_proximity_on(lm):
    df = analyze(
        "receiver",
        lm,
        CHOSEN[:2],
        top_k=2,
        draws=1,
        causal_prompts=2,
        batch_size=1,
        progress=False,
    )
    causal = df.attrs["causal"]
    assert causal["k"] == 2 and len(causal["base_items"]) == 2
    assert causal["top_heads"] == list(df.nlargest(2, "score")["head_id"])
    for text, got in zip(CHOSEN[:2], causal["base_items"], strict=True):
        start = token_spans(lm, text)[4][0]  # the first token of sentence 4 (proximity)
        enc = lm.encode(text)
        with torch.no_grad():
            logits = lm.model(input_ids=enc.input_ids).logits[0, :-1].double()
        nll = torch.nn.functional.cross_entropy(logits, enc.input_ids[0, 1:], reduction="none")
        assert got == pytest.approx(float(nll[start - 1 :].mean()), rel=1e-6)
    anchors = df.attrs["anchors"]
    assert len(anchors) == 2 and all(isinstance(a["anchor_text"], str) for a in anchors)


def test_scan_command_writes_the_table(tmp_path, capsys, lm):
    out = tmp_path / "receiver.csv"
    args = ["scan", "--analyzer", "receiver", "--param", "n_prompts=2", "--param", "causal=false"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    meta = json.loads((tmp_path / "receiver.csv.json").read_text())
    assert meta["prompts_used"] == 2 and meta["params"]["proximity"] == 4
    assert main(["scan", "--list"]) == 0
    assert "receiver" in capsys.readouterr().out
