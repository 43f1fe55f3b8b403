"""Function-vector heads (Todd et al. 2024): heads whose mean last-token output carries the task of
in-context examples, and the function vector built from them."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from probes.checks import ArgumentError, describe, text
from workbench.analyzers.base import (
    Analyzer,
    AnalyzerArgumentError,
    AnalyzerError,
    Progress,
    head_frame,
    register_analyzer,
    require_done,
    top_heads,
)
from workbench.analyzers.causal import GENERATION_DRAWS, causal_evidence
from workbench.analyzers.fv_runs import (
    answer_token,
    indirect_effects,
    last_positions,
    zero_shot_effect,
)
from workbench.analyzers.logit_attribution import head_out_weights
from workbench.analyzers.params import Check, Spec, count, described
from workbench.analyzers.prompts import as_items, bundled_text
from workbench.lm import LoadedModel

DEFAULT_TASKS = ("antonyms", "country_capital", "capitalize", "present_past")
N_SHOTS = 5  # the paper uses 10; 5 keep SmolLM2's ICL accuracy high at half the tokens
N_PROMPTS = 5  # shuffled-label prompts per task (the paper: 25 trials)
N_MEAN = 10  # clean prompts per task for the mean head outputs
N_ZERO_SHOT = 12  # zero-shot queries per task
CAUSAL_PROMPTS = 2  # clean ICL prompts per task in the causal check
TOP_K = 10  # heads of the function vector (the paper's 10 for GPT-J) and of the causal check
BATCH = 8  # prompts per forward (times the heads of a layer in the indirect-effect step)
TEST_SHARE = 0.3  # the reference's test split: queries come from it, examples from the rest
QUICK = {
    "tasks": ["antonyms", "country_capital"],
    "n_prompts": 3,
    "n_mean": 4,
    "n_zero_shot": 6,
    "draws": 3,
}


def icl_data() -> dict[str, Any]:
    """The bundled tasks (``workbench/data/icl_tasks.json``): ``{"template": {...}, "tasks":
    {name: {"description", "pairs": [[input, output], ...]}}}``."""
    return json.loads(bundled_text("icl_tasks.json"))


def _task_list(name: str, value: Any, lm: LoadedModel | None) -> list[str] | None:
    """None (the default tasks) or a non-empty list of bundled task names."""
    if value is None:
        return None
    known = sorted(icl_data()["tasks"])
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise ArgumentError(
            f"{name} must be a list of task names ({', '.join(known)}), got {describe(value)}"
        )
    if not value:
        raise ArgumentError(f"{name} is empty; give at least one of {', '.join(known)}")
    out = []
    for i, task in enumerate(value):
        task = text(f"{name}[{i}]", task)
        if task not in known:
            raise ArgumentError(f"{name}[{i}]: unknown task {task!r}; known: {', '.join(known)}")
        if task not in out:
            out.append(task)
    return out


#: The check of ``tasks`` (a list of text items in the app's form; empty: the default tasks).
task_list = described(_task_list, Spec("list", items="text", optional=True))


def split_pairs(task: str, pairs: Sequence[Sequence[str]], seed: int) -> tuple[list, list]:
    """``(examples, queries)``: a seeded split of a task's pairs (:data:`TEST_SHARE` queries),
    the same for a task whatever other tasks run."""
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    order = rng.permutation(len(pairs)).tolist()
    n_test = max(1, round(TEST_SHARE * len(pairs)))
    return [pairs[i] for i in order[n_test:]], [pairs[i] for i in order[:n_test]]


def icl_prompts(
    task: str,
    examples: Sequence[Sequence[str]],
    queries: Sequence[Sequence[str]],
    template: Mapping[str, str],
    *,
    n: int,
    n_shots: int,
    seed: int,
    shuffle: bool,
) -> list[dict[str, str]]:
    """``n`` prompt items ``{"prompt", "answer", "task"}``: ``n_shots`` examples (without
    repeats) then a query, each query drawn from ``queries`` (the reference's
    ``word_pairs_to_prompt_data``); ``shuffle``: the examples' outputs permuted among them
    (the corrupted prompts of the indirect effect)."""
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), int(shuffle)])
    out = []
    for _ in range(n):
        shots = [examples[i] for i in rng.choice(len(examples), n_shots, replace=False)]
        outputs = [y for _, y in shots]
        if shuffle:
            outputs = [outputs[i] for i in rng.permutation(n_shots)]
        x, y = queries[int(rng.integers(len(queries)))]
        body = "".join(
            template["shot"].format(input=a, output=b)
            for (a, _), b in zip(shots, outputs, strict=True)
        )
        prompt = body + template["query"].format(input=x)
        out.append({"prompt": prompt, "answer": template["answer"].format(output=y), "task": task})
    return out


def single_token_pairs(lm: LoadedModel, pairs: Sequence[Sequence[str]], answer: str):
    """``(kept, dropped)``: the pairs whose answer (``answer`` formatted) is one token."""
    kept, dropped = [], []
    for x, y in pairs:
        ids = lm.tokenizer(answer.format(output=y), add_special_tokens=False)["input_ids"]
        (kept if len(ids) == 1 else dropped).append((x, y))
    return kept, dropped


def assemble_function_vector(
    lm: LoadedModel, means: Tensor, heads: Sequence[tuple[int, int]]
) -> Tensor:
    """``sum_(l,h) W_O^{l,h} means[l, h]`` (d_model,) float64: the function vector (Todd et
    al. 2024, Eq. 5; the reference's ``compute_universal_function_vector``), ``means``
    (n_layers, H, D) the task's mean last-token head outputs. An output bias is left out (the
    vector is a sum of head contributions)."""
    out = torch.zeros(head_out_weights(lm, 0).shape[-1], dtype=torch.float64)
    for layer, head in heads:
        writer = head_out_weights(lm, layer)[head].double().cpu()  # (D, d_model)
        out += means[layer, head].double() @ writer
    return out


def function_vectors(df: pd.DataFrame) -> dict[str, Tensor]:
    """The function vectors of a ``function_vector`` table, ``{task: (d_model,) tensor}``; add
    one with ``FunctionVector(lm, vector, layer=df.attrs["function_vector"]["layer"])``."""
    fv = df.attrs.get("function_vector")
    if not isinstance(fv, Mapping):
        raise AnalyzerError("this table has no function vector (run the function_vector analyzer)")
    return {task: torch.tensor(v, dtype=torch.float64) for task, v in fv["vectors"].items()}


@register_analyzer
class FunctionVectorAnalyzer(Analyzer):
    """Function-vector heads (Todd et al. 2024, "Function Vectors in Large Language Models",
    ICLR 2024, arXiv:2310.15213; reference code ericwtodd/function_vectors,
    ``compute_indirect_effect.py`` and ``compute_universal_function_vector``).

    For each task: the mean of every head's output ``z`` at the last token over ``n_mean`` clean
    in-context prompts (``n_shots`` examples in the reference's ``Q: x\\nA: y`` template, queries
    from a held-out split); then, on ``n_prompts`` prompts whose example labels are shuffled,
    the causal indirect effect of each head: the probability of the correct answer's first
    token when the head's last-token output is replaced by that mean, minus the probability
    without the patch (:func:`workbench.analyzers.fv_runs.indirect_effects`, exact up to float
    rounding: a KV cache holds the other positions). ``score``: the indirect effect averaged
    over prompts and tasks (the paper's average indirect effect; tasks have equal prompt
    counts); ``ie_<task>``: per task. Bundled tasks: ``workbench/data/icl_tasks.json`` (answers
    kept where they are one token for the model; the counts are in ``attrs["tasks"]``).

    The function vector of a task = the sum over the ``top_k`` heads of their mean output
    through their slice of ``W_O`` (:func:`assemble_function_vector`), in ``attrs
    ["function_vector"]`` (read it back with :func:`function_vectors`); ``attrs
    ["zero_shot"]``: top-1 accuracy and answer probability on zero-shot queries
    (``Q: x\\nA:``) without and with it added at layer ``fv_layer`` through
    :class:`~workbench.interventions.function_vector.FunctionVector`. Default ``n_layers // 2``:
    the paper adds it near ``n_layers // 3`` (GPT-J, whose top heads sit at layers 8-15); on
    SmolLM2 the top heads sit at layers 14-29 and a sweep of the layer (default run, 4 tasks)
    gave zero-shot accuracy 4% without the vector and, with it, 3% at layer 10, 21% at 14, 24%
    at 16, 30% at 18, 20% at 20 and 5% at 26.

    Differences from the reference: one prompt template; the mean is over the clean prompts'
    last token only (the reference keeps every token class); the top heads are chosen from this
    run's tasks (the reference ships fixed lists per model); no BOS token is prepended (the
    tokenizer's defaults, as everywhere in the workbench); the vector enters after the
    attention block of ``fv_layer`` (see the intervention).

    Items (``prompts``): dicts ``{"prompt", "answer", "task"}``: a shuffled-label prompt, its
    correct answer (with its leading space) and the bundled task whose clean mean is patched.

    Causal check: the answer log-probability on ``causal_prompts`` clean ICL prompts per task
    with the top-k heads vs k random same-layer heads zero-ablated.
    """

    name = "function_vector"
    summary = "function-vector heads (Todd et al.): indirect effect of mean ICL head outputs"
    quick_params = QUICK
    item_fields = ("answer", "task")
    checks: ClassVar[Mapping[str, Check]] = {
        "tasks": task_list,
        "n_shots": count(1),
        "n_mean": count(1),
        "n_zero_shot": count(1),
        "causal_prompts": count(1),
        "fv_layer": count(0, lambda lm: lm.info.n_layers - 1, optional=True),
    }

    def run(
        self,
        lm: LoadedModel,
        prompts=None,
        *,
        progress: Progress = True,
        tasks: list[str] | None = None,
        n_shots: int = N_SHOTS,
        n_prompts: int = N_PROMPTS,
        n_mean: int = N_MEAN,
        n_zero_shot: int = N_ZERO_SHOT,
        fv_layer: int | None = None,
        causal: bool = True,
        top_k: int = TOP_K,
        draws: int = GENERATION_DRAWS,
        causal_prompts: int = CAUSAL_PROMPTS,
        seed: int = 0,
        batch_size: int | str = BATCH,
        quick: bool = False,
    ) -> pd.DataFrame:
        """``prompts``: shuffled-label items (see the class docstring) instead of the bundled
        tasks' (``tasks`` then defaults to the items' tasks). ``quick``: :data:`QUICK`."""
        start = time.perf_counter()
        items = as_items(prompts)
        data = icl_data()
        template = data["template"]
        given = [str(item.get("task")) for item in items]
        tasks = tasks or list(dict.fromkeys(given)) or list(DEFAULT_TASKS)
        for i, item in enumerate(items):
            for key in ("answer", "task"):
                if not isinstance(item.get(key), str) or not item[key].strip():
                    raise AnalyzerArgumentError(f"prompts[{i}] needs a {key!r} string")
            if item["task"] not in tasks or item["task"] not in data["tasks"]:
                raise AnalyzerArgumentError(
                    f"prompts[{i}]: task {item['task']!r} is not among tasks {tasks} of the "
                    f"bundled ones ({', '.join(sorted(data['tasks']))})"
                )
        batch = BATCH if batch_size == "auto" else int(batch_size)
        fv_layer = lm.info.n_layers // 2 if fv_layer is None else fv_layer
        splits, counts = {}, {}
        for task in tasks:
            kept, dropped = single_token_pairs(lm, data["tasks"][task]["pairs"], template["answer"])
            examples, queries = split_pairs(task, kept, seed)
            if n_shots > len(examples):
                raise AnalyzerArgumentError(
                    f"n_shots={n_shots} is more than task {task!r} has examples "
                    f"({len(examples)}); give n_shots <= {len(examples)}"
                )
            splits[task] = (examples, queries)
            counts[task] = {"pairs": len(kept), "dropped": [y for _, y in dropped]}
        shot = {"n_shots": n_shots, "seed": seed}
        clean = {
            t: icl_prompts(t, *splits[t], template, n=n_mean, shuffle=False, **shot) for t in tasks
        }
        if not items:
            items = [
                item
                for t in tasks
                for item in icl_prompts(t, *splits[t], template, n=n_prompts, shuffle=True, **shot)
            ]
        encode = [lm.encode(item["prompt"]) for item in items]  # checked before any work
        answers = [answer_token(lm, item["prompt"], item["answer"]) for item in items]

        # 1. mean last-token head outputs over each task's clean prompts
        means, icl = {}, {}
        for task in tasks:
            encs = [lm.encode(item["prompt"]) for item in clean[task]]
            ids = [answer_token(lm, item["prompt"], item["answer"]) for item in clean[task]]
            logp, hit, z = last_positions(lm, encs, ids, batch_size=batch, z=True)
            means[task] = z.mean(0)  # (n_layers, H, D)
            icl[task] = {"accuracy": float(hit.mean()), "probability": float(logp.exp().mean())}
        # 2. indirect effect of every head on the shuffled-label prompts
        per_row = torch.stack([means[item["task"]] for item in items])
        ie, base, scan = indirect_effects(
            lm, encode, answers, per_row, batch_size=batch, progress=progress
        )
        require_done(scan, self.name)
        task_of = np.array([item["task"] for item in items])
        evidence = {
            f"ie_{task}": ie[torch.from_numpy(task_of == task)].mean(0)
            for task in tasks
            if (task_of == task).any()
        }
        attrs: dict[str, Any] = {
            "analyzer": self.name,
            "definition": (
                "mean over shuffled-label ICL prompts of P(answer | head's last-token output := "
                "its mean over clean ICL prompts) - P(answer) (Todd et al. 2024)"
            ),
            "params": {
                "tasks": tasks,
                "n_shots": n_shots,
                "n_prompts": n_prompts,
                "n_mean": n_mean,
                "n_zero_shot": n_zero_shot,
                "fv_layer": fv_layer,
                "causal_prompts": causal_prompts,
                "seed": seed,
                "template": template,
            },
            "tasks": counts,
            "icl_clean": icl,
            "corrupted_probability": {
                t: float(base[torch.from_numpy(task_of == t)].mean())
                for t in tasks
                if (task_of == t).any()
            },
            "prompts_total": len(items),
            "prompts_used": len(items),
            "layers_done": scan.done,
            "interrupted": scan.interrupted,
            "ie_seconds": round(scan.seconds, 3),
        }
        df = head_frame(lm, ie.nanmean(0), evidence, attrs, per_item=ie)
        # 3. the function vector of each task and its zero-shot effect
        heads = top_heads(df, top_k)
        vectors = {t: assemble_function_vector(lm, means[t], heads) for t in tasks}
        df.attrs["function_vector"] = {
            "layer": fv_layer,
            "heads": [lm.head_id(*h) for h in heads],
            "vectors": {t: v.tolist() for t, v in vectors.items()},
        }
        df.attrs["zero_shot"] = zero_shot_effect(
            lm, splits, vectors, fv_layer, template, n_zero_shot, batch
        )
        if causal and not scan.interrupted:
            used = [item for t in tasks for item in clean[t][:causal_prompts]]
            encs = [lm.encode(item["prompt"]) for item in used]
            ids = [answer_token(lm, item["prompt"], item["answer"]) for item in used]
            df.attrs["causal"] = causal_evidence(
                lm,
                heads,
                lambda m: last_positions(m, encs, ids, batch_size=batch)[0].tolist(),
                metric_name=f"log-probability of the answer, {len(used)} clean ICL prompts",
                k=top_k,
                draws=draws,
                seed=seed,
                mode="zero",
                higher_is_better=True,
            )
        df.attrs["seconds"] = round(time.perf_counter() - start, 3)
        return df


__all__ = [
    "DEFAULT_TASKS",
    "FunctionVectorAnalyzer",
    "assemble_function_vector",
    "function_vectors",
    "icl_data",
    "icl_prompts",
    "split_pairs",
]
