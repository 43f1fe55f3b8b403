"""Hypothesis strategies of bad (and some good) values for the property suite.

``anything()`` mixes every kind of value a careless caller passes: None, booleans, floats
(NaN, inf, integral ones such as 3.0), strings (digit strings, ``"L3"``, blank ones, lone
surrogates), bytes, dicts, nested and mixed lists, NumPy scalars and arrays, torch tensors of
every dtype and of several shapes, negative and huge integers. Tests narrow it with the oracles
of :mod:`tests.property.support` to values that are invalid by construction where a valid
value would start real work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

from tests.property.support import N_HEADS, N_LAYERS, as_head, as_heads, as_index

NAN, INF = math.nan, math.inf

#: Strings that look like something else: numbers, head ids, words for yes and no.
ODD_STRINGS = [
    "", " ", "\t\n", "3", "-1", "0", "3.0", "1e3", "nan", "inf", "True", "no", "None",
    "L3", "L3H2", "L5H*", "l5h3", "L3.5H2", "L-1H2", "3,4", "[3]", "\u0663", "\uff13",
    " 3 ", "0x10", "1_0", "prompts.txt", "@", "@@x",
]  # fmt: skip

ints = st.one_of(
    st.integers(-40, 300),
    st.integers(),
    st.sampled_from([-(10**400), -1, 2**31, 2**32, 2**63, 10**30, 10**400]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 0.5, 1.0, 3.0, 1e-300, 1e300]),
)
surrogate = st.integers(0xD800, 0xDFFF).map(chr)
#: Text with a lone surrogate: not encodable as UTF-8 (``"\\udcff"`` is how Python shows a
#: command-line byte that is not UTF-8).
surrogate_text = st.tuples(st.text(max_size=4), surrogate, st.text(max_size=4)).map("".join)
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
    ints.map(str),
    floats.map(repr),
    surrogate_text,
)
objects = st.builds(object)
complexes = st.complex_numbers(allow_nan=True, allow_infinity=True)
scalars = st.one_of(
    st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=6), objects, complexes
)


def _numpy_scalar(kind: str, value: Any) -> Any:
    with np.errstate(over="ignore"):  # 1e300 as float32 is inf: one more bad value
        return {"i64": np.int64, "i32": np.int32, "f64": np.float64, "f32": np.float32}[kind](value)


numpy_scalars = st.one_of(
    st.integers(-(2**31), 2**31 - 1).flatmap(
        lambda v: st.sampled_from(["i64", "i32"]).map(lambda k: _numpy_scalar(k, v))
    ),
    floats.flatmap(lambda v: st.sampled_from(["f64", "f32"]).map(lambda k: _numpy_scalar(k, v))),
    st.booleans().map(np.bool_),
)

SHAPES = [(), (0,), (1,), (2,), (3,), (1, 1), (2, 2), (2, 3)]
TORCH_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.uint8, torch.bool, torch.complex64,
]  # fmt: skip


def _values_for(dtype_kind: str, n: int) -> st.SearchStrategy[list[Any]]:
    if dtype_kind == "f":
        return st.lists(floats, min_size=n, max_size=n)
    if dtype_kind == "b":
        return st.lists(st.booleans(), min_size=n, max_size=n)
    return st.lists(st.integers(0, 120), min_size=n, max_size=n)


@st.composite
def tensors(
    draw, shapes: list[tuple[int, ...]] = SHAPES, dtypes: list[torch.dtype] = TORCH_DTYPES
) -> torch.Tensor:
    """A torch tensor of any dtype (floats with NaN/inf, bools, complex...) and shape."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(st.sampled_from(shapes))
    if dtype == torch.bool:
        kind = "b"
    else:
        kind = "f" if dtype.is_floating_point or dtype.is_complex else "i"
    values = draw(_values_for(kind, math.prod(shape)))
    return torch.tensor(values, dtype=dtype).reshape(shape)


@st.composite
def arrays(draw, shapes: list[tuple[int, ...]] = SHAPES) -> np.ndarray:
    """A NumPy array of ints, floats (NaN/inf) or bools, of any shape."""
    kind = draw(st.sampled_from(["i", "f", "b"]))
    shape = draw(st.sampled_from(shapes))
    values = draw(_values_for(kind, math.prod(shape)))
    dtype = {"i": np.int64, "f": np.float64, "b": np.bool_}[kind]
    return np.array(values, dtype=dtype).reshape(shape)


def nested(leaves: st.SearchStrategy[Any] = scalars) -> st.SearchStrategy[Any]:
    """Lists, tuples, sets and dicts of ``leaves``, nested a few levels."""
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.tuples(inner, inner),
            st.dictionaries(st.text(max_size=4), inner, max_size=3),
            st.frozensets(st.one_of(st.integers(-3, 40), st.text(max_size=3)), max_size=3),
        ),
        max_leaves=6,
    )


empties = st.sampled_from([[], (), {}, "", b"", set(), range(0)])


def anything() -> st.SearchStrategy[Any]:
    """Every kind of value (see the module docstring)."""
    return st.one_of(
        scalars, numpy_scalars, arrays(), tensors(), nested(), empties, st.lists(scalars)
    )


# -- narrowed families -------------------------------------------------------------------------
#: Values one element away from an integer: booleans and one-element tensors and arrays of
#: integers, booleans or floats (``tensor(True)``, ``tensor([3])``, ``np.array([3])``), NumPy
#: booleans and floats, integral floats, digit strings.
index_impostors = st.one_of(
    tensors([(), (1,), (1, 1)], [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float32]),
    arrays([(), (1,), (1, 1)]),
    st.booleans(),
    st.booleans().map(np.bool_),
    st.integers(-3, 40).map(float),
    st.integers(-3, 40).map(str),
    numpy_scalars,
)


