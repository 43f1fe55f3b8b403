"""The model work behind the app's background callbacks, through the public workbench API.

Every function here runs inside a background-callback process (forked from the server by
:class:`dash.DiskcacheManager`), takes the shared read-only :class:`workbench.LoadedModel`, and
returns plain JSON-able values; bulky arrays go to the :class:`~app.state.SessionStore`.
Hooks that probes and interventions attach live only in that forked copy of the model, so
sessions never see each other's interventions.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import math
import signal
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

import workbench
from app.progress_text import ProgressText
from app.state import SessionStore
from workbench import analyzers
from workbench import interventions as iv
from workbench.interventions import recipes
from workbench.maps import pooled_to_mass, regroup_mass
from workbench.model_parts import layer_progress, only_blocks
from workbench.serialize import jsonable

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

Report = Callable[[str], None]

#: Prompts up to this many tokens keep the full map of every head (clicks are then instant).
FULL_MAP_TOKENS = 256
#: The pooled overview of one head has at most this many blocks per side.
OVERVIEW_CELLS = 64
#: Thumbnails in the all-heads grid have at most this many cells per side: one per token up to
#: 48 tokens, else the overview's blocks merged in pairs (32 cells; about 2 MB for 270 heads).
#: The grid zooms (drag a box), so token-level patterns show without opening each head.
THUMB_CELLS = 48
DEFAULT_REFERENCE = (
    "The old lighthouse keeper climbed the stairs every evening.\n"
    "Water boils at one hundred degrees Celsius at sea level.\n"
    "She packed her bag, locked the door and walked to the station."
)


def setup_worker(threads: int) -> None:
    """Per-job process setup. Forked children must stay single-threaded when the parent has
    already used OpenMP (torch's CPU thread pool does not survive a fork). ``kill -USR1`` on a
    job process prints its Python stack to the server's stderr (to diagnose a stuck job)."""
    torch.set_num_threads(max(1, int(threads)))
    with contextlib.suppress(AttributeError, ValueError, OSError, io.UnsupportedOperation):
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)


# -- heads -----------------------------------------------------------------------------------
def parse_head_list(lm: LoadedModel, text: str | None) -> list[tuple[int, int]]:
    """``"L5H3, L7H1 L2H*"`` -> validated ``[(5, 3), (7, 1), (2, 0), ..., (2, H-1)]``.

    ``L2H*`` means every head of layer 2. Raises :class:`workbench.WorkbenchError` subclasses
    (bad syntax, layer or head out of range) with the user-readable message.
    """
    if not (text or "").strip():
        raise workbench.WorkbenchError(
            "no heads given: write head ids like L5H3, L7H1 (L5H* = every head of layer 5)"
        )
    heads = workbench.parse_heads(text, n_heads=lm.info.n_heads)
    for head in heads:
        lm.head_id(head.layer, head.head)
    return [(head.layer, head.head) for head in heads]


