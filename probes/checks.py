"""Shared argument validators: the one place where public entry points check user input.

Every public function of the workbench (the Python API, the CLI, the app) checks its arguments
at its boundary with these helpers, once, before any work is spent. Each helper returns the
value in its canonical type or raises :class:`ArgumentError` (a
:class:`~probes.errors.WorkbenchError`) whose message names the argument, the bad value and what
is allowed::

    >>> integer("layer", 3.0, minimum=0, maximum=29)
    Traceback (most recent call last):
    ArgumentError: layer must be an integer in 0..29, got 3.0 (float)

Rules shared by every helper:

* no coercion: ``3.0``, ``"3"``, ``True`` and ``nan`` are not integers; NumPy and 0-d torch
  integers are (they implement ``__index__``);
* no silent iteration of strings: ``layers="12"`` is refused, never read as layers 1 and 2;
* floats must be finite unless the caller says otherwise.

This module lives in ``probes`` (the lowest package that takes user input) so that ``probes``,
``workbench`` and ``app`` share it; ``workbench.checks`` re-exports it with the workbench-level
checks (prompts, paths, context length).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from probes.errors import WorkbenchError

__all__ = [
    "ArgumentError",
    "boolean",
    "choice",
    "describe",
    "encodable",
    "finite_tensor",
    "index_list",
    "integer",
    "number",
    "optional",
    "text",
    "unknown_keywords",
    "writable_folder",
]


class ArgumentError(WorkbenchError):
    """An argument has the wrong type, range, shape or value."""


def describe(value: Any) -> str:
    """``repr`` of a bad value with its type, shortened: ``3.0 (float)``, ``'L3' (str)``."""
    text_ = repr(value)
    if len(text_) > 80:
        text_ = text_[:77] + "..."
    return f"{text_} ({type(value).__name__})"


def _is_boolean(value: Any) -> bool:
    """A Python, NumPy or tensor boolean (``torch.tensor(True)`` included)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and str(dtype) in ("torch.bool", "bool")


