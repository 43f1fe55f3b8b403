"""Sinks and classic detectors on the real model, against independent computations."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import attn_implementation
from workbench.analyzers import AnalyzerError, analyze, get_analyzer, load_prompt_file
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.model

PROMPTS = [
    "alpha beta gamma delta epsilon alpha beta gamma delta epsilon",
    "The cat sat on the mat. The cat sat on the mat again.",
]


def _eager(lm, prompt):
    enc = lm.encode(prompt)
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        maps = lm.model(input_ids=enc.input_ids, output_attentions=True).attentions
    return enc, torch.stack([m[0] for m in maps]).double()  # (layers, heads, T, T)


def test_sinks_match_eager_maps(lm):
    df = analyze("sinks", lm, PROMPTS, progress=False, causal=False)
    first = torch.zeros(30, 9, dtype=torch.float64)
    hidden = torch.zeros(30, 9, dtype=torch.float64)
    for prompt in PROMPTS:
        enc, maps = _eager(lm, prompt)
        n = enc.n_tokens
        sink = maps.sum(2) / torch.arange(n, 0, -1)  # sum_i A[i, j] / (T - j)
        first += sink[..., 0]
        hidden += (sink[..., 1:] > 0.1).sum(-1)
    got = torch.tensor(df["score"].values).view(30, 9)
    assert torch.allclose(got, first / 2, atol=1e-5)
    assert torch.allclose(torch.tensor(df["hidden_sinks"].values).view(30, 9).double(), hidden / 2)
    assert df.attrs["sink_rate"] == pytest.approx(float((first / 2 > 0.3).double().mean()))
    assert df.attrs["prompts_used"] == 2
    assert list(df.columns[:4]) == ["layer", "head", "head_id", "score"]
    assert df["head_id"].iloc[10] == "L1H1"


@pytest.mark.parametrize("name", ["previous_token", "duplicate_token", "induction"])
def test_classic_detectors_equal_transformer_lens(name):
    """Same model and tokens through a TransformerLens TransformerBridge: TL's own
    ``detect_head`` gives the scores our analyzer computes from kernel maps."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.head_detector import detect_head

    bridge = _bridge()
    from workbench import backends

    adopted = backends.adopt(bridge)  # tokenizes like bridge.to_tokens (with BOS)
    tl = detect_head(bridge, PROMPTS, f"{name}_head").double()
    df = analyze(name, adopted, PROMPTS, progress=False, causal=False)
    ours = torch.tensor(df["score"].values).view(30, 9)
    assert (ours - tl).abs().max() <= 1e-5


_BRIDGE = {}


def _bridge():
    if "b" not in _BRIDGE:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from workbench.models import EMBEDDED_NAME, ensure_embedded_cache

        path = ensure_embedded_cache(progress=False)
        hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        _BRIDGE["b"] = TransformerBridge.boot_transformers(
            EMBEDDED_NAME, hf_model=hf, tokenizer=tok, device="cpu"
        )
    return _BRIDGE["b"]


def test_induction_causal_evidence_is_reported(lm):
    df = analyze("induction", lm, progress=False, n_prompts=2, n_words=12, draws=1, top_k=3)
    causal = df.attrs["causal"]
    assert causal["k"] == 3 and len(causal["random_k"]) == 1
    assert causal["top_heads"] == list(df.nlargest(3, "score")["head_id"])
    # random heads come from the same layers as the top heads, never the top heads themselves
    top_layers = sorted(int(h[1:].split("H")[0]) for h in causal["top_heads"])
    rand = causal["random_heads"][0]
    assert sorted(int(h[1:].split("H")[0]) for h in rand) == top_layers
    assert not set(rand) & set(causal["top_heads"])


def test_scan_interrupt_keeps_finished_prompts(lm, monkeypatch):
    """Ctrl-C during the second batch: the first batch's prompts are kept, nothing else."""
    from workbench import batching
    from workbench.analyzers import sinks

    calls = {"n": 0}
    real = batching.run_batched

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(batching, "run_batched", flaky)
    df = sinks.SinkAnalyzer().run(lm, PROMPTS, progress=False, batch_size=1)
    assert df.attrs["interrupted"] and df.attrs["prompts_used"] == 1
    assert "causal" not in df.attrs


def test_bad_requests(lm, tmp_path):
    with pytest.raises(AnalyzerError, match="unknown analyzer 'nope'"):
        get_analyzer("nope")
    with pytest.raises(WorkbenchError, match="empty"):
        analyze("sinks", lm, [""], progress=False)
    with pytest.raises(WorkbenchError, match="n_prompts"):
        analyze("sinks", lm, progress=False, n_prompts=0)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\nnot json\n')
    with pytest.raises(WorkbenchError, match="line 2"):
        load_prompt_file(bad)
    with pytest.raises(WorkbenchError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.txt")
