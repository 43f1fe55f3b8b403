"""Probes on the real model: parity with eager attention, cleanup, composition, errors."""

from __future__ import annotations

import pytest
import torch

import probes
import workbench
from probes.hooks import HOOKS_ATTR
from tests.conftest import SHORT_PROMPT, attn_implementation

pytestmark = pytest.mark.model


def _no_hooks_left(lm) -> bool:
    return not any(hasattr(m, HOOKS_ATTR) for m in lm.layout.attention_modules)


def test_plain_path_equals_sdpa(lm):
    enc = lm.encode(SHORT_PROMPT)
    got = lm.forward(enc)
    with attn_implementation(lm.model, "sdpa"):
        ref = lm.forward(enc)
    assert (got - ref).abs().max().item() <= 1e-4


def test_maps_equal_eager_output_attentions_all_heads(lm, eager_maps):
    enc, eager, eager_logits = eager_maps
    with lm.capture() as cap:  # all layers, all heads
        logits = lm.forward(enc)
    assert cap.records.layers_fired == tuple(range(30))
    assert (logits - eager_logits).abs().max().item() <= 1e-4
    worst = 0.0
    for layer in range(30):
        rec = cap.records[layer]
        assert rec.maps.shape == (1, 9, enc.n_tokens, enc.n_tokens)
        worst = max(worst, (rec.maps[0] - eager[layer][0]).abs().max().item())
    assert worst <= 1e-5, worst
    assert _no_hooks_left(lm)


def test_query_window_is_the_slice_of_the_full_map(lm, eager_maps):
    enc, eager, _ = eager_maps
    with lm.capture(layers=[4], heads=[2, 7], query_window=(5, 9)) as cap:
        lm.forward(enc)
    rec = cap.records[4]
    assert rec.maps.shape == (1, 2, 4, enc.n_tokens)
    assert (rec.map(7) - eager[4][0, 7, 5:9]).abs().max() <= 1e-5


def test_qk_reproduce_the_map_and_kv_follow_gqa(lm, eager_maps):
    """Independent check of q/k: softmax(q k^T / sqrt(D) + causal) is the eager map."""
    enc, eager, _ = eager_maps
    heads = [0, 4, 8]  # one query head from each KV group
    with lm.capture(layers=[6], heads=heads, maps=False, qkv=True) as cap:
        lm.forward(enc)
    rec = cap.records[6]
    n = enc.n_tokens
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i, h in enumerate(heads):
        scores = rec.q[0, i] @ rec.k[0, i].T / 64**0.5
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        assert (probs - eager[6][0, h]).abs().max() <= 1e-5
    # KV head of query head h is h // 3: heads 0,1,2 share one k.
    with lm.capture(layers=[6], heads=[0, 1, 3], maps=False, qkv=True) as cap:
        lm.forward(enc)
    k = cap.records[6].k[0]
    assert torch.equal(k[0], k[1]) and not torch.equal(k[0], k[2])


def test_head_outputs_through_o_proj_reproduce_attention_output(lm):
    enc = lm.encode(SHORT_PROMPT)
    layer = 11
    attn = lm.layout.attention_modules[layer]
    seen = {}

    def keep_output(module, args, out):
        seen["out"] = out[0].detach()

    handle = attn.register_forward_hook(keep_output)
    try:
        with lm.capture(layers=[layer], maps=False, z=True) as cap:
            lm.forward(enc)
    finally:
        handle.remove()
    z = cap.records[layer].z[0]  # (H, L, D)
    w = lm.layout.out_projections[layer].weight  # (hidden, H*D)
    per_head = torch.stack([z[h] @ w[:, h * 64 : (h + 1) * 64].T for h in range(9)])
    assert (per_head.sum(0) - seen["out"][0]).abs().max() <= 1e-4


def test_probes_compose_and_keep_logits(lm, eager_maps):
    enc, eager, eager_logits = eager_maps
    with lm.capture(layers=[1, 2], heads=[3]) as a, lm.capture(layers=[2], heads=[5], z=True) as b:
        logits = lm.forward(enc)
    assert (logits - eager_logits).abs().max() <= 1e-4
    assert (a.records.map(2, 3) - eager[2][0, 3]).abs().max() <= 1e-5
    assert (b.records.map(2, 5) - eager[2][0, 5]).abs().max() <= 1e-5
    assert b.records[2].z is not None and a.records[2].z is None
    assert _no_hooks_left(lm)


