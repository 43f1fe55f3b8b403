"""What each analyzer parameter allows, written from its documented meaning, and strategies of
values it does not allow.

``KINDS`` maps every parameter name of every registered analyzer to a :class:`Kind`: an oracle
``ok(value, model)`` (``model=False``: no model loaded yet, so only the checks that need no
model apply, as on the command line) and values near its boundary. :func:`bad` draws from those
and from ``anything()`` (or JSON values, for ``workbench scan --param``) and keeps the values
the oracle refuses: invalid by construction, so a value that is accepted would start real work
(which the ``forwards`` fixture or the CLI's model guard turns into a failure).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import strategies as st

from tests.property import strategies as gen
from tests.property.support import (
    CONTEXT,
    N_HEADS,
    N_LAYERS,
    as_flag,
    as_index,
    elements,
    is_good_prompt,
)

ALL_HEADS = N_LAYERS * N_HEADS


@dataclass(frozen=True)
class Kind:
    ok: Callable[[Any, bool], bool]
    near: st.SearchStrategy[Any]


#: The bundled ordinal classes the successor analyzer knows (workbench/data/ordinals.json).
ORDINAL_CLASSES = tuple(
    json.loads((Path(__file__).resolve().parents[2] / "workbench/data/ordinals.json").read_text())[
        "classes"
    ]
)
#: The bundled ICL tasks of the function_vector analyzer (workbench/data/icl_tasks.json).
ICL_TASKS = tuple(
    json.loads((Path(__file__).resolve().parents[2] / "workbench/data/icl_tasks.json").read_text())[
        "tasks"
    ]
)


def _optional(ok: Callable[[Any, bool], bool], optional: bool) -> Callable[[Any, bool], bool]:
    return lambda v, model: optional if v is None else ok(v, model)


def count(lo: int, hi: int | None = None, *, model_hi: int | None = None, optional=False) -> Kind:
    """An integer ``>= lo`` (``<= hi``; ``<= model_hi`` once the model is known)."""

    def ok(v: Any, model: bool) -> bool:
        i = as_index(v)
        tops = [t for t in (hi, model_hi if model else None) if t is not None]
        return i is not None and i >= lo and all(i <= t for t in tops)

    edges = [lo - 1, lo, *(t + d for t in (hi, model_hi) if t is not None for d in (0, 1))]
    near = st.one_of(st.sampled_from(edges), gen.index_impostors, gen.ints)
    return Kind(_optional(ok, optional), near)


def real(*, minimum=None, maximum=None, above=None, below=None, optional=False) -> Kind:
    """A finite real number within the bounds (never a bool or a string)."""

    def ok(v: Any, model: bool) -> bool:
        x = gen.real_value(v)
        return (
            x is not None
            and math.isfinite(x)
            and (minimum is None or x >= minimum)
            and (maximum is None or x <= maximum)
            and (above is None or x > above)
            and (below is None or x < below)
        )

    near = gen.not_number(minimum, maximum, above=above, below=below)
    return Kind(_optional(ok, optional), st.one_of(near, gen.floats))


def flag() -> Kind:
    return Kind(lambda v, model: as_flag(v) is not None, gen.not_flag())


def choice(*options: str) -> Kind:
    variants = [f(o) for o in options for f in (str.upper, str.title, lambda s: s + " ")]
    return Kind(
        lambda v, model: isinstance(v, str) and v in options,
        st.one_of(st.sampled_from(variants), gen.texts),
    )


def _strings(value: Any) -> list[Any] | None:
    """The elements of a list-like value that is not a string, bytes or mapping."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return None
    return elements(value)


def word_list(*, optional: bool = True) -> Kind:
    """A non-empty list of non-blank strings that can be tokenized (never a bare string)."""

    def ok(v: Any, model: bool) -> bool:
        items = _strings(v)
        return bool(items) and all(is_good_prompt(s) for s in items)

    near = st.one_of(st.lists(st.one_of(gen.texts, gen.surrogate_text, gen.scalars)), gen.texts)
    return Kind(_optional(ok, optional), near)


def words() -> Kind:
    """None or a string that can be tokenized (empty and blank ones too)."""
    return Kind(
        lambda v, model: v is None or (isinstance(v, str) and is_good_prompt(v + ".")),
        st.one_of(gen.texts, gen.surrogate_text),
    )


def heads() -> Kind:
    """None or a head set (ids, pairs; in the model's range once it is known)."""
    return Kind(
        lambda v, model: v is None or gen.as_head_pairs(v, model) is not None, gen.head_like()
    )


