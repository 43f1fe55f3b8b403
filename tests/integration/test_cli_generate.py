"""``workbench generate``: base vs intervened continuation and per-position KL."""

from __future__ import annotations

import json

import pytest

from workbench.cli import EXIT_USER_ERROR, main

pytestmark = pytest.mark.model


def test_generate_json(capsys, lm):
    prompt = "The capital of France is"
    args = ["generate", "--prompt", prompt, "--ablate", "L3H1,L5H3", "--mode", "uniform",
            "--max-new-tokens", "4", "--json"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == lm.encode(prompt).tokens
    assert len(out["kl"]) == len(out["tokens"]) and min(out["kl"]) >= 0
    assert isinstance(out["base_text"], str) and isinstance(out["intervened_text"], str)
    assert out["base_text"] == lm.generate(prompt, max_new_tokens=4)


def test_generate_pasta_text(capsys, lm):
    prompt = "Alice lives in Paris. Bob lives in Rome. Bob lives in"
    args = [
        "generate",
        "--prompt",
        prompt,
        "--pasta",
        "L10H2,L12H4",
        "--emphasize",
        "Bob lives in Rome",
        "--max-new-tokens",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "base:" in out and "intervened:" in out and "KL" in out
    # PASTA (alpha 0.01) scales attention outside "Bob lives in Rome" down on L10H2 and L12H4.
    # A query before the span sees no emphasized key, so its distribution cannot move (KL 0 up
    # to float error); from the span on every position moves (measured: KL 2.5e-3 .. 3.4e-2).
    # With PASTA a no-op (alpha 1) every KL is 0 and this fails.
    table = out.split("at each prompt position:\n", 1)[1].splitlines()
    kl = [float(line.split()[-1]) for line in table]
    tokens = lm.encode(prompt).tokens
    assert len(kl) == len(tokens)
    start = tokens.index(" Bob")
    assert max(kl[:start]) < 1e-5
    assert min(kl[start:]) > 1e-3


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "nothing to do"),
        (["--ablate", "L1H1", "--mode", "mean"], "--reference"),
        (["--ablate", "L40H1"], "layer 40"),
        (["--pasta", "L1H1"], "--emphasize"),
        (["--pasta", "L1H1", "--emphasize", "zzz"], "does not occur"),
        (["--pasta", "L1H1", "--emphasize", "hello", "--alpha", "0"], "alpha"),
    ],
)
def test_generate_errors(extra, match, capsys, lm):
    assert main(["generate", "--prompt", "hello world", *extra]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and match in err