def _not_scalar(value: Any) -> bool:
    """An array or tensor with dimensions (``tensor([3])``): not one number, even if it holds
    one (``operator.index`` and ``float`` would unwrap a one-element tensor silently)."""
    return getattr(value, "ndim", 0) != 0


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in {minimum}..{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def integer(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[WorkbenchError] = ArgumentError,
) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (both inclusive, ``None`` = unbounded).

    Accepts Python, NumPy and 0-d torch integers; refuses booleans, floats (``3.0`` included),
    strings and everything else.
    """
    allowed = f"an integer{_range_text(minimum, maximum)}"
    if _is_boolean(value) or _not_scalar(value):
        raise error(f"{name} must be {allowed}, got {describe(value)}")
    try:
        out = operator.index(value)
    except TypeError:
        raise error(f"{name} must be {allowed}, got {describe(value)}") from None
    if (minimum is not None and out < minimum) or (maximum is not None and out > maximum):
        raise error(f"{name} must be {allowed}, got {out}")
    return out


def number(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` as a ``float``: a real number (not a bool, not a string), finite unless
    ``finite=False``, within ``[minimum, maximum]`` and strictly within ``(above, below)``."""
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum}")
    if above is not None:
        parts.append(f"> {above}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    if below is not None:
        parts.append(f"< {below}")
    allowed = ("a finite number" if finite else "a number") + (
        f" {' and '.join(parts)}" if parts else ""
    )
    if isinstance(value, (str, bytes)) or value is None or _is_boolean(value):
        raise ArgumentError(f"{name} must be {allowed}, got {describe(value)}")
    if _not_scalar(value):
        raise ArgumentError(f"{name} must be {allowed}, got {describe(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ArgumentError(f"{name} must be {allowed}, got {describe(value)}") from None
    if hasattr(value, "numel") and value.numel() != 1:  # a tensor of several values
        raise ArgumentError(f"{name} must be {allowed}, got a tensor of shape {tuple(value.shape)}")
    if math.isnan(out) or (finite and math.isinf(out)):
        raise ArgumentError(f"{name} must be {allowed}, got {out}")
    bad = (
        (minimum is not None and out < minimum)
        or (maximum is not None and out > maximum)
        or (above is not None and out <= above)
        or (below is not None and out >= below)
    )
    if bad:
        raise ArgumentError(f"{name} must be {allowed}, got {out:g}")
    return out


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (NumPy booleans too); never ``bool("no")``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ArgumentError(f"{name} must be True or False, got {describe(value)}")


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options`` (strings)."""
    opts = list(options)
    if not isinstance(value, str) or value not in opts:
        raise ArgumentError(
            f"{name} must be one of {', '.join(map(repr, opts))}; got {describe(value)}"
        )
    return value


def text(name: str, value: Any, *, allow_empty: bool = False) -> str:
    """``value`` if it is a ``str`` (non-blank unless ``allow_empty``)."""
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a string, got {describe(value)}")
    encodable(name, value)
    if not allow_empty and not value.strip():
        raise ArgumentError(f"{name} is empty; give a non-empty string")
    return value


def encodable(name: str, value: str) -> str:
    """``value`` if it can be written as UTF-8: lone surrogates (what Python makes of bytes
    that are not UTF-8 on a command line or in a file read with ``surrogateescape``) are no
    text a tokenizer can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ArgumentError(
            f"{name} is not valid text: character {exc.object[exc.start : exc.end]!r} at "
            f"position {exc.start} cannot be encoded as UTF-8 (was the input UTF-8?)"
        ) from None
    return value


def optional(check: Any, name: str, value: Any, **kwargs: Any) -> Any:
    """``None`` stays ``None``; anything else goes through ``check(name, value, **kwargs)``."""
    return None if value is None else check(name, value, **kwargs)


def index_list(
    name: str,
    values: Any,
    *,
    size: int,
    what: str,
    error: type[WorkbenchError] = ArgumentError,
    allow_empty: bool = False,
) -> tuple[int, ...]:
    """Indices into ``range(size)``: one integer or an iterable of integers (not a string).

    Returns them sorted and unique. ``what`` names one element in messages (``"layer"``).
    """
    if isinstance(values, (str, bytes, Mapping)) or values is None:
        raise error(
            f"{name} must be a {what} index or a list of them in 0..{size - 1}, "
            f"got {describe(values)}"
        )
    if not isinstance(values, Iterable) or getattr(values, "ndim", 1) == 0:
        values = [values]
    out = sorted(
        {integer(f"{what} in {name}", v, minimum=0, maximum=size - 1, error=error) for v in values}
    )
    if not out and not allow_empty:
        raise error(f"no {what}s requested in {name}; give at least one index in 0..{size - 1}")
    return tuple(out)


def finite_tensor(name: str, value: Any, *, shape: Sequence[int] | None = None) -> Any:
    """``value`` if it is a tensor (or array) of finite numbers, of ``shape`` when given."""
    import torch

    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ArgumentError(
                f"{name} must be a tensor of numbers, got {describe(value)}"
            ) from None
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise ArgumentError(f"{name} must hold numbers, got dtype {value.dtype}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ArgumentError(f"{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ArgumentError(f"{name} holds {bad} NaN/inf values; give finite numbers")
    return value


def unknown_keywords(where: str, given: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse keyword arguments that ``where`` does not take, naming the close matches."""
    import difflib

    known_ = sorted(known)
    bad = sorted(set(given) - set(known_))
    if not bad:
        return
    hints = []
    for key in bad:
        close = difflib.get_close_matches(key, known_, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ArgumentError(
        f"{where} takes no parameter {', '.join(hints)}; it takes: {', '.join(known_) or 'none'}"
    )


# ---------------------------------------------------------------------------------------------
# helper A (issue 13): index pairs (query windows, key spans) and devices.
# ---------------------------------------------------------------------------------------------


def span(
    name: str,
    value: Any,
    *,
    maximum: int | None = None,
    error: type[WorkbenchError] = ArgumentError,
) -> tuple[int, int]:
    """``value`` as ``(start, end)``: two integers with ``0 <= start < end`` (and
    ``end <= maximum`` when given), e.g. a query window or a key span. A list, tuple, 1-D
    array or tensor of two integers is accepted; strings, sets, floats and booleans are not."""
    allowed = "(start, end): two integers with 0 <= start < end" + (
        f" <= {maximum}" if maximum is not None else ""
    )
    bad = f"{name} must be {allowed}, got {describe(value)}"
    ordered = isinstance(value, Sequence) or getattr(value, "ndim", None) == 1
    if isinstance(value, (str, bytes)) or not ordered or len(value) != 2:
        raise error(bad)
    try:
        start, end = (integer(name, v, error=error) for v in value)
    except WorkbenchError:
        raise error(bad) from None
    if not 0 <= start < end or (maximum is not None and end > maximum):
        raise error(f"{name} must be {allowed}, got ({start}, {end})")
    return start, end


def device(name: str, value: Any, *, check_available: bool = True) -> Any:
    """``value`` (a string such as ``"cpu"``/``"cuda:1"`` or a ``torch.device``) as a
    ``torch.device``. ``"meta"`` is refused (meta tensors hold no values); with
    ``check_available`` so is a device this machine does not have (``"cuda"`` without CUDA)."""
    import torch

    examples = "a device such as 'cpu', 'cuda' or 'cuda:1'"
    if isinstance(value, torch.device):
        dev = value
    elif isinstance(value, str):
        try:
            dev = torch.device(value)
        except (RuntimeError, ValueError):
            raise ArgumentError(f"{name} must be {examples}, got {describe(value)}") from None
    else:
        raise ArgumentError(f"{name} must be {examples}, got {describe(value)}")
    if dev.type == "meta":
        raise ArgumentError(
            f"{name}={str(dev)!r} is refused: meta tensors have shapes but no values; "
            "use 'cpu' or 'cuda'"
        )
    if not check_available or dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elif dev.type == "mps":
        count = int(torch.backends.mps.is_available())
    else:
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        count = 1 if available is not None and available() else 0
    if count == 0:
        raise ArgumentError(
            f"{name}={str(dev)!r}: this machine has no {dev.type} device (torch "
            f"{torch.__version__}); use 'cpu'"
        )
    if dev.index is not None and dev.index >= count:
        raise ArgumentError(
            f"{name}={str(dev)!r}: this machine has {count} {dev.type} device(s), "
            f"indices 0..{count - 1}"
        )
    return dev


__all__ += ["device", "span"]


def writable_folder(name: str, folder: Any, target: Any = None) -> None:
    """Create and remove a scratch file in ``folder``: proof that ``target`` (named in the
    message, default the folder) can be written there, before any work is spent. A real write,
    not ``os.access``, which says yes to root on read-only mounts such as ``/proc``."""
    import os
    import tempfile

    try:
        fd, scratch = tempfile.mkstemp(prefix=".workbench-write-check-", dir=folder)
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        raise ArgumentError(
            f"{name} {target if target is not None else folder}: cannot write in folder "
            f"{folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