def layers() -> Kind:
    """None, one layer index or a non-empty list of them (in range once the model is known)."""

    def ok(v: Any, model: bool) -> bool:
        if v is None:
            return True
        one = as_index(v)
        items = [one] if one is not None else _strings(v)
        if not items:
            return False
        indices = [as_index(x) for x in items]
        top = N_LAYERS if model else 2**31
        return all(i is not None and 0 <= i < top for i in indices)

    near = st.one_of(st.lists(st.integers(-2, 35), max_size=3), gen.index_impostors)
    return Kind(ok, near)


def number_list(lo: float, hi: float | None, integral: bool) -> Kind:
    """A non-empty list of numbers in ``lo..hi`` (integers when ``integral``)."""

    def ok(v: Any, model: bool) -> bool:
        items = _strings(v)
        if not items:
            return False
        if integral:
            values = [as_index(x) for x in items]
            top = hi if model and hi is not None else None
        else:
            values = [gen.real_value(x) for x in items]
            top = hi
        return all(
            x is not None and math.isfinite(x) and x >= lo and (top is None or x <= top)
            for x in values
        )

    item = st.one_of(st.integers(-2, 3), st.just(CONTEXT + 1), gen.floats, gen.index_impostors)
    return Kind(ok, st.one_of(st.lists(item, max_size=3), item, gen.texts))


def _is_frames(v: Any, model: bool) -> bool:
    if v is None:
        return True
    if not isinstance(v, Mapping):
        return False
    return all(
        isinstance(k, str) and k.strip() and isinstance(f, pd.DataFrame) for k, f in v.items()
    )


def _is_callable(v: Any) -> bool:
    return callable(v) and not isinstance(v, type)


#: Paths no file can be written to or read from (a folder, a missing folder, /proc).
MISSING = "/nonexistent-workbench-folder"
BAD_OUT = ["/", "", "  ", f"{MISSING}/directions.safetensors", "/proc/wb-check.safetensors"]
BAD_IN = ["/", "", "  ", f"{MISSING}/haystack.txt"]


def _needles_ok(v: Any, model: bool) -> bool:
    if v is None:
        return True
    if isinstance(v, (str, Path)):
        return Path(v).is_file()
    items = _strings(v)
    return bool(items) and all(
        isinstance(i, Mapping)
        and all(
            isinstance(i.get(k), str) and i[k].strip() for k in ("needle", "question", "answer")
        )
        for i in items
    )


def path_kind(bad_paths: list[str]) -> Kind:
    """A path (str or Path) that works; bad ones come from ``bad_paths`` and non-paths."""

    def ok(v: Any, model: bool) -> bool:
        if v is None:
            return True
        if not isinstance(v, (str, Path)):
            return False
        return str(v) not in bad_paths and not str(v).startswith(MISSING)

    return Kind(
        ok, st.one_of(st.sampled_from(bad_paths), gen.texts.map(lambda t: f"{MISSING}/{t}"))
    )


