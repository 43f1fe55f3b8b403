"""Independent re-implementations of the papers' own head-scoring code, for the peer-agreement
tests (issue 15, item 4).

Each function follows the reference repository's code line by line (cited in its docstring),
not the workbench's: transformers' eager attention maps (``output_attentions=True``), one
prompt at a time, plain loops. Nothing here imports the workbench (but for the stemmer
fallback said below). The only adaptations are the ones the model and library versions force,
each said where it occurs: the byte-level BPE
newline token ``'Ċ'`` for SentencePiece's ``<0x0A>``, a forward hook on ``q_proj`` for the
reference's edit of ``query_states`` inside its own Llama attention class, the KV cache's
keyword in the installed transformers, retrieval's loop over heads run one layer at a time
on a (heads, keys) row block (same top-1, same test), and rouge_score's Porter stemmer taken
from NLTK directly (rouge_score is not installed; it calls ``nltk.stem.porter.PorterStemmer()``).
Where NLTK is not installed either, :func:`rouge1_recall` falls back to the workbench's own
stemmer and :data:`STEMMER` says so (the stemmer itself is checked against NLTK and hand-worked
words in ``tests/unit/test_reference_settings.py``).

Shared: :func:`agreement`, the Spearman correlation over all heads and the top-5 overlap the
tests assert.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

TOP_K = 5


def _porter() -> tuple[Any, str]:
    """rouge_score's stemmer, ``nltk.stem.porter.PorterStemmer()``; the workbench's Porter
    stemmer when NLTK is missing (said in the name returned)."""
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:
        from workbench.analyzers.stemming import porter_stem

        return porter_stem, "workbench porter_stem (nltk not installed)"
    return PorterStemmer().stem, "nltk PorterStemmer"


_STEM, STEMMER = _porter()


# -- agreement ----------------------------------------------------------------------------------
def head_names(scores: np.ndarray, k: int = TOP_K) -> list[str]:
    """The ``k`` best heads of a (layers, heads) array as ``L{layer}H{head}``, best first."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_heads = np.asarray(scores).shape[1]
    order = np.argsort(-flat, kind="stable")[:k]
    return [f"L{i // n_heads}H{i % n_heads}" for i in order]


def agreement(ours: np.ndarray, ref: np.ndarray, k: int = TOP_K) -> dict[str, Any]:
    """Spearman correlation of two (layers, heads) score arrays over every head (average ranks
    for ties) and their top-``k`` heads; ``shared`` = heads in both top-``k`` sets."""
    a = np.asarray(ours, dtype=np.float64).reshape(-1)
    b = np.asarray(ref, dtype=np.float64).reshape(-1)
    assert a.shape == b.shape, (a.shape, b.shape)
    rho = float(pd.Series(a).rank().corr(pd.Series(b).rank()))
    top_ours, top_ref = head_names(ours, k), head_names(ref, k)
    return {
        "spearman": rho,
        "top_ours": top_ours,
        "top_ref": top_ref,
        "shared": len(set(top_ours) & set(top_ref)),
        "max_abs_diff": float(np.max(np.abs(a - b))),
    }


def report(family: str, result: dict[str, Any], **extra: Any) -> str:
    """One printable line per family (pytest -s shows it)."""
    more = "".join(f", {key}={value}" for key, value in extra.items())
    return (
        f"[peer] {family}: spearman={result['spearman']:.4f}, top-5 ours={result['top_ours']}, "
        f"reference={result['top_ref']}, shared={result['shared']}/5, "
        f"max |diff|={result['max_abs_diff']:.3g}{more}"
    )


