"""``workbench bench --analyzers``: each analyzer as the workbench runs it against the reference
way of its paper's code, in one process, on the same prompts (issue 14, item 3).

Families: sinks, induction, retrieval and contextual (:data:`FAMILIES`). For each, the task is
built once (the analyzer's default task sizes, or the small :data:`QUICK` sizes), then timed
twice: (1) ``analyze(name, lm, items, causal=False)``, batched where the analyzer batches, read
through the statistics / capture kernels; (2) the reference rule of :mod:`workbench.peer_rules`
with transformers' eager attention and ``output_attentions=True``, one prompt at a time. Both
run the same scoring rule (the analyzer's reference-setting parameters, as the peer tests run
them) and the row reports both times, their ratio (reference / workbench: the speed-up), the
peak memory of each (:class:`workbench.bench.PeakMemory`: resident set size on CPU, so it
includes the weights; allocator peak on CUDA) and the largest absolute difference of the
per-head scores, which must be float rounding; a larger one is printed, never hidden.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench import peer_rules
from workbench.bench import Log, PeakMemory

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

#: Generated tokens per test for retrieval and contextual: both analyzers' default.
MAX_NEW_TOKENS = 24


@dataclass
class AnalyzerBenchRow:
    """One family's measurements (seconds, megabytes); ``speedup`` = reference / workbench."""

    family: str
    n_prompts: int
    workbench_s: float
    reference_s: float
    speedup: float
    workbench_peak_mb: float
    reference_peak_mb: float
    max_abs_diff: float
    nonzero_heads: int  # heads with a nonzero reference score: 0 makes the comparison empty
    forwards_s: float  # every prompt through the model once (no probe, batch 1): a floor
    note: str = ""


