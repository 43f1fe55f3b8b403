"""Classic detectors against TransformerLens's own ``head_detector.detect_head``.

The real ``detect_head`` runs on a ``TransformerBridge`` booted around a second copy of the
embedded model (TransformerLens's eager attention, ``hook_pattern``), with TransformerLens's
defaults: its ``to_tokens`` prepends the BOS token, so the analyzer gets each prompt with the
BOS text in front (the same token ids, checked). Prompts written for this test: word lists
repeated twice (duplicate and induction heads), corpus sentences (previous-token heads).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import workbench
from workbench import peer_rules as ref
from workbench.analyzers.classic import (
    DuplicateTokenAnalyzer,
    InductionAnalyzer,
    PreviousTokenAnalyzer,
)
from workbench.models import EMBEDDED_NAME, ensure_embedded_cache

pytestmark = pytest.mark.model

WORDS = [
    *("apple", "river", "stone", "candle", "window", "garden", "silver", "mountain"),
    *("pencil", "harbor", "violin", "ladder", "marble", "feather", "rocket", "blanket"),
    *("tiger", "orchard", "lantern", "compass", "meadow", "kettle"),
]


@pytest.fixture(scope="module")
def bridge():
    """TransformerLens's bridge around its own copy of the embedded model."""
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_embedded_cache(progress=False)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return TransformerBridge.boot_transformers(
        EMBEDDED_NAME, hf_model=hf.eval(), tokenizer=tok, device="cpu"
    )


def repeated_prompts(n: int = 4, n_words: int = 12) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        seq = " ".join(rng.sample(WORDS, n_words))
        out.append(f"{seq} {seq}")
    return out


def natural_prompts(n: int = 4, n_words: int = 40) -> list[str]:
    corpus = (Path(workbench.__file__).parent / "data" / "corpus.txt").read_text()
    paragraphs = [p for p in corpus.split("\n") if p.strip()][:n]
    return [" ".join(p.split()[:n_words]) for p in paragraphs]


CASES = [  # analyzer, TransformerLens head name, prompts, exclude_bos, exclude_current_token
    (PreviousTokenAnalyzer, "previous_token_head", natural_prompts, False, False),
    (DuplicateTokenAnalyzer, "duplicate_token_head", repeated_prompts, False, False),
    (InductionAnalyzer, "induction_head", repeated_prompts, False, False),
    (InductionAnalyzer, "induction_head", repeated_prompts, True, True),
]


@pytest.mark.parametrize(
    ("analyzer", "head_name", "make_prompts", "exclude_bos", "exclude_current"),
    CASES,
    ids=["previous_token", "duplicate_token", "induction", "induction_excluding_bos_current"],
)
def test_classic_agrees_with_transformer_lens(
    lm, bridge, analyzer, head_name, make_prompts, exclude_bos, exclude_current
):
    from transformer_lens.head_detector import detect_head

    prompts = make_prompts()
    bos = lm.tokenizer.bos_token
    assert bos, "TransformerLens prepends a BOS token; the tokenizer must have one"
    ours_prompts = [bos + p for p in prompts]
    for mine, theirs in zip(ours_prompts, prompts, strict=True):
        assert lm.encode(mine).input_ids.tolist() == bridge.to_tokens(theirs).tolist()
    df = analyzer().run(
        lm,
        ours_prompts,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current,
        causal=False,
        progress=False,
    )
    theirs = detect_head(
        bridge,
        prompts,
        head_name,
        exclude_bos=exclude_bos,
        exclude_current_token=exclude_current,
        error_measure="mul",
    )
    ours = df["score"].to_numpy().reshape(lm.info.n_layers, lm.info.n_heads)
    result = ref.agreement(ours, theirs.double().numpy())
    name = head_name + (" (exclude_bos, exclude_current_token)" if exclude_bos else "")
    print(ref.report(name, result))
    assert result["spearman"] >= 0.95
    assert result["shared"] >= ref.TOP_K - 1
