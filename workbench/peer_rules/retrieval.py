"""Retrieval heads: nightdessert/Retrieval_Head, ``retrieval_head_detection.py``.

Adaptations the model and library versions force, each said where it occurs: the byte-level
BPE newline token ``'Ċ'`` for SentencePiece's ``<0x0A>``, the KV cache's keyword in the
installed transformers, retrieval's loop over heads run one layer at a time on a (heads, keys)
row block (same top-1, same test), and rouge_score's Porter stemmer taken from NLTK directly
(rouge_score is not installed; it calls ``nltk.stem.porter.PorterStemmer()``). Where NLTK is
not installed either, :data:`STEMMER` says so and the caller passes a stemmer (``stem=``);
nothing here falls back to the workbench's own.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from workbench.model_parts import cache_keyword
from workbench.peer_rules.common import n_layers_heads

Stemmer = Callable[[str], str]


def _porter() -> tuple[Stemmer | None, str]:
    """rouge_score's stemmer, ``nltk.stem.porter.PorterStemmer()``, or None without NLTK."""
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:
        return None, "none (nltk not installed: pass stem=)"
    return PorterStemmer().stem, "nltk PorterStemmer"


_STEM, STEMMER = _porter()


def find_needle_idx(prompt_ids: torch.Tensor, needle_ids: list[int]) -> tuple[int, int]:
    """``LLMNeedleHaystackTester.find_needle_idx``: the first window of ``len(needle_ids)``
    prompt tokens whose token *set* covers more than 90 % of the needle's token set."""
    span_len = len(needle_ids)
    for i in range(len(prompt_ids)):
        token_span = prompt_ids[i : i + span_len]
        span_ids = set(token_span.tolist())
        overlap = float(len(span_ids.intersection(set(needle_ids)))) / len(set(needle_ids))
        if overlap > 0.9:
            return i, i + span_len
    return -1, -1


def rouge1_recall(
    target: str, prediction: str, use_stemmer: bool = True, stem: Stemmer | None = None
) -> float:
    """``rouge_scorer.RougeScorer(['rouge1'], use_stemmer=True).score(target, prediction)
    ['rouge1'].recall`` with rouge_score's tokenizer: lowercase, non-alphanumerics to spaces,
    split, and with ``use_stemmer`` the Porter stemmer on words longer than 3 characters
    (``tokenize.tokenize``; the stemmer is ``stem``, by default :data:`STEMMER`)."""
    stem = stem or _STEM
    if use_stemmer and stem is None:
        raise RuntimeError("rouge1_recall: nltk is not installed; pass a Porter stemmer (stem=)")

    def tokens(text: str) -> list[str]:
        words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
        if use_stemmer:
            words = [stem(w) if len(w) > 3 else w for w in words]
        return [w for w in words if re.fullmatch(r"[a-z0-9]+", w)]

    want, have = Counter(tokens(target)), Counter(tokens(prediction))
    total = sum(want.values())
    if total == 0:
        return 0.0
    return sum(min(n, have[w]) for w, n in want.items()) / total


def _is_newline_token(tokenizer: Any, token_id: int) -> bool:
    """The reference stops at ``step_token == '<0x0A>'`` (SentencePiece's newline); the same
    token in a byte-level BPE vocabulary is spelled ``'Ċ'``."""
    return tokenizer.convert_ids_to_tokens(int(token_id)) in ("<0x0A>", "Ċ")


@torch.no_grad()
def retrieval_test(
    model: torch.nn.Module,
    tokenizer: Any,
    input_ids: torch.Tensor,
    real_needle: str,
    decode_len: int = 50,
    stem: Stemmer | None = None,
) -> dict[str, Any]:
    """One needle test as ``evaluate_and_log`` runs it on ``input_ids`` (1, T): locate
    ``real_needle``, prefill all but the last prompt token, then ``decode``: feed one token per
    step with ``output_attentions=True``, greedy next token, ``retrieval_calculate`` (top-1 key
    of the step's last attention row inside the needle span and equal to the emitted token adds
    ``1 / span``) and stop after a newline token or token id 144 (the reference's literal
    ``inp.item()==144``, an id of its own models' vocabularies; the byte token 'Å' here, which
    the analyzer's ``stop_tokens="newline_token"`` does not stop at); an end-of-sequence token
    does not stop it. Returns the per-head score (layers, heads), the response, ROUGE-1 recall
    (stemmed with ``stem``, default :data:`STEMMER`) and the span."""
    n_layers, n_heads = n_layers_heads(model)
    prompt_ids = input_ids[0, :]
    needle_ids = tokenizer(real_needle, add_special_tokens=False)["input_ids"]
    needle_start, needle_end = find_needle_idx(prompt_ids, needle_ids)
    q_outputs = model(input_ids=input_ids[:, :-1], use_cache=True, return_dict=True)
    name = cache_keyword(model)
    past_kv = getattr(q_outputs, name)
    inp = input_ids[:, -1]
    output: list[int] = []
    score = np.zeros((n_layers, n_heads))
    for _ in range(decode_len):
        inp = inp.view(1, 1)
        outputs = model(input_ids=inp, use_cache=True, output_attentions=True, **{name: past_kv})
        past_kv = getattr(outputs, name)
        inp = outputs.logits[0, -1].argmax()
        output.append(int(inp.item()))
        for layer_idx in range(n_layers):
            # retrieval_calculate's loop over heads, one layer at a time: top-1 key of the
            # last row, inside [needle_start, needle_end) and holding the emitted token
            _values, idx = outputs.attentions[layer_idx][0, :, -1].topk(1, dim=-1)
            for head_idx, i in enumerate(idx[:, 0].tolist()):
                if needle_start <= i < needle_end and inp.item() == prompt_ids[i].item():
                    score[layer_idx, head_idx] += 1 / (needle_end - needle_start)
        if _is_newline_token(tokenizer, int(inp.item())) or inp.item() == 144:
            break
    response = tokenizer.decode(output, skip_special_tokens=True).strip()
    return {
        "score": score,
        "response": response,
        "recall": rouge1_recall(real_needle, response, stem=stem),
        "span": (needle_start, needle_end),
        "steps": len(output),
    }


def retrieval_head_scores(tests: Sequence[dict[str, Any]]) -> np.ndarray:
    """``retrieval_head_accumulate`` + ``np.mean``: each head's score averaged over the tests
    whose ROUGE-1 recall is above 50 % (``score > 50`` on the 0-100 scale)."""
    passed = [t["score"] for t in tests if t["recall"] * 100 > 50]
    assert passed, "no reference test passed"
    return np.mean(np.stack(passed), axis=0)