@dataclass(frozen=True)
class Family:
    """How to bench one family: ``task(lm, quick)`` builds the items; ``ours(lm, items)`` and
    ``reference(lm, items)`` return the per-head scores (layers, heads) and a note;
    ``prompt_ids(lm, items)`` the (1, T) token ids of each item's prompt as the reference
    tokenizes it."""

    analyzer: str
    task: Callable[[LoadedModel, bool], list[Any]]
    ours: Callable[[LoadedModel, list[Any]], np.ndarray]
    reference: Callable[[LoadedModel, list[Any]], tuple[np.ndarray, str]]
    prompt_ids: Callable[[LoadedModel, list[Any]], list[torch.Tensor]]


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` with transformers' eager attention (the reference's maps), then restore."""
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def _grid(lm: LoadedModel, df: Any) -> np.ndarray:
    """An analyzer frame's ``score`` column as (layers, heads) float64."""
    return df["score"].to_numpy(dtype=np.float64).reshape(lm.info.n_layers, lm.info.n_heads)


def _ids(lm: LoadedModel, text: str) -> torch.Tensor:
    """``tokenizer(text, return_tensors="pt").input_ids`` on the model's device: (1, T)."""
    return lm.tokenizer(text, return_tensors="pt").input_ids.to(lm.device)


def _plain_ids(lm: LoadedModel, prompts: list[Any]) -> list[torch.Tensor]:
    return [_ids(lm, p) for p in prompts]


def _chat_ids(lm: LoadedModel, prompt: str) -> torch.Tensor:
    """The chat-templated ids of one user message with the generation prompt: (1, T)."""
    ids = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        tokenize=True,
        add_generation_prompt=True,
        return_tensors="pt",
    )
    return (ids if isinstance(ids, torch.Tensor) else ids["input_ids"]).to(lm.device)


def prompt_forwards(lm: LoadedModel, prompt_ids: Sequence[torch.Tensor]) -> None:
    """Every prompt through the model once, one at a time, no probe, last logits only: work
    the reference does at least once per prompt, so ``reference_s / forwards_s`` is the most
    that faster attention alone can gain over it on this device (batching gains beyond it
    where bigger matrix products run faster: short prompts on a CPU)."""
    with torch.no_grad():
        for ids in prompt_ids:
            lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)


# -- sinks: Gu et al., sail-sg/Attention-Sink ---------------------------------------------------
def _sinks_task(lm: LoadedModel, quick: bool) -> list[Any]:
    from workbench.analyzers.sinks import N_PROMPTS, corpus_windows

    return corpus_windows(lm, 2 if quick else N_PROMPTS, 64)


def _sinks_ours(lm: LoadedModel, prompts: list[Any]) -> np.ndarray:
    from workbench.analyzers import analyze

    return _grid(lm, analyze("sinks", lm, prompts, causal=False, progress=False))


def _sinks_reference(lm: LoadedModel, prompts: list[Any]) -> tuple[np.ndarray, str]:
    """Each prompt's whole tokenization as its ``token_length`` (one prompt per call, as the
    reference runs them); the per-head score is the first key's importance averaged."""
    first = []
    for prompt in prompts:
        n = len(lm.tokenizer(prompt)["input_ids"])
        maps = peer_rules.measure_attention_sink(lm.model, lm.tokenizer, [prompt], n)
        first.append(peer_rules.sink_importance(maps)[0, ..., 0].double().cpu())
    return torch.stack(first).mean(0).numpy(), ""


# -- induction: Olsson et al., TransformerLens head_detector ------------------------------------
def _induction_task(lm: LoadedModel, quick: bool) -> list[Any]:
    from workbench.analyzers.classic import N_PROMPTS, repeated_word_prompts

    return repeated_word_prompts(lm, 2 if quick else N_PROMPTS, 20, 0)


def _induction_ours(lm: LoadedModel, prompts: list[Any]) -> np.ndarray:
    from workbench.analyzers import analyze

    return _grid(lm, analyze("induction", lm, prompts, causal=False, progress=False))


def _induction_reference(lm: LoadedModel, prompts: list[Any]) -> tuple[np.ndarray, str]:
    ids = [_ids(lm, p) for p in prompts]
    scores = peer_rules.detect_head(lm.model, ids, "induction_head")
    return scores.double().numpy(), ""


# -- retrieval: Wu et al., nightdessert/Retrieval_Head ------------------------------------------
#: The analyzer's reference-setting parameters (as tests/peer/test_retrieval_peer.py runs it).
RETRIEVAL_AS_REFERENCE = {
    "max_new_tokens": MAX_NEW_TOKENS,
    "span": "answer",
    "pass_recall": 0.5,
    "stop_at_newline": True,
    "locate": "overlap",
    "stemming": True,
    "stop_tokens": "newline_token",
    "chat": True,
}


#: Needles whose answer is quoted (``data/bench_needles.jsonl``), so that the reference's span
#: search (the answer tokenized alone, a window covering > 90 % of its tokens) finds it in a
#: byte-level BPE prompt: with the bundled needles the answer's first token differs in context
#: (a leading space), the reference locates no span and every score of both ways is 0. As many
#: as the analyzer's ``N_NEEDLES``.
BENCH_NEEDLES = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "bench_needles.jsonl").read_text().splitlines()
    if line.strip()
]


def _retrieval_task(lm: LoadedModel, quick: bool) -> list[Any]:
    """:data:`BENCH_NEEDLES` at the analyzer's default lengths and depths (quick: the first
    needle at 256 tokens, depths 0.1 and 0.9: two tests)."""
    from workbench.analyzers.niah import make_niah_tasks
    from workbench.analyzers.retrieval import N_NEEDLES

    if quick:
        return make_niah_tasks(
            lm, lengths=(256,), depths=(0.1, 0.9), needles=BENCH_NEEDLES[:1], n_needles=1
        )
    return make_niah_tasks(lm, needles=BENCH_NEEDLES[:N_NEEDLES], n_needles=N_NEEDLES)


def _retrieval_ours(lm: LoadedModel, items: list[Any]) -> np.ndarray:
    from workbench.analyzers import analyze

    df = analyze("retrieval", lm, items, causal=False, progress=False, **RETRIEVAL_AS_REFERENCE)
    return _grid(lm, df)


def _retrieval_reference(lm: LoadedModel, items: list[Any]) -> tuple[np.ndarray, str]:
    """The chat-templated ids (the reference's prompt), one decode per test; NLTK's stemmer,
    or the workbench's Porter stemmer where NLTK is missing (said in the note)."""
    stem, note = None, ""
    if peer_rules.STEMMER.startswith("none"):
        from workbench.analyzers.stemming import porter_stem

        stem, note = porter_stem, "workbench stemmer (nltk missing); "
    tests = []
    for item in items:
        ids = _chat_ids(lm, item["prompt"])
        tests.append(
            peer_rules.retrieval_test(
                lm.model, lm.tokenizer, ids, item["answer"], MAX_NEW_TOKENS, stem=stem
            )
        )
    passed = sum(t["recall"] > 0.5 for t in tests)
    lost = sum(t["span"] == (-1, -1) for t in tests)
    note += f"{passed}/{len(tests)} reference tests passed, {lost} spans not located"
    if not passed:  # the reference's np.mean over no test: no score; zeros, said
        return np.zeros((lm.info.n_layers, lm.info.n_heads)), note + " (no score)"
    return peer_rules.retrieval_head_scores(tests), note


# -- contextual: billzyx/focus_direction ---------------------------------------------------------
CONTEXTUAL_AS_REFERENCE = {
    "answer": "generated",
    "score_over": "all",
    "rows": "response",
    "max_new_tokens": MAX_NEW_TOKENS,
    "chat": True,
    "focus": False,
}


def _contextual_task(lm: LoadedModel, quick: bool) -> list[Any]:
    """The analyzer's default items: held-out facts (``n_train_facts=8``, seed 0), 5 docs."""
    from workbench.analyzers.contextual import N_ITEMS
    from workbench.analyzers.mdqa import load_facts, make_items, split_facts

    facts, fillers = load_facts()
    _, eval_facts = split_facts(facts, 8, 0)
    return make_items(2 if quick else N_ITEMS, 5, 0, facts=eval_facts, fillers=fillers)


def _contextual_ours(lm: LoadedModel, items: list[Any]) -> np.ndarray:
    from workbench.analyzers import analyze

    df = analyze("contextual", lm, items, causal=False, progress=False, **CONTEXTUAL_AS_REFERENCE)
    return _grid(lm, df)


def _contextual_reference(lm: LoadedModel, items: list[Any]) -> tuple[np.ndarray, str]:
    from workbench.analyzers.mdqa import encode_item

    examples = [
        peer_rules.contextual_example(
            lm.model,
            lm.tokenizer,
            it["prompt"],
            it["documents"][it["relevant"]],
            max_length=MAX_NEW_TOKENS,
        )
        for it in items
    ]
    lost = sum(-1 in (*e["needle_range"], *e["response_range"]) for e in examples)
    note = f"{lost} spans not located by the reference; " if lost else ""
    elsewhere = 0  # its span search (first best token-set overlap) can land elsewhere
    for it, e in zip(items, examples, strict=True):
        ei = encode_item(lm, it)
        here = (tuple(ei.spans[ei.relevant]), ei.n_prompt)
        elsewhere += (tuple(e["needle_range"]), e["response_range"][0]) != here
    note += (
        f"the reference's span search put the document or the response elsewhere in "
        f"{elsewhere}/{len(items)} items"
    )
    return peer_rules.show_and_save_scores(examples), note


#: The benched families, in printing order.
FAMILIES: dict[str, Family] = {
    "sinks": Family("sinks", _sinks_task, _sinks_ours, _sinks_reference, _plain_ids),
    "induction": Family(
        "induction", _induction_task, _induction_ours, _induction_reference, _plain_ids
    ),
    "retrieval": Family(
        "retrieval",
        _retrieval_task,
        _retrieval_ours,
        _retrieval_reference,
        lambda lm, items: [_chat_ids(lm, it["prompt"]) for it in items],
    ),
    "contextual": Family(
        "contextual",
        _contextual_task,
        _contextual_ours,
        _contextual_reference,
        lambda lm, items: [_chat_ids(lm, it["prompt"]) for it in items],
    ),
}


def _measure(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``fn()``'s result, its seconds and its peak memory (MB)."""
    meter = PeakMemory(device)
    with meter.measure():
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return result, seconds, meter.peak / 1e6


def bench_family(lm: LoadedModel, name: str, quick: bool = False) -> AnalyzerBenchRow:
    """Time one family of :data:`FAMILIES` both ways on the same task; see the module doc."""
    family = FAMILIES[name]
    items = family.task(lm, quick)
    ours, ours_s, ours_mb = _measure(lambda: family.ours(lm, items), lm.device)
    with eager_attention(lm.model), torch.no_grad():
        (ref, note), ref_s, ref_mb = _measure(lambda: family.reference(lm, items), lm.device)
    ids = family.prompt_ids(lm, items)
    _, forwards_s, _ = _measure(lambda: prompt_forwards(lm, ids), lm.device)
    return AnalyzerBenchRow(
        family=name,
        n_prompts=len(items),
        workbench_s=round(ours_s, 3),
        reference_s=round(ref_s, 3),
        speedup=round(ref_s / ours_s, 3),
        workbench_peak_mb=round(ours_mb, 1),
        reference_peak_mb=round(ref_mb, 1),
        max_abs_diff=float(np.max(np.abs(ours - np.asarray(ref, dtype=np.float64)))),
        nonzero_heads=int(np.count_nonzero(ref)),
        forwards_s=round(forwards_s, 3),
        note=note,
    )


def format_analyzer_row(row: AnalyzerBenchRow) -> str:
    """One printed line of an :class:`AnalyzerBenchRow`."""
    note = f" | {row.note}" if row.note else ""
    return (
        f"{row.family:<10} | {row.n_prompts:3d} prompts | "
        f"workbench {row.workbench_s:8.2f} s / {row.workbench_peak_mb:7.0f} MB | "
        f"reference {row.reference_s:8.2f} s / {row.reference_peak_mb:7.0f} MB | "
        f"{row.speedup:5.2f}x faster | prompts' forwards alone {row.forwards_s:.2f} s "
        f"(reference {row.reference_s / max(row.forwards_s, 1e-9):.1f}x that) | "
        f"max |score diff| {row.max_abs_diff:.2g} "
        f"({row.nonzero_heads} heads scored){note}"
    )


def run_analyzer_bench(
    lm: LoadedModel,
    families: Sequence[str] | None = None,
    quick: bool = False,
    log: Log = print,
) -> list[AnalyzerBenchRow]:
    """Warm up, then bench each family (all of :data:`FAMILIES` by default), logging each row.
    ``quick``: two prompts / tests per family instead of the analyzers' default task sizes."""
    from workbench.errors import WorkbenchError

    names = list(FAMILIES) if families is None else list(families)
    for name in names:
        if name not in FAMILIES:
            raise WorkbenchError(f"analyzer family {name!r}: choose from {sorted(FAMILIES)}")
    with torch.no_grad():
        lm.model(input_ids=torch.zeros(1, 16, dtype=torch.long, device=lm.device))
    rows = []
    for name in names:
        row = bench_family(lm, name, quick=quick)
        rows.append(row)
        if log is not None:
            log(format_analyzer_row(row))
    return rows


def analyzer_rows_as_json(lm: LoadedModel, rows: list[AnalyzerBenchRow]) -> dict[str, Any]:
    """The ``bench --analyzers --json`` object: model, device, torch threads, one dict a row."""
    return {
        "model": lm.info.name,
        "device": str(lm.device),
        "torch_threads": torch.get_num_threads(),
        "analyzers": [asdict(r) for r in rows],
    }