KINDS: dict[str, Kind] = {
    # shared by many analyzers (workbench.analyzers.params.COMMON)
    "progress": Kind(
        lambda v, model: as_flag(v) is not None or _is_callable(v),
        st.one_of(gen.not_flag(), st.sampled_from([int, str, object])),
    ),
    "causal": flag(),
    "top_k": count(1, model_hi=ALL_HEADS // 2),
    "draws": count(1),
    "seed": count(0, 2**32 - 1),
    "n_prompts": count(1, optional=True),
    "prompt_tokens": count(2, model_hi=CONTEXT),
    "n_words": count(1),
    "ranking": heads(),
    "chat": flag(),
    "system": words(),
    "max_new_tokens": count(1, model_hi=CONTEXT),
    "quick": flag(),
    # atlas
    "frames": Kind(
        _is_frames,
        st.one_of(
            st.dictionaries(st.one_of(gen.texts, gen.ints), gen.scalars, min_size=1, max_size=2),
            st.dictionaries(st.sampled_from(["", " ", 3]), st.just(pd.DataFrame()), min_size=1),
        ),
    ),
    "compute_missing": flag(),
    "features": word_list(),
    "n_clusters": count(1),
    # attribution
    "metric": Kind(
        lambda v, model: v == "logit_diff" if isinstance(v, str) else _is_callable(v),
        st.one_of(gen.texts, st.sampled_from(["Logit_diff", "logit_diff ", int, str])),
    ),
    "baseline": choice("zero", "mean", "corrupt"),
    "exact": flag(),
    "exact_heads": heads(),
    "causal_prompts": count(1),
    # classic
    "exclude_bos": flag(),
    "exclude_current_token": flag(),
    # contextual
    "n_items": count(1),
    "n_docs": count(2),
    "n_train_facts": count(0),
    "answer": choice("generated", "gold"),
    "n_causal": count(1),
    "focus": flag(),
    "focus_heads": count(1, model_hi=ALL_HEADS),
    "focus_items": count(1),
    "focus_steps": count(1),
    "focus_lr": real(above=0),
    "focus_scale": real(above=0, maximum=10),
    "focus_out": path_kind(BAD_OUT),
    # retrieval
    "lengths": number_list(1, CONTEXT, integral=True),
    "depths": number_list(0, 1, integral=False),
    "n_needles": count(1, optional=True),
    "needles": Kind(
        _needles_ok,
        st.one_of(
            st.lists(st.one_of(gen.scalars, st.dictionaries(gen.texts, gen.texts)), max_size=2),
            gen.texts.map(lambda t: f"{MISSING}/{t}"),
        ),
    ),
    "haystack": path_kind(BAD_IN),
    "span": choice("answer", "needle"),
    "threshold": real(minimum=0, below=1),
    "pass_recall": real(minimum=0, below=1),
    "stop_at_newline": flag(),
    "causal_tests": count(1),
    # safety
    "layers": layers(),
    "eps": real(above=0, below=1),
    "batch_size": Kind(  # an integer >= 1 or "auto" (workbench.batching.check_batch_size)
        lambda v, model: (isinstance(v, str) and v == "auto") or count(1).ok(v, model),
        st.one_of(count(1).near, st.sampled_from(["Auto", "auto ", "AUTO", ""])),
    ),
    "sahara": flag(),
    "sahara_steps": count(0),
    "sahara_pool": count(1, optional=True),
    "sahara_rank": count(1),
    "sahara_space": choice("prompts", "hidden"),
    "n_eval": count(1),
    "eval_harmful": word_list(),
    "eval_harmless": word_list(),
    # sinks
    "first_threshold": real(minimum=0, maximum=1),
    "hidden_threshold": real(minimum=0, maximum=1),
    "threshold_on": choice("mean", "each_prompt"),
    "min_queries": count(1),
    # reference settings (retrieval, contextual)
    "locate": choice("offsets", "overlap"),
    "stemming": flag(),
    "stop_tokens": choice("newline_or_eos", "newline_token"),
    "score_over": choice("correct", "all"),
    "rows": choice("producing", "response"),
    # OV-circuit analyzers (copy_suppression, successor)
    "n_tokens": count(1),
    "embedding": choice("block0", "mlp0", "raw"),
    # receiver
    "proximity": count(0),
    "pool": choice("mean", "mass"),
    "classes": Kind(  # None or a non-empty list of bundled ordinal class names
        lambda v, model: (
            v is None
            or (bool(_strings(v)) and all(isinstance(x, str) and x in ORDINAL_CLASSES for x in v))
        ),
        st.one_of(st.lists(gen.texts, max_size=3), gen.texts, st.just([])),
    ),
    # function_vector: None or a non-empty list (or tuple) of bundled ICL task names
    "tasks": Kind(
        lambda v, model: (
            v is None
            or (
                isinstance(v, (list, tuple))
                and bool(v)
                and all(isinstance(x, str) and x in ICL_TASKS for x in v)
            )
        ),
        st.one_of(st.lists(gen.texts, max_size=3), gen.texts, st.just([])),
    ),
    "n_shots": count(1),
    "n_mean": count(1),
    "n_zero_shot": count(1),
    "fv_layer": count(0, model_hi=N_LAYERS - 1, optional=True),
    # qr_retrieval: a non-blank string that can be tokenized
    "null_query": Kind(
        lambda v, model: is_good_prompt(v), st.one_of(gen.texts, gen.surrogate_text)
    ),
}


def is_json(value: Any) -> bool:
    """A value ``json.dumps`` writes and ``json.loads`` reads back as the same kind of value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(is_json, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json(v) for k, v in value.items())
    return False


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), gen.ints, gen.floats, gen.texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(gen.texts, inner, max_size=2)
    ),
    max_leaves=5,
)


def bad(name: str, *, model: bool, json_only: bool = False) -> st.SearchStrategy[Any]:
    """Values of parameter ``name`` that it does not allow (``model``: the model is known)."""
    kind = KINDS[name]
    pool = st.one_of(kind.near, json_values if json_only else gen.anything())
    if json_only:
        pool = pool.filter(is_json)
    return pool.filter(lambda v: not kind.ok(v, model))
