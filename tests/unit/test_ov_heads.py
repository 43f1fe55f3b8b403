"""OV-circuit head families on tiny models: copy suppression and successor heads.

The hand-built model's weights are set so that every head's full OV circuit is known by
construction (-I, a cyclic shift, zero), GQA included; the expected scores are worked out by
hand in the comments, not computed by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import workbench
from tests.tiny_models import tiny_model
from workbench.analyzers import AnalyzerArgumentError, analyze, get_analyzer
from workbench.analyzers.copy_suppression import context_copy_mass, copy_suppression_items
from workbench.analyzers.ov_circuit import EMBEDDINGS, effective_embeddings, head_values
from workbench.analyzers.successor import OrdinalClass, successor_items
from workbench.lm import Encoded

V = 8  # vocabulary = residual width = head dimension: one-hot tokens, OV matrices 8 x 8


def shift() -> torch.Tensor:
    """P with P e_i = e_{i+1 mod 8}: the OV circuit of a perfect successor head."""
    return torch.roll(torch.eye(V), 1, dims=0)


def hand_built_lm() -> workbench.LoadedModel:
    """Two layers, 4 query heads in 2 KV groups (GQA), one-hot embeddings and unembeddings.

    Layer 0 writes nothing (o_proj = 0, MLP down_proj = 0), so every effective embedding of
    token s is e_s. Layer 1: W_V of KV group 0 (heads 0, 1) is I, of group 1 (heads 2, 3) -I;
    W_O of head 0 is -I, head 1 P, head 2 I, head 3 P. Full OV circuits:
    L1H0 = -I, L1H1 = P, L1H2 = I (-I) = -I (only if group 1's W_V is used), L1H3 = -P.
    """
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=V,
        intermediate_size=V,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=V,
        max_position_embeddings=32,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    eye = torch.eye(V)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(eye)
        model.lm_head.weight.copy_(eye)
        first, second = model.model.layers
        first.self_attn.o_proj.weight.zero_()
        first.mlp.down_proj.weight.zero_()
        second.self_attn.v_proj.weight.copy_(torch.cat([eye, -eye]))
        second.self_attn.o_proj.weight.copy_(torch.cat([-eye, shift(), eye, shift()], dim=1))
    return workbench.wrap_model(model, tokenizer=WordTokenizer(), name="hand-built")


class WordTokenizer:
    """Words "a".."h" are tokens 0..7 (a leading space changes nothing)."""

    words = "abcdefgh"
    all_special_ids = ()
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False, **_):
        return {"input_ids": [self.words.index(w) for w in text.replace(",", " ").split()]}


@pytest.fixture(scope="module")
def hand_lm():
    return hand_built_lm()


def grid(df, column="score"):
    return df.pivot(index="layer", columns="head", values=column).to_numpy()


def test_copy_suppression_hand_worked(hand_lm):
    # Row s of each circuit (c = sqrt(8) > 0, the RMSNorm of a one-hot vector):
    #   -I: -c at s, 0 elsewhere -> own logit strictly lowest: hit for every s (score 1)
    #   P:  +c at s+1, own 0 tied with 6 zeros -> miss (score 0); -P: own 0 > -c -> miss
    #   layer 0 writes nothing: all zeros, ties everywhere -> miss
    df = analyze("copy_suppression", hand_lm, causal=False, progress=False, n_tokens=100)
    assert df.attrs["params"]["n_tokens"] == V  # the whole vocabulary: 8 < 100
    expected = [[0, 0, 0, 0], [1, 0, 1, 0]]
    assert grid(df).tolist() == expected
    # With V = 8 every rank is < 10: bottom_10 is 1 for every head.
    assert (grid(df, "bottom_10") == 1).all()
    # z of the own logit in a row holding one value x != 0 and seven zeros: mean x/8,
    # population std |x| sqrt(7)/8. -I (own = x = -c): (-c + c/8) / (c sqrt7/8) = -sqrt(7);
    # P (own 0, x = +c): -1/sqrt(7); -P: +1/sqrt(7); layer 0 (all zero): 0.
    r7 = math.sqrt(7)
    z = grid(df, "self_z")
    assert z[1].tolist() == pytest.approx([-r7, -1 / r7, -r7, 1 / r7], abs=1e-9)
    assert z[0].tolist() == pytest.approx([0, 0, 0, 0], abs=1e-12)
    # interval columns are present and bracket the score (every token agrees: zero width)
    assert (df["score_lo"] <= df["score"]).all() and (df["score"] <= df["score_hi"]).all()


@pytest.mark.parametrize("embedding", EMBEDDINGS)
def test_every_effective_embedding_is_the_one_hot_token_here(hand_lm, embedding):
    # layer 0 writes nothing, so block0, mlp0 and raw all give e_s exactly
    got = effective_embeddings(hand_lm, range(V), embedding)
    assert torch.equal(got, torch.eye(V))
    most, _, _, _ = copy_suppression_items(hand_lm, list(range(V)), embedding)
    assert most.mean(0).tolist() == [[0, 0, 0, 0], [1, 0, 1, 0]]


def test_successor_hand_worked(hand_lm):
    # Class a..h (tokens 0..7). Row s restricted to the class: P gives +c at s+1, zeros
    # elsewhere -> successor strictly first: hit. -I: successor 0 tied with 6 zeros -> miss.
    # -P: successor -c, the lowest -> miss. Layer 0: all zeros, a tie -> miss.
    for cyclic, n_pairs in ((True, 8), (False, 7)):
        toy = OrdinalClass("toy", tuple("abcdefgh"), tuple(range(V)), cyclic)
        hits, names, _ = successor_items(hand_lm, [toy])
        assert hits.shape == (n_pairs, 2, 4) and names == ["toy"] * n_pairs
        assert hits.mean(0).tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    # a successor that is not the shift: a -> c -> e -> g (P maps a to b, not c): no hit
    skip = OrdinalClass("skip", tuple("aceg"), (0, 2, 4, 6), False)
    hits, _, _ = successor_items(hand_lm, [skip])
    assert hits.sum() == 0


def test_successor_analyzer_on_user_sequences(hand_lm):
    items = [{"prompt": "Toy Letters", "sequence": "a b c d e f g h", "cyclic": True}]
    df = analyze("successor", hand_lm, items, causal=False, progress=False)
    assert grid(df).tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert grid(df, "share_toy_letters").tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert df.attrs["pairs"] == {"Toy Letters": 8}
    assert df.attrs["chance"] == pytest.approx(1 / 8)  # 8 candidates per pair


def test_head_values_use_the_kv_group_of_each_query_head(hand_lm):
    values = head_values(hand_lm, 1, torch.eye(V))  # (8 tokens, 4 heads, 8)
    c = math.sqrt(V)  # RMSNorm of a one-hot row
    assert torch.allclose(values[:, 0], c * torch.eye(V), atol=1e-5)
    assert torch.allclose(values[:, 1], c * torch.eye(V), atol=1e-5)
    assert torch.allclose(values[:, 2], -c * torch.eye(V), atol=1e-5)
    assert torch.allclose(values[:, 3], -c * torch.eye(V), atol=1e-5)


def test_effective_embeddings_equal_a_hand_computation_on_a_random_llama():
    model = tiny_model("llama")
    lm = workbench.wrap_model(model, tokenizer=None, name="tiny-llama")
    ids = [3, 17, 200, 255]
    block = model.model.layers[0]
    eps = model.config.rms_norm_eps

    def rms(x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def mlp(x):
        m = block.mlp
        return m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))

    with torch.no_grad():
        emb = model.model.embed_tokens.weight[ids]
        # one token alone: attention weight 1 on itself, so the head output is its value
        v = block.self_attn.v_proj(rms(emb, block.input_layernorm.weight)).view(len(ids), 2, -1)
        z = v[:, [0, 0, 1, 1]].reshape(len(ids), -1)  # 4 query heads, 2 KV groups
        after_attn = emb + block.self_attn.o_proj(z)
        block0 = after_attn + mlp(rms(after_attn, block.post_attention_layernorm.weight))
        mlp0 = emb + mlp(rms(emb, block.post_attention_layernorm.weight))
    assert torch.allclose(effective_embeddings(lm, ids, "block0"), block0, atol=1e-5)
    assert torch.allclose(effective_embeddings(lm, ids, "mlp0"), mlp0, atol=1e-5)
    assert torch.allclose(effective_embeddings(lm, ids, "raw"), emb, atol=0)


def test_random_init_model_has_no_copy_suppression_beyond_chance():
    # Random embeddings, unembeddings and OV matrices share no structure: the own token is
    # the lowest of 256 logits with probability 1/256 per (token, head). 256 tokens x 16
    # heads: expected 16 hits in all, a head above 0.05 (13 of 256) essentially impossible.
    lm = workbench.wrap_model(tiny_model("llama"), tokenizer=None, name="tiny-llama")
    df = analyze("copy_suppression", lm, causal=False, progress=False, n_tokens=256)
    assert df.attrs["params"]["n_tokens"] == 256
    assert df["score"].max() <= 0.05
    assert df["score"].mean() <= 0.02
    assert df["self_z"].abs().mean() < 1.0


def test_bad_parameters_are_refused_before_any_work():
    cs, succ = get_analyzer("copy_suppression"), get_analyzer("successor")
    with pytest.raises(AnalyzerArgumentError, match=r"embedding.*block0.*mlp1"):
        cs.check_params(None, {"embedding": "mlp1"})
    with pytest.raises(AnalyzerArgumentError, match="n_tokens"):
        cs.check_params(None, {"n_tokens": 0})
    with pytest.raises(AnalyzerArgumentError, match=r"classes\[1\].*days.*weeks"):
        succ.check_params(None, {"classes": ["days", "weeks"]})
    with pytest.raises(AnalyzerArgumentError, match="n_tokens"):
        succ.check_params(None, {"n_tokens": 10})  # copy suppression's, not successor's


def test_successor_refuses_a_sequence_of_one_word(hand_lm):
    with pytest.raises(AnalyzerArgumentError, match="sequence"):
        analyze("successor", hand_lm, [{"prompt": "x", "sequence": ["a"]}], causal=False)


def test_context_copy_mass_hand_worked_sets(hand_lm):
    # The metric's sets, worked by hand (seen at positions 0..i, minus the true next token):
    #   tokens 0 1 0 2 1 -> i=0 {0} (next 1), i=1 {1} (next 0), i=2 {0, 1} (next 2),
    #                       i=3 {0, 2} (next 1)
    #   tokens 3 3 4     -> i=0 {} (next 3), i=1 {3} (next 4)
    # Probabilities from each prompt's own forward (no padding), set sums by hand.
    first, second = [0, 1, 0, 2, 1], [3, 3, 4]
    sets = ([{0}, {1}, {0, 1}, {0, 2}], [set(), {3}])

    def enc(ids):
        t = torch.tensor([ids])
        return Encoded(t, torch.ones_like(t), [str(i) for i in ids], "", False)

    want = []
    for ids, per_position in zip((first, second), sets, strict=True):
        with torch.no_grad():
            probs = torch.softmax(hand_lm.model(input_ids=torch.tensor([ids])).logits[0], -1)
        masses = [sum(float(probs[i, t]) for t in s) for i, s in enumerate(per_position)]
        want.append(sum(masses) / len(masses))
    got = context_copy_mass(hand_lm, [enc(first), enc(second)])  # one right-padded batch
    assert got == pytest.approx(want, abs=1e-6)