def _layers(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    return model.model.layers


def _n_layers_heads(model: torch.nn.Module) -> tuple[int, int]:
    return model.config.num_hidden_layers, model.config.num_attention_heads


# -- retrieval: nightdessert/Retrieval_Head, retrieval_head_detection.py ------------------------
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


def rouge1_recall(target: str, prediction: str, use_stemmer: bool = True) -> float:
    """``rouge_scorer.RougeScorer(['rouge1'], use_stemmer=True).score(target, prediction)
    ['rouge1'].recall`` with rouge_score's tokenizer: lowercase, non-alphanumerics to spaces,
    split, and with ``use_stemmer`` the Porter stemmer on words longer than 3 characters
    (``tokenize.tokenize``; the stemmer is :data:`STEMMER`)."""

    def tokens(text: str) -> list[str]:
        words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
        if use_stemmer:
            words = [_STEM(w) if len(w) > 3 else w for w in words]
        return [w for w in words if re.fullmatch(r"[a-z0-9]+", w)]

    want, have = Counter(tokens(target)), Counter(tokens(prediction))
    total = sum(want.values())
    if total == 0:
        return 0.0
    return sum(min(n, have[w]) for w, n in want.items()) / total


def _cache_name(model: torch.nn.Module) -> str:
    """The keyword (and output field) of the KV cache: ``past_key_values`` in the reference's
    transformers, ``cache`` in transformers releases that renamed it."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _is_newline_token(tokenizer, token_id: int) -> bool:
    """The reference stops at ``step_token == '<0x0A>'`` (SentencePiece's newline); the same
    token in a byte-level BPE vocabulary is spelled ``'Ċ'``."""
    return tokenizer.convert_ids_to_tokens(int(token_id)) in ("<0x0A>", "Ċ")


@torch.no_grad()
def retrieval_test(
    model: torch.nn.Module,
    tokenizer,
    input_ids: torch.Tensor,
    real_needle: str,
    decode_len: int = 50,
) -> dict[str, Any]:
    """One needle test as ``evaluate_and_log`` runs it: locate ``real_needle``, prefill all but
    the last prompt token, then ``decode``: feed one token per step with
    ``output_attentions=True``, greedy next token, ``retrieval_calculate`` (top-1 key of the
    step's last attention row inside the needle span and equal to the emitted token adds
    ``1 / span``) and stop after a newline token or token id 144 (the reference's literal
    ``inp.item()==144``, an id of its own models' vocabularies; the byte token 'Å' here, which
    the analyzer's ``stop_tokens="newline_token"`` does not stop at); an end-of-sequence token
    does not stop it. Returns the per-head score (layers, heads), the response, ROUGE-1 recall
    (stemmed) and the span."""
    n_layers, n_heads = _n_layers_heads(model)
    prompt_ids = input_ids[0, :]
    needle_ids = tokenizer(real_needle, add_special_tokens=False)["input_ids"]
    needle_start, needle_end = find_needle_idx(prompt_ids, needle_ids)
    q_outputs = model(input_ids=input_ids[:, :-1], use_cache=True, return_dict=True)
    name = _cache_name(model)
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
        "recall": rouge1_recall(real_needle, response),
        "span": (needle_start, needle_end),
        "steps": len(output),
    }


def retrieval_head_scores(tests: Sequence[dict[str, Any]]) -> np.ndarray:
    """``retrieval_head_accumulate`` + ``np.mean``: each head's score averaged over the tests
    whose ROUGE-1 recall is above 50 % (``score > 50`` on the 0-100 scale)."""
    passed = [t["score"] for t in tests if t["recall"] * 100 > 50]
    assert passed, "no reference test passed"
    return np.mean(np.stack(passed), axis=0)


# -- sinks: sail-sg/Attention-Sink, eval_sink_open_source.py ------------------------------------
@torch.no_grad()
def measure_attention_sink(
    model: torch.nn.Module, tokenizer, prompts: Sequence[str], token_length: int = 64
) -> torch.Tensor:
    """``measure_attention_sink``: each prompt tokenized with the tokenizer's defaults and cut
    to ``token_length`` tokens, ``model.generate(max_new_tokens=1, output_attentions=True)``;
    the prefill maps of every layer stacked: (samples, layers, heads, T, T)."""
    n_layers, _ = _n_layers_heads(model)
    all_samples = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        for key in list(inputs):
            assert inputs[key].shape[1] >= token_length
            inputs[key] = inputs[key][:, :token_length]
        outputs = model.generate(
            **inputs,
            output_attentions=True,
            return_dict_in_generate=True,
            max_new_tokens=1,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
        attentions = outputs["attentions"]
        assert len(attentions) == 1
        layers = torch.cat([attentions[0][layer] for layer in range(n_layers)], dim=0)
        all_samples.append(layers.unsqueeze(dim=0))
    return torch.cat(all_samples, dim=0)


def sink_importance(attention_scores: torch.Tensor) -> torch.Tensor:
    """The ``importance_scores`` of ``compute_attention_sink``: attention to key k summed over
    queries and divided by ``T - k`` (the queries that see it): (samples, layers, heads, T)."""
    s, n_layers, n_heads, t1, t2 = attention_scores.shape
    assert t1 == t2
    ratios = (
        torch.arange(t1, 0, -1)[None, None, None, :]
        .expand(s, n_layers, n_heads, t1, t2)
        .to(attention_scores)
    )
    return (attention_scores / ratios).sum(dim=-2)


def compute_attention_sink(attention_scores: torch.Tensor, epsilon: float = 0.3) -> torch.Tensor:
    """``compute_attention_sink``: per key position, the percentage of (sample, layer, head)
    whose importance exceeds ``epsilon``; entry 0 is the paper's Sink rate."""
    importance = sink_importance(attention_scores)
    return (importance > epsilon).to(torch.float).mean(dim=(0, 1, 2)) * 100


# -- Ships: ydyjya/SafetyHeadAttribution, lib/SHIPS/get_ships.py, pd_diff.py ------------------
def ships_kl(base_pd: torch.Tensor, mask_pd: torch.Tensor) -> torch.Tensor:
    """``pd_diff.kl_divergence``: ``sum(p * log(p / q))`` after adding 1e-12 to both."""
    epsilon = 1e-12
    base_pd = base_pd + epsilon
    mask_pd = mask_pd + epsilon
    return torch.sum(base_pd * torch.log(base_pd / mask_pd))


@torch.no_grad()
def get_ships(
    model: torch.nn.Module,
    tokenizer,
    input_text: str,
    scale_factor: float = 1e-5,
    layers: tuple[int, int] | None = None,
) -> np.ndarray:
    """``SHIPS.get_ships`` with ``mask_cfg = {"mask_qkv": ["q"], "scale_factor": 1e-5,
    "mask_type": "scale_mask"}`` (the quick-start / Sahara configuration): for every head,
    its query states scaled by ``scale_factor`` before RoPE (``CustomLlamaAttention``:
    ``query_states[:, head_idx] *= scale_factor``; here a hook on ``q_proj`` scales the
    head's slice of the projection, the same tensor), then KL between the softmax of the last
    position's logits without and with the scaling. Input: ``tokenizer(input_text)`` (no chat
    template, ``use_tem=False``). ``layers=(start, end)`` scans those layers only, as
    ``get_ships(layers=...)``. Returns (layers, heads), NaN for layers not scanned."""
    n_layers, n_heads = _n_layers_heads(model)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // n_heads
    inputs = tokenizer(input_text, return_tensors="pt")

    def one_forward_pass() -> torch.Tensor:
        out = model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return torch.softmax(out.logits[:, -1, :], dim=-1)

    base_pd = one_forward_pass()
    start_layer, end_layer = (0, n_layers) if layers is None else layers
    res = np.full((n_layers, n_heads), np.nan)
    for layer in range(start_layer, end_layer):
        q_proj = _layers(model)[layer].self_attn.q_proj
        for head in range(n_heads):

            def scale(_module, _inp, out, head=head):
                out = out.clone()
                out[..., head * head_dim : (head + 1) * head_dim] *= scale_factor
                return out

            handle = q_proj.register_forward_hook(scale)
            try:
                now_pd = one_forward_pass()
            finally:
                handle.remove()
            res[layer, head] = float(ships_kl(base_pd, now_pd))
    return res


# -- contextual heads: billzyx/focus_direction, get_contextual_heads.py ------------------------
def find_best_idx(prompt_ids: torch.Tensor, needle_ids: list[int]) -> tuple[int, int]:
    """``decoding_methods.find_needle_idx``: the window of ``len(needle_ids)`` prompt tokens
    with the largest share of the needle's token set (first one on ties), if above 70 %."""
    span_len = len(needle_ids)
    max_overlap = 0.0
    best = (-1, -1)
    for i in range(len(prompt_ids)):
        token_span = prompt_ids[i : i + span_len]
        span_ids = set(token_span.tolist())
        overlap = float(len(span_ids.intersection(set(needle_ids)))) / len(set(needle_ids))
        if overlap > max_overlap:
            max_overlap = overlap
            best = (i, i + span_len)
    return best if max_overlap > 0.7 else (-1, -1)


def get_text_idx_range(text: str, prompt_ids: torch.Tensor, tokenizer) -> tuple[int, int]:
    """``decoding_methods.get_text_idx_range``: ``text`` tokenized alone, then located."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return find_best_idx(prompt_ids[0], ids)


@torch.no_grad()
def original_decoding_with_cache(
    model: torch.nn.Module, tokenizer, input_text: str, max_length: int = 100
) -> str:
    """``decoding_methods.original_decoding_with_cache``: chat template with the generation
    prompt, greedy ``model.generate``, decoded without special tokens."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": input_text}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    gen = model.generate(
        **inputs, max_new_tokens=max_length, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(gen[0, length:], skip_special_tokens=True)


@torch.no_grad()
def contextual_example(
    model: torch.nn.Module, tokenizer, prompt: str, needle: str, *, max_length: int = 100
) -> dict[str, Any]:
    """One example of ``process_long_context_prompt``: greedy response, the conversation
    (user prompt + assistant response) through the chat template and tokenized, the needle's
    and the response's token ranges located, one forward with ``output_attentions``, and
    ``extract_attention_with_range``: per head, the attention of the response rows summed over
    the needle's keys and averaged over the rows: ``score`` (layers, heads).

    ``score_producing``: the same with the rows moved one position back, to the rows that
    *produce* the response tokens (the workbench's answer rows); not the reference setting,
    it tells whether the row offset is the only difference."""
    n_layers, n_heads = _n_layers_heads(model)
    response = original_decoding_with_cache(model, tokenizer, prompt, max_length)
    conversation = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        tokenize=False,
    )
    ids = tokenizer(conversation, return_tensors="pt").input_ids
    needle_range = get_text_idx_range(needle, ids, tokenizer)
    response_range = get_text_idx_range(response, ids, tokenizer)
    attentions = model(input_ids=ids, return_dict=True, output_attentions=True).attentions
    out: dict[str, Any] = {
        "response": response,
        "needle_range": needle_range,
        "response_range": response_range,
    }
    for key, shift in (("score", 0), ("score_producing", -1)):
        r0, r1 = response_range[0] + shift, response_range[1] + shift
        score = np.zeros((n_layers, n_heads))
        for layer in range(n_layers):
            for head in range(n_heads):
                rows = attentions[layer][0, head, r0:r1, needle_range[0] : needle_range[1]]
                score[layer, head] = float(torch.sum(rows, dim=-1).mean().float())
        out[key] = score
    return out


def show_and_save_scores(examples: Sequence[dict[str, Any]], key: str = "score") -> np.ndarray:
    """``show_and_save_scores``: the per-example scores averaged over the examples."""
    scores = np.stack([e[key] for e in examples])
    assert not np.isnan(scores).any()
    return scores.mean(axis=0)


__all__ = [
    "STEMMER",
    "TOP_K",
    "agreement",
    "compute_attention_sink",
    "contextual_example",
    "find_best_idx",
    "find_needle_idx",
    "get_ships",
    "get_text_idx_range",
    "head_names",
    "measure_attention_sink",
    "original_decoding_with_cache",
    "report",
    "retrieval_head_scores",
    "retrieval_test",
    "rouge1_recall",
    "ships_kl",
    "show_and_save_scores",
    "sink_importance",
]