def top_heads_from_records(records: list[dict[str, Any]], k: int) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring heads of an analyzer table (records with layer/head/score)."""
    return analyzers.top_heads(pd.DataFrame(records), max(0, int(k)))


def intervention_title(intervention: Any, heads: list[tuple[int, int]], n_heads: int) -> str:
    """The intervened card's title: the intervention's kind and its heads, whole layers as
    ``L5H*`` (a 100-head selection wraps instead of running off the page)."""
    if not heads:
        return repr(intervention)
    count = f"{len(heads)} head{'s' if len(heads) != 1 else ''}"
    return f"{type(intervention).__name__} of {count}: {workbench.format_heads(heads, n_heads)}"


# -- prompt runs -----------------------------------------------------------------------------
def run_prompt(
    lm: LoadedModel,
    store: SessionStore,
    session: str,
    prompt: str,
    *,
    chat: bool,
    new_tokens: int = 0,
    previous_run: str | None = None,
    report: Report = lambda _m: None,
) -> dict[str, Any]:
    """Encode (optionally generate first), one forward with the statistics probe for every head
    (block-pooled maps, sink scores) plus full maps when the prompt is short; save the arrays
    in ``store`` and return the run's metadata (tokens, sizes) for the browser."""
    start = time.perf_counter()
    report("Tokenizing…")
    enc = lm.encode(prompt, chat=chat)
    generated = None
    text, text_chat = prompt, chat
    if new_tokens:
        report(f"Generating {new_tokens} tokens…")
        generated = lm.generate(enc, max_new_tokens=int(new_tokens))
        if generated:
            text, text_chat = enc.text + generated, False
            enc = lm.encode(text, chat=False)
    n = enc.n_tokens
    block = max(1, math.ceil(n / OVERVIEW_CELLS))
    full = n <= FULL_MAP_TOKENS
    what = f"Running the model on {n} tokens (head statistics{' and full maps' if full else ''})"
    report(f"{what}…")
    status = ProgressText()
    with ExitStack() as stack:
        stack.enter_context(  # a long forward reports each layer as it finishes
            layer_progress(
                lm.model, lambda done, total: report(status(f"{what}: layer", done, total))
            )
        )
        stats = stack.enter_context(
            lm.statistics(
                received=True, entropy=False, argmax=False, distance=False, pooled_block=block
            )
        )
        cap = None
        if full:
            cap = lm.capture(maps=True)
            cap.check_fits(n)
            stack.enter_context(cap)
        lm.forward(enc, last_only=True)
    n_layers = lm.info.n_layers
    pooled = np.stack(
        [stats.records[layer].stats["pooled"][0].float().numpy() for layer in range(n_layers)]
    )
    sink = np.stack(
        [stats.records[layer].stats["sink"][0].float().numpy() for layer in range(n_layers)]
    )
    mass = pooled_to_mass(pooled, n, block)
    nb = mass.shape[-1]
    factor = max(1, math.ceil(nb / THUMB_CELLS))
    thumbs = regroup_mass(mass, n, block, factor)
    report("Saving…")
    run_id = uuid.uuid4().hex[:12]
    if previous_run:
        store.drop_run(session, previous_run)
    store.put(session, run_id, "mass", mass.astype(np.float16))
    store.put(session, run_id, "thumbs", thumbs.astype(np.float16))
    store.put(session, run_id, "sink", sink.astype(np.float16))
    if cap is not None:
        for layer in range(n_layers):
            maps = cap.records[layer].maps[0].float().numpy().astype(np.float16)
            store.put(session, run_id, f"maps/{layer}", maps)
    return {
        "run_id": run_id,
        "prompt": prompt,
        "chat": bool(chat),
        "generated": generated,
        "text": text,
        "text_chat": text_chat,
        "tokens": list(enc.tokens),
        "n_tokens": n,
        "full_maps": full,
        "block": block,
        "n_blocks": nb,
        "thumb_block": block * factor,
        "seconds": round(time.perf_counter() - start, 2),
    }


def zoom_rows(
    lm: LoadedModel,
    store: SessionStore,
    session: str,
    meta: dict[str, Any],
    layer: int,
    head: int,
    start: int,
    end: int,
) -> dict[str, Any]:
    """Exact attention of one head for query rows ``[start, end)`` (computed on demand)."""
    n = meta["n_tokens"]
    lm.head_id(layer, head)
    start, end = max(0, int(start)), min(n, int(end))
    if end <= start:
        raise workbench.WorkbenchError(
            f"the query window {start}..{end} is empty; pick rows between 0 and {n}"
        )
    with only_blocks(lm.model, 0, layer + 1):  # later blocks cannot change this layer's map
        _enc, rec = lm.run_capture(
            meta["text"],
            chat=meta["text_chat"],
            layers=[layer],
            heads=[head],
            query_window=(start, end),
        )
    weights = rec.map(layer, head).float().numpy().astype(np.float16)
    store.put(
        session,
        meta["run_id"],
        "window",
        {"layer": layer, "head": head, "start": start, "end": end, "map": weights},
    )
    return {"run_id": meta["run_id"], "layer": layer, "head": head, "start": start, "end": end}


