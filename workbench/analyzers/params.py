"""Analyzer parameters: the check each keyword of an analyzer's ``run`` goes through.

Every analyzer class lists a :data:`Check` per keyword parameter of its ``run`` in
``Analyzer.checks`` (the ones many analyzers share, :data:`COMMON`, are found here). The base
class (:mod:`workbench.analyzers.base`) wraps ``run`` so that every call first refuses unknown
keywords (from ``run``'s own signature) and then passes each given value through its check,
before any forward runs. A check is ``check(name, value, lm) -> value`` in its canonical type; it
raises :class:`~probes.checks.ArgumentError` naming the parameter, the bad value and what is
allowed. ``lm`` may be None (a command line checked before the model loads): the checks that
need the model (layer and head ranges, the context length) then check types only.

All validation goes through :mod:`probes.checks`; nothing here re-implements a validator.

Each check built here also carries a :class:`Spec` (``check.spec``): what it accepts, in a form
a user interface can read (the app's analyzer form builds its typed fields from it). The spec
is made by the same factory call as the check, so the two cannot disagree; :func:`spec_of`
gives ``Spec("json")`` for a check written elsewhere without one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.checks import (
    ArgumentError,
    boolean,
    choice,
    describe,
    index_list,
    integer,
    number,
    text,
    writable_folder,
)

if TYPE_CHECKING:
    from workbench.lm import LoadedModel

Check = Callable[[str, Any, "LoadedModel | None"], Any]
"""``check(name, value, lm) -> value``: the value in canonical form, or ArgumentError."""

Bound = int | Callable[["LoadedModel"], int] | None


def _bound(bound: Bound, lm: LoadedModel | None) -> int | None:
    if callable(bound):
        return None if lm is None else bound(lm)
    return bound


@dataclass(frozen=True)
class Spec:
    """What a check accepts, machine-readable (for building a form field).

    ``kind``: ``"integer"`` / ``"number"`` (``minimum``, ``maximum`` inclusive, ``above``,
    ``below`` exclusive; a bound may be a function of the model), ``"flag"``, ``"choice"``
    (``choices``), ``"text"``, ``"list"`` (of ``items``: ``"integer"``, ``"number"``,
    ``"text"``, ``"head"``, ``"layer"``), ``"file"``, ``"file_or_list"``, ``"auto_or_integer"``
    (``"auto"`` or an integer >= ``minimum``), ``"callback"`` (a Python callable, set by the
    caller), ``"frames"`` (DataFrames: Python API only) or ``"json"`` (anything else, as JSON).
    ``optional``: ``None`` is allowed (an empty field)."""

    kind: str
    minimum: float | Bound = None
    maximum: float | Bound = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    items: str | None = None
    optional: bool = False

    def bounds(self, lm: LoadedModel | None) -> tuple[float | None, float | None]:
        """``(minimum, maximum)`` resolved on ``lm`` (a model's bound: None without one)."""
        return _bound(self.minimum, lm), _bound(self.maximum, lm)  # type: ignore[arg-type]


def described(check: Check, spec: Spec) -> Check:
    """``check`` carrying ``spec`` (``check.spec``)."""
    check.spec = spec  # type: ignore[attr-defined]
    return check


def spec_of(check: Check) -> Spec:
    """The :class:`Spec` a check carries (``Spec("json")`` for one without)."""
    return getattr(check, "spec", None) or Spec("json")


def _allow_none(check: Check, optional: bool) -> Check:
    if not optional:
        return check

    def maybe(name: str, value: Any, lm: LoadedModel | None) -> Any:
        return None if value is None else check(name, value, lm)

    spec = getattr(check, "spec", None)
    return maybe if spec is None else described(maybe, replace(spec, optional=True))


def _items(name: str, value: Any, what: str) -> list[Any]:
    """The elements of a list-like ``value`` (not a string, bytes or mapping)."""
    if (
        isinstance(value, (str, bytes, Mapping))
        or not isinstance(value, Iterable)
        or getattr(value, "ndim", 1) == 0  # a 0-d array or tensor: iterating it fails
    ):
        raise ArgumentError(f"{name} must be a list of {what}, got {describe(value)}")
    return list(value)


# -- check factories ---------------------------------------------------------------------------
def count(minimum: int = 1, maximum: Bound = None, *, optional: bool = False) -> Check:
    """An integer in ``minimum..maximum`` (``maximum`` may depend on the model)."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> int:
        return integer(name, value, minimum=minimum, maximum=_bound(maximum, lm))

    return _allow_none(described(check, Spec("integer", minimum, maximum)), optional)


def real(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    optional: bool = False,
) -> Check:
    """A finite real number in the given range (never a bool or a string)."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> float:
        return number(name, value, minimum=minimum, maximum=maximum, above=above, below=below)

    spec = Spec("number", minimum, maximum, above, below)
    return _allow_none(described(check, spec), optional)


def flag() -> Check:
    """``True`` or ``False`` (``"no"``, ``0`` and ``None`` are refused)."""
    return described(lambda name, value, lm: boolean(name, value), Spec("flag"))


def one_of(*options: str) -> Check:
    """One of the strings ``options``."""
    check: Check = lambda name, value, lm: choice(name, value, options)  # noqa: E731
    return described(check, Spec("choice", choices=options))


def words(*, optional: bool = True, allow_empty: bool = True) -> Check:
    """A string (``None`` too when ``optional``)."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> str:
        return text(name, value, allow_empty=allow_empty)

    return _allow_none(described(check, Spec("text")), optional)


def word_list(*, optional: bool = True) -> Check:
    """A non-empty list of non-empty strings (a bare string is refused, not split)."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> list[str]:
        values = _items(name, value, "strings")
        if not values:
            raise ArgumentError(f"{name} is empty; give at least one string")
        return [text(f"{name}[{i}]", v) for i, v in enumerate(values)]

    return _allow_none(described(check, Spec("list", items="text")), optional)


def layer_list(*, optional: bool = True) -> Check:
    """Layer indices of the model (one integer or a list; sorted, unique)."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> tuple[int, ...]:
        if lm is None:  # types only
            return index_list(name, value, size=2**31, what="layer")
        n_layers = lm.info.n_layers
        values = [value] if hasattr(value, "__index__") else _items(name, value, "layer indices")
        for i, v in enumerate(values):
            layer = integer(f"{name}[{i}]", v)
            if not 0 <= layer < n_layers:
                raise ArgumentError(
                    f"{name}: layer {layer} is out of range; this model has layers "
                    f"0..{n_layers - 1}"
                )
        return index_list(name, values, size=n_layers, what="layer")

    return _allow_none(described(check, Spec("list", items="layer")), optional)


def head_list(*, optional: bool = True) -> Check:
    """Heads of the model as ``[(layer, head), ...]``, given as ids (``"L5H3"``, ``"L5H*"``),
    :class:`~workbench.heads.Head` or ``(layer, head)`` pairs of integers; order kept."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> list[tuple[int, int]]:
        from workbench.interventions.base import head_pairs

        return head_pairs(None if lm is None else lm.layout, value, name=name)

    return _allow_none(described(check, Spec("list", items="head")), optional)


def fraction_list() -> Check:
    """A non-empty list of numbers in [0, 1]."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> list[float]:
        values = _items(name, value, "numbers in [0, 1]")
        if not values:
            raise ArgumentError(f"{name} is empty; give at least one number in [0, 1]")
        return [number(f"{name}[{i}]", v, minimum=0, maximum=1) for i, v in enumerate(values)]

    return described(check, Spec("list", 0, 1, items="number"))


def length_list() -> Check:
    """A non-empty list of token counts, each within the model's context."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> list[int]:
        values = _items(name, value, "token counts")
        if not values:
            raise ArgumentError(f"{name} is empty; give at least one length in tokens")
        top = None if lm is None else lm.info.max_context
        return [integer(f"{name}[{i}]", v, minimum=1, maximum=top) for i, v in enumerate(values)]

    return described(check, Spec("list", 1, context, items="integer"))


def file_or_items(what: str) -> Check:
    """``None``, a path (``str`` or :class:`~pathlib.Path`) or a list of ``what``."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> Any:
        if value is None:
            return value
        if isinstance(value, (str, Path)):
            return existing_file(name, value)
        if (
            isinstance(value, (bytes, Mapping))
            or not isinstance(value, Iterable)
            or getattr(value, "ndim", 1) == 0
        ):
            raise ArgumentError(
                f"{name} must be None, a file path or a list of {what}, got {describe(value)}"
            )
        return list(value)

    return described(check, Spec("file_or_list", items=what, optional=True))


def existing_file(name: str, value: str | Path) -> str | Path:
    """``value`` if it names an existing file (a clear error for a missing one, a folder, or
    a name the file system cannot take)."""
    try:
        ok = Path(value).is_file()
    except (OSError, ValueError) as exc:
        raise ArgumentError(f"{name}: {str(value)[:60]!r} is no usable file path ({exc})") from None
    if not ok:
        raise ArgumentError(f"{name}: file {str(value)[:200]!r} does not exist or is not a file")
    return value


def text_file(*, optional: bool = True) -> Check:
    """The path (``str`` or :class:`~pathlib.Path`) of an existing file."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ArgumentError(f"{name} must be a file path, got {describe(value)}")
        return Path(existing_file(name, value))

    return _allow_none(described(check, Spec("file")), optional)


def output_file(*, optional: bool = True) -> Check:
    """The path of a file to write: its folder exists and is writable, it is not a folder."""

    def check(name: str, value: Any, lm: LoadedModel | None) -> str:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ArgumentError(f"{name} must be a file path to write, got {describe(value)}")
        path = Path(value)
        folder = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise ArgumentError(f"{name}: {str(value)!r} is a folder; give a file path")
        if not folder.is_dir():
            raise ArgumentError(f"{name}: the folder {str(folder)!r} does not exist")
        writable_folder(name, folder, path)
        if path.exists() and not os.access(path, os.W_OK):
            raise ArgumentError(f"{name}: {str(value)!r} is not writable")
        return str(value)

    return _allow_none(described(check, Spec("file")), optional)


def progress_check(name: str, value: Any, lm: LoadedModel | None) -> Any:
    """``True`` (a progress bar), ``False`` (none) or a callable ``progress(desc, done, total)``."""
    if callable(value) and not isinstance(value, type):
        return value
    try:
        return boolean(name, value)
    except ArgumentError:
        raise ArgumentError(
            f"{name} must be True, False or a callable progress(desc, done, total), "
            f"got {describe(value)}"
        ) from None


def frames_check(name: str, value: Any, lm: LoadedModel | None) -> dict[str, Any]:
    """``None`` or a mapping of analyzer names to DataFrames."""
    import pandas as pd

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentError(
            f"{name} must be a dict {{analyzer name: DataFrame}}, got {describe(value)}"
        )
    for key, frame in value.items():
        text(f"a key of {name}", key)
        if not isinstance(frame, pd.DataFrame):
            raise ArgumentError(f"{name}[{key!r}] must be a DataFrame, got {describe(frame)}")
    return dict(value)


def metric_check(name: str, value: Any, lm: LoadedModel | None) -> Any:
    """``"logit_diff"`` or a callable ``(logits_last, item) -> 0-d tensor``."""
    if callable(value) and not isinstance(value, type):
        return value
    if value == "logit_diff" and isinstance(value, str):
        return value
    raise ArgumentError(f"{name} must be 'logit_diff' or a callable, got {describe(value)}")


def half_the_heads(lm: LoadedModel) -> int:
    """The largest top-k a causal check can take: the random control draws as many other heads."""
    return lm.info.n_layers * lm.info.n_heads // 2


def all_heads(lm: LoadedModel) -> int:
    return lm.info.n_layers * lm.info.n_heads


def context(lm: LoadedModel) -> int:
    return lm.info.max_context


def batch_size_check(name: str, value: Any, lm: LoadedModel | None) -> int | str:
    """Prompts per forward: ``"auto"`` (sized from free memory) or an integer >= 1."""
    from workbench.batching import check_batch_size

    return check_batch_size(value)


described(progress_check, Spec("callback"))
described(frames_check, Spec("frames", optional=True))
described(metric_check, Spec("choice", choices=("logit_diff",)))  # or a callable: Python API
described(batch_size_check, Spec("auto_or_integer", minimum=1))

#: Checks of the parameters many analyzers share (an analyzer's own ``checks`` override them).
COMMON: dict[str, Check] = {
    "progress": progress_check,
    "causal": flag(),
    "top_k": count(1, half_the_heads),
    "draws": count(1),
    "seed": count(0, 2**32 - 1),
    "n_prompts": count(1),
    "prompt_tokens": count(2, context),
    "n_words": count(1),
    "ranking": head_list(),
    "chat": flag(),
    "system": words(),
    "max_new_tokens": count(1, context),
    "quick": flag(),
    "batch_size": batch_size_check,
}


__all__ = [
    "COMMON",
    "Check",
    "Spec",
    "batch_size_check",
    "count",
    "described",
    "file_or_items",
    "flag",
    "fraction_list",
    "frames_check",
    "head_list",
    "layer_list",
    "length_list",
    "metric_check",
    "one_of",
    "output_file",
    "progress_check",
    "real",
    "spec_of",
    "text_file",
    "word_list",
    "words",
]