def not_index(minimum: int = 0, maximum: int | None = None) -> st.SearchStrategy[Any]:
    """Values that are not an integer in ``minimum..maximum``: non-integers of every kind and
    integers outside the range."""
    out_of_range = st.one_of(
        st.integers(max_value=minimum - 1),
        st.just(-(10**400)),
        *([] if maximum is None else [st.integers(min_value=maximum + 1), st.just(10**400)]),
    )
    non_integers = st.one_of(index_impostors, anything()).filter(lambda v: as_index(v) is None)
    return st.one_of(out_of_range, non_integers)


def not_number(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
) -> st.SearchStrategy[Any]:
    """Values that are not a finite real number in the range (bounds as in
    :func:`probes.checks.number`): strings ("0.5" too), booleans, None, containers, complex
    numbers, NaN, infinities and real numbers outside the range."""

    def outside(x: float) -> bool:
        return (
            (minimum is not None and x < minimum)
            or (maximum is not None and x > maximum)
            or (above is not None and x <= above)
            or (below is not None and x >= below)
        )

    real_out = st.one_of(ints, floats, numpy_scalars).filter(
        lambda v: real_value(v) is not None and math.isfinite(real_value(v)) and outside(v)
    )
    junk = anything().filter(lambda v: real_value(v) is None or not math.isfinite(real_value(v)))
    return st.one_of(real_out, junk) if _has_bounds(minimum, maximum, above, below) else junk


def real_value(value: Any) -> float | None:
    """The real number ``value`` is, or None: Python and NumPy ints and floats (not booleans,
    not complex) and 0-d arrays/tensors of them; anything with a shape is not a number. A
    Python int too large for a float (``10**400``) is None too: no finite number."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (np.ndarray, torch.Tensor)):
        if value.ndim != 0 or value.dtype in (np.bool_, torch.bool) or _complex(value):
            return None
    elif not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _complex(value: Any) -> bool:
    dtype = value.dtype
    return dtype.is_complex if isinstance(dtype, torch.dtype) else dtype.kind == "c"


def _has_bounds(*bounds: float | None) -> bool:
    return any(b is not None for b in bounds)


def not_flag() -> st.SearchStrategy[Any]:
    """Anything but ``True``/``False``: 0, 1, "yes", "no", None, arrays, tensors..."""
    return anything().filter(lambda v: not isinstance(v, (bool, np.bool_)))


def head_like() -> st.SearchStrategy[Any]:
    """Values that look like heads, good and bad: ids (in and out of range, ``L5H*``, lists in
    one string), pairs of integers and of junk, lists of them, and anything."""
    ids = st.builds(lambda a, b: f"L{a}H{b}", st.integers(-2, 40), st.integers(-2, 12))
    strings = st.one_of(
        ids,
        st.lists(ids, min_size=1, max_size=3).map(",".join),
        st.integers(0, 35).map(lambda a: f"L{a}H*"),
        texts,
    )
    numbers = st.one_of(st.integers(-2, 40), index_impostors, scalars)
    pairs = st.one_of(st.tuples(numbers, numbers), st.lists(numbers, min_size=1, max_size=3))
    item = st.one_of(strings, pairs)
    return st.one_of(item, st.lists(item, max_size=3), st.tuples(item, item), anything())


def as_head_pairs(value: Any, model: bool = True) -> list[tuple[int, int]] | None:
    """Oracle of a head set of the embedded model (:func:`head_like` values): ``(layer, head)``
    in the order given, repeats dropped; None when anything is not a head of the model.

    One head is an id string (several ids in one string too), or a (layer, head) pair of
    integers (a tuple when it stands alone); a head set is one head or an iterable of them.
    ``model=False`` (no model loaded yet): any non-negative indices, and no ``L5H*``."""
    if isinstance(value, str) or (isinstance(value, tuple) and _looks_like_pair(value)):
        value = [value]
    if isinstance(value, (bytes, dict)) or not isinstance(value, (list, tuple, set, frozenset)):
        return None
    out: list[tuple[int, int]] = []
    for item in value:
        if isinstance(item, str):
            heads = as_heads(item, N_HEADS if model else None)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pair = (as_index(item[0]), as_index(item[1]))
            heads = None if None in pair else [pair]
        else:
            heads = None
        if heads is None:
            return None
        for layer, head in heads:
            if min(layer, head) < 0 or (model and (layer >= N_LAYERS or head >= N_HEADS)):
                return None
            if (layer, head) not in out:
                out.append((layer, head))
    return out or None


def _looks_like_pair(value: tuple) -> bool:
    return len(value) == 2 and not any(isinstance(x, (str, bytes, tuple, list)) for x in value)


def bad_heads() -> st.SearchStrategy[Any]:
    """Head sets that name something other than heads of the embedded model."""
    return head_like().filter(lambda v: as_head_pairs(v) is None)


def bad_head_text(with_star: bool = True) -> st.SearchStrategy[str]:
    """Head-list strings whose syntax is wrong (no model needed to see it)."""
    n = 1 if with_star else None
    return st.one_of(texts, head_like().filter(lambda v: isinstance(v, str))).filter(
        lambda s: as_heads(s, n) is None
    )


__all__ = [
    "anything",
    "arrays",
    "as_head",
    "as_head_pairs",
    "bad_head_text",
    "bad_heads",
    "empties",
    "floats",
    "head_like",
    "index_impostors",
    "ints",
    "nested",
    "not_flag",
    "not_index",
    "not_number",
    "numpy_scalars",
    "objects",
    "real_value",
    "scalars",
    "surrogate_text",
    "tensors",
    "texts",
]