# -- analyzers -------------------------------------------------------------------------------
#: ``df.attrs`` entries that stay on the server: every item's value of every head, MBs for a
#: full task (the table's score_lo/score_hi and ``attrs["stability"]`` summarise them).
BULKY_ATTRS = ("per_item",)
#: Per-item lists of the causal check (``draws x items`` values); the chart and the verdict
#: read their summaries (``effect_top_lo/hi``, ``p_value``...).
BULKY_CAUSAL = ("base_items", "top_k_items", "random_k_items")


def browser_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """``df.attrs`` as sent to the browser (a ``dcc.Store``): JSON-able, NaN as None, without
    the per-item arrays of :data:`BULKY_ATTRS` and :data:`BULKY_CAUSAL`. ``attrs`` is not
    changed."""

    def lean(causal: Any) -> Any:
        if not isinstance(causal, dict):
            return causal
        return {k: v for k, v in causal.items() if k not in BULKY_CAUSAL}

    kept = {key: value for key, value in attrs.items() if key not in BULKY_ATTRS}
    if "causal" in kept:
        kept["causal"] = lean(kept["causal"])
    if isinstance(kept.get("causal_sources"), dict):  # the atlas: its feature analyzers' checks
        kept["causal_sources"] = {k: lean(v) for k, v in kept["causal_sources"].items()}
    return jsonable(kept, finite=True)


def run_analyzer(
    lm: LoadedModel,
    name: str,
    params: dict[str, Any],
    report: Callable[[str, int, int], None],
) -> dict[str, Any]:
    """Run analyzer ``name`` over every head; return its table and attrs (JSON-able, the
    per-item arrays left out: :func:`browser_attrs`)."""
    start = time.perf_counter()
    df = analyzers.analyze(name, lm, progress=report, **params)
    records = json.loads(df.to_json(orient="records"))
    for r in records:
        r["id"] = r.get("head_id")
    return {
        "analyzer": name,
        "params": jsonable(params, finite=True),
        "columns": [str(c) for c in df.columns],
        "records": records,
        "attrs": browser_attrs(dict(df.attrs)),
        "seconds": round(time.perf_counter() - start, 2),
    }


# -- interventions ---------------------------------------------------------------------------
def run_intervention(
    lm: LoadedModel,
    prompt: str,
    *,
    chat: bool,
    heads_text: str,
    mode: str,
    options: recipes.Options,
    targets: list[str],
    new_tokens: int,
    report: Report = lambda _m: None,
) -> dict[str, Any]:
    """Base vs intervened continuation and per-position KL / target log-prob changes."""
    start = time.perf_counter()
    lm.encode(prompt, chat=chat)  # the prompt's own errors first (empty, too long)
    uses_heads = mode not in recipes.RECIPES or recipes.RECIPES[mode].uses_heads
    heads = parse_head_list(lm, heads_text) if uses_heads else []
    report("Preparing the intervention…")
    intervention = recipes.build(lm, mode, heads, options)
    report(f"Running base and intervened model ({new_tokens} new tokens each)…")
    effects = iv.measure_effects(
        lm, prompt, intervention, targets=targets, max_new_tokens=int(new_tokens), chat=chat
    )
    gen = effects.generations.iloc[0]
    return {
        "intervention": intervention_title(intervention, heads, lm.info.n_heads),
        "mode": mode,
        "heads": workbench.format_heads(heads) if heads else "",
        "prompt": prompt,
        "chat": chat,
        "targets": targets,
        "base_text": str(gen["base_text"]),
        "intervened_text": str(gen["intervened_text"]),
        "positions": json.loads(effects.positions.to_json(orient="records")),
        "seconds": round(time.perf_counter() - start, 2),
    }
