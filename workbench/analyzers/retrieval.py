"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality", arXiv:2404.15574; reference code nightdessert/Retrieval_Head).

A retrieval head copies tokens from a needle hidden in a long context into the answer. On a
needle-in-a-haystack test answered by greedy decoding, at every decoding step the head "copies"
when its most-attended key (argmax over keys of that step's attention row) lies inside the needle
span *and* holds the very token being emitted at that step; each copy adds ``1 / |span|``. A
head's score on a test is the sum over the steps; its retrieval score is the mean over the tests
the model answers correctly. Heads scoring above 0.1 are retrieval heads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from workbench.analyzers.base import (
    Analyzer,
    AnalyzerError,
    Progress,
    Scan,
    check_room,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import GENERATION_DRAWS, causal_evidence
from workbench.analyzers.niah import DEFAULT_DEPTHS, DEFAULT_LENGTHS, NiahError, make_niah_tasks
from workbench.analyzers.niah_runs import (
    BATCH,
    DEFAULT_STOP,
    STOP_RULES,
    NiahRun,
    encode_test,
    niah_passes,
    run_niah_tests,
)
from workbench.analyzers.params import (
    Check,
    count,
    file_or_items,
    flag,
    fraction_list,
    length_list,
    one_of,
    real,
    text_file,
)
from workbench.analyzers.prompts import as_items
from workbench.analyzers.retrieval_rule import (
    PASS_RECALL,
    RETRIEVAL_THRESHOLD,
    answer_recall,
    copy_events,
    overlap_span,
)
from workbench.batching import auto_batch_size

if TYPE_CHECKING:
    from workbench.lm import LoadedModel


#: Default task sizes, chosen by measurement (workbench.analyzers.stability_sizes); quick mode
#: keeps the earlier small task (2 needles x 2 lengths x 3 depths = 12 tests, 4 causal tests).
N_NEEDLES = 8
CAUSAL_TESTS = 6
QUICK = {"n_needles": 2, "causal_tests": 4, "draws": 3}


def _check_items(items: list[dict[str, Any]]) -> None:
    for i, item in enumerate(items):
        for key in ("needle", "answer"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise AnalyzerError(
                    f"retrieval prompt {i} has no {key!r} field: each prompt item needs the "
                    "needle text it contains and the expected answer (JSONL fields 'prompt', "
                    "'needle', 'answer')"
                )


def _offset_span(lm: LoadedModel, run: NiahRun, item: dict[str, Any], span: str):
    """The span from the tokenizer's character offsets in the templated prompt (default)."""
    return run.answer_span if span == "answer" else run.needle_span


def _overlap_span(lm: LoadedModel, run: NiahRun, item: dict[str, Any], span: str):
    """The reference code's search: the answer (or needle) tokenized alone, first prompt window
    covering > 90 % of its token set (:func:`~workbench.analyzers.retrieval_rule.overlap_span`);
    None when there is none."""
    text = item["answer"] if span == "answer" else item["needle"]
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return overlap_span(run.prompt_ids, ids)


#: The analyzer's ``locate`` values: how the scored span is found in the prompt, as
#: ``locate(lm, run, item, span) -> (start, end) | None``.
LOCATORS = {"offsets": _offset_span, "overlap": _overlap_span}


def _spread(indices: list[int], n: int) -> list[int]:
    if len(indices) <= n:
        return indices
    picks = np.linspace(0, len(indices) - 1, n).round().astype(int)
    return [indices[i] for i in sorted(set(picks.tolist()))]


# -- the analyzer -------------------------------------------------------------------------------
@register_analyzer
class RetrievalAnalyzer(Analyzer):
    """Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
    Factuality").

    Task: needle-in-a-haystack tests from :func:`~workbench.analyzers.niah.make_niah_tasks`
    (bundled corpus and needles; ``lengths`` x ``depths`` x ``n_needles``), or the user's items
    with ``prompt``, ``needle`` (the exact needle text inside the prompt) and ``answer``. Prompts
    go through the chat template (``chat=True``; an item's own ``chat`` field overrides).

    Rule: greedy decoding (stopping at a newline or ``max_new_tokens``, as the reference code);
    at step s, head h copies when its argmax key lies in the span and holds the emitted token;
    a test's score is ``copies / |span|``; ``score`` = mean over the tests answered correctly
    (ROUGE-1 recall of the answer > 0.5, the reference code's rule, exact words unless
    ``stemming``; 0 when no test passed; ``score_lo``/``score_hi``: its bootstrap interval over
    the passed tests).
    ``span="answer"`` (default) scores against the answer's tokens inside the needle
    like the reference code (its ``real_needle``); ``span="needle"`` uses the whole needle
    sentence. Argmax positions come from the kernels' statistics probe, one record per decoding
    step; no L x L maps.

    Where the rule deliberately differs from the reference code (nightdessert/Retrieval_Head),
    a parameter selects the reference's setting; the defaults are the workbench's rule:

    * ``locate``: ``"offsets"`` (default) finds the span through the tokenizer's character
      offsets in the templated prompt; ``"overlap"`` is the reference's ``find_needle_idx``
      (the answer tokenized alone, first window covering > 90 % of its token set), which can
      miss or misplace a span whose first token carries a BPE leading space; a test whose span
      is not found scores 0 for every head, as in the reference (``attrs["tests_unlocated"]``).
    * ``stemming``: False (default) compares exact words in the ROUGE-1 pass rule; True
      Porter-stems words longer than 3 characters as the reference's
      ``rouge_scorer.RougeScorer(..., use_stemmer=True)``
      (:mod:`~workbench.analyzers.stemming`).
    * ``stop_tokens``: ``"newline_or_eos"`` (default) ends a decode at any token holding a
      newline or at an end-of-sequence token; ``"newline_token"`` is the reference decoder's
      rule: only the newline token itself stops it and end-of-sequence tokens do not
      (:data:`~workbench.analyzers.niah_runs.STOP_RULES`). Either applies only with
      ``stop_at_newline``, and to the causal check's decodes too.

    Evidence columns: ``is_retrieval_head`` (score > ``threshold``), ``retrieval_hits`` (mean copy
    events per passed test), ``score_all_tests`` (mean score over every test, passed or not).
    ``attrs``: ``tests_total``, ``tests_passed`` (also ``prompts_used``/``prompts_passed``),
    ``per_length`` / ``per_depth`` pass counts, ``n_retrieval_heads``, ``tests`` (one entry per
    test with its response), ``params``. Causal check: NIAH accuracy on up to ``causal_tests``
    tests (those the model passes, spread over lengths and depths; pass or fail per test) with
    the top-k heads vs k random same-layer heads uniform-ablated (query scaled by 1e-5),
    ``draws`` random sets. ``quick``: the small task of :data:`QUICK` (weak evidence).
    """

    name = "retrieval"
    summary = "retrieval heads (Wu et al. 2024): copy from a needle during greedy decoding"
    item_fields = ("needle", "answer")
    quick_params = QUICK
    checks: ClassVar[Mapping[str, Check]] = {
        "lengths": length_list(),
        "depths": fraction_list(),
        "n_needles": count(1, optional=True),
        "needles": file_or_items("needles"),
        "haystack": text_file(),
        "span": one_of("answer", "needle"),
        "threshold": real(minimum=0, below=1),
        "pass_recall": real(minimum=0, below=1),
        "stop_at_newline": flag(),
        "locate": one_of(*LOCATORS),
        "stemming": flag(),
        "stop_tokens": one_of(*STOP_RULES),
        "causal_tests": count(1),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        lengths: Sequence[int] = DEFAULT_LENGTHS,
        depths: Sequence[float] = DEFAULT_DEPTHS,
        n_needles: int | None = N_NEEDLES,
        needles=None,
        haystack=None,
        seed: int = 0,
        max_new_tokens: int = 24,
        span: str = "answer",
        threshold: float = RETRIEVAL_THRESHOLD,
        pass_recall: float = PASS_RECALL,
        chat: bool = True,
        system: str | None = None,
        stop_at_newline: bool = True,
        locate: str = "offsets",
        stemming: bool = False,
        stop_tokens: str = DEFAULT_STOP,
        causal: bool = True,
        top_k: int = 5,
        draws: int = GENERATION_DRAWS,
        causal_tests: int = CAUSAL_TESTS,
        quick: bool = False,
        batch_size: int | str = "auto",
    ) -> pd.DataFrame:
        """``batch_size``: needle tests per batched greedy decode (``"auto"``: up to
        :data:`~workbench.analyzers.niah_runs.BATCH`, sized from free memory); batched runs
        equal one-test runs (:func:`~workbench.analyzers.niah_runs.run_niah_tests`)."""
        generated = prompts is None
        if generated:
            try:
                items = make_niah_tasks(
                    lm,
                    lengths=lengths,
                    depths=depths,
                    n_needles=n_needles,
                    needles=needles,
                    haystack=haystack,
                    seed=seed,
                    chat=chat,
                    system=system,
                )
            except NiahError as exc:
                raise AnalyzerError(f"retrieval: {exc}") from None
        else:
            items = as_items(prompts)
            if not items:
                raise AnalyzerError("the prompt set is empty")
            _check_items(items)
        # every test encoded and its needle located before any forward
        longest = max(encode_test(lm, it, chat, system)[0].n_tokens for it in items)
        check_room(lm, longest, max_new_tokens, self.name)
        if batch_size == "auto":
            batch_size = min(BATCH, auto_batch_size(lm, longest + max_new_tokens))

        n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
        passed_scores: list[torch.Tensor] = []  # (layers, heads) per passed test
        hits_sum = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        all_sum = torch.zeros_like(hits_sum)
        tests: list[dict[str, Any]] = []
        passed_idx: list[int] = []
        by_length: dict[str, Counter] = defaultdict(Counter)
        by_depth: dict[str, Counter] = defaultdict(Counter)
        unlocated = 0
        runs = run_niah_tests(
            lm,
            items,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            chat=chat,
            system=system,
            stop_at_newline=stop_at_newline,
            stop_tokens=stop_tokens,
        )
        with Scan(items, "retrieval", progress) as scan:
            for (i, item), run in zip(enumerate(scan), runs, strict=False):
                s = LOCATORS[locate](lm, run, item, span)
                assert run.argmax is not None
                if s is None:  # the reference's search found no span: every head scores 0
                    events = torch.zeros(n_layers, n_heads, dtype=torch.float64)
                    unlocated += 1
                else:
                    sequence = torch.cat([run.prompt_ids, run.emitted])
                    events = copy_events(run.argmax, run.emitted, sequence, s).sum(0).double()
                score = events / (1 if s is None else s[1] - s[0])
                recall = answer_recall(item["answer"], run.response, stemming=stemming)
                ok = recall > pass_recall
                all_sum += score
                if ok:
                    passed_scores.append(score)
                    hits_sum += events
                    passed_idx.append(i)
                length = str(item.get("context_length", "n/a"))
                depth = str(item.get("depth", "n/a"))
                by_length[length]["total"] += 1
                by_length[length]["passed"] += int(ok)
                by_depth[depth]["total"] += 1
                by_depth[depth]["passed"] += int(ok)
                tests.append(
                    {
                        "context_length": item.get("context_length"),
                        "depth": item.get("depth"),
                        "n_tokens": int(run.prompt_ids.numel()),
                        "answer": item["answer"],
                        "response": run.response,
                        "recall": round(recall, 4),
                        "passed": bool(ok),
                        "span": None if s is None else list(s),
                        "copy_events": int(events.sum()),
                    }
                )
        require_done(scan, "retrieval")
        passed_idx = [i for i in passed_idx if i < scan.done]  # a test cut by Ctrl-C: not counted
        n_passed = len(passed_idx)
        per_item = (
            torch.stack(passed_scores[:n_passed])
            if n_passed
            else torch.zeros(0, n_layers, n_heads, dtype=torch.float64)
        )
        score = per_item.mean(0) if n_passed else torch.zeros_like(hits_sum)
        is_retrieval = score > threshold
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "params": {
                "lengths": list(lengths) if generated else None,
                "depths": list(depths) if generated else None,
                "n_needles": n_needles if generated else None,
                "needles": str(needles) if needles is not None else "bundled",
                "haystack": str(haystack) if haystack is not None else "bundled corpus.txt",
                "seed": seed,
                "max_new_tokens": max_new_tokens,
                "span": span,
                "threshold": threshold,
                "pass_rule": f"ROUGE-1 recall of the answer > {pass_recall} "
                + ("(Porter-stemmed words)" if stemming else "(no stemming)"),
                "chat": chat,
                "stop_at_newline": stop_at_newline,
                "locate": locate,
                "stemming": stemming,
                "stop_tokens": stop_tokens,
                "causal_tests": causal_tests,
            },
            "tests_total": scan.done,
            "tests_passed": n_passed,
            "prompts_passed": n_passed,
            "per_length": {k: dict(v) for k, v in by_length.items()},
            "per_depth": {k: dict(v) for k, v in by_depth.items()},
            "n_retrieval_heads": int(is_retrieval.sum()),
            "tests_unlocated": unlocated,
            "tests": tests,
            **scan.attrs(),
        }
        if not n_passed:
            attrs["warning"] = "no test was answered correctly: every retrieval score is 0"
        elif unlocated:
            attrs["warning"] = (
                f"locate='overlap' found no span in {unlocated} of {scan.done} tests: they score "
                "0 for every head (the reference's behaviour); locate='offsets' finds them"
            )
        df = head_frame(
            lm,
            score,
            {
                "is_retrieval_head": is_retrieval,
                "retrieval_hits": hits_sum / max(n_passed, 1),
                "score_all_tests": all_sum / scan.done,
            },
            attrs,
            per_item=per_item,
        )
        if causal and not scan.interrupted and not n_passed:
            df.attrs["causal"] = {
                "skipped": "no NIAH test passed: accuracy is 0 with or without ablation"
            }
        elif causal and not scan.interrupted:
            done = items[: scan.done]
            subset = [done[i] for i in _spread(passed_idx or list(range(len(done))), causal_tests)]
            df.attrs["causal"] = causal_evidence(
                lm,
                top_heads(df, top_k),
                lambda m: niah_passes(
                    m,
                    subset,
                    max_new_tokens=max_new_tokens,
                    chat=chat,
                    system=system,
                    stop_at_newline=stop_at_newline,
                    pass_recall=pass_recall,
                    stop_tokens=stop_tokens,
                    stemming=stemming,
                ),
                metric_name=f"NIAH accuracy on {len(subset)} tests",
                k=top_k,
                draws=draws,
                seed=seed,
                mode="uniform",
                higher_is_better=True,
            )
            df.attrs["causal"]["tests"] = len(subset)
        return df