def test_hooks_removed_when_forward_raises(lm):
    class Boom(probes.AttentionHook):
        def prepare(self, call):
            raise RuntimeError("boom")

    cap = lm.capture(layers=[0])
    boom = probes.attached(Boom(), [lm.layout.attention_modules[3]])
    with pytest.raises(RuntimeError, match="boom"), cap, boom:
        lm.forward("hello there")
    assert _no_hooks_left(lm)


def test_layer_that_never_fired_is_an_error(lm):
    with (
        pytest.raises(workbench.LayerDidNotFireError, match=r"\[2, 3\]"),
        lm.capture(layers=[2, 3]),
    ):
        pass  # no forward inside
    assert _no_hooks_left(lm)


def test_model_on_another_attention_implementation_is_refused(lm):
    with attn_implementation(lm.model, "sdpa"), pytest.raises(probes.ProbeError, match="sdpa"):
        lm.capture(layers=[0])


def test_capture_too_large_is_refused_with_size_and_advice(lm):
    with pytest.raises(workbench.CaptureTooLargeError) as err:
        lm.run_capture(SHORT_PROMPT, max_bytes=10_000)
    msg = str(err.value)
    # 30 layers x 9 heads x L x L float32
    n = lm.encode(SHORT_PROMPT).n_tokens
    assert f"{30 * 9 * n * n * 4 / 1e3:.1f} KB" in msg
    assert "statistics" in msg and "query_window" in msg
    # the same check fires inside a forward started by hand, and hooks are removed
    with pytest.raises(workbench.CaptureTooLargeError), lm.capture(max_bytes=10_000):
        lm.forward(SHORT_PROMPT)
    assert _no_hooks_left(lm)


def test_full_context_maps_are_refused_before_running(lm):
    cap = lm.capture()
    with pytest.raises(workbench.CaptureTooLargeError, match="8192 tokens"):
        cap.check_fits(8192)  # 30 x 9 x 8192^2 x 4 B = 72 GB


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": [30]}, workbench.LayerOutOfRangeError, "layers.*0..29, got 30"),
        ({"layers": [-1]}, workbench.LayerOutOfRangeError, "layers.*got -1"),
        ({"heads": [9]}, workbench.HeadOutOfRangeError, "heads.*0..8, got 9"),
        ({"query_window": (5, 2)}, probes.ProbeError, "query_window"),
    ],
)
def test_bad_capture_requests(lm, kwargs, error, match):
    with pytest.raises(error, match=match):
        lm.capture(**kwargs)


def test_prompt_errors(lm):
    with pytest.raises(workbench.EmptyPromptError):
        lm.encode("   ")
    with pytest.raises(workbench.PromptTooLongError, match=r"8192"):
        lm.encode("word " * 9000)


def test_generation_records_every_decode_step(lm):
    enc = lm.encode("One, two, three,")
    with lm.capture(layers=[5], heads=[1]) as cap, torch.no_grad():
        out = lm.model.generate(
            input_ids=enc.input_ids,
            attention_mask=enc.attention_mask,
            max_new_tokens=3,
            do_sample=False,
        )
    n = enc.n_tokens
    assert out.shape[1] == n + 3
    assert cap.records.steps(5) == 3  # prefill + 2 decode steps (the 3rd token needs no forward)
    step1 = cap.records[5, 1]
    assert step1.maps.shape == (1, 1, 1, n + 1) and step1.query_offset == n
    # the decode-step row equals row n of an eager forward over the same n+1 tokens
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        ref = lm.model(input_ids=out[:, : n + 1], output_attentions=True).attentions[5]
    assert (step1.map(1)[0] - ref[0, 1, n]).abs().max() <= 1e-5


def test_gradients_flow_through_hooked_layers(lm):
    """With probes/interventions active and autograd on, the output is differentiable and
    equals the inference path's."""
    enc = lm.encode(SHORT_PROMPT)
    emb = lm.model.get_input_embeddings()(enc.input_ids).detach().requires_grad_(True)
    with lm.capture(layers=[2, 3], heads=[1]) as cap, workbench_zero(lm, "L3H4"):
        logits = lm.model(inputs_embeds=emb, use_cache=False).logits
    logits[0, -1].logsumexp(-1).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    with workbench_zero(lm, "L3H4"):
        ref = lm.forward(enc)
    assert (logits.detach() - ref).abs().max() <= 1e-4
    assert cap.records.map(3, 1).shape == (enc.n_tokens, enc.n_tokens)


def workbench_zero(lm, head):
    from workbench.interventions import ZeroAblation

    return ZeroAblation(lm, [head])
