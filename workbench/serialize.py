"""Plain-JSON views of analyzer tables, attrs and parameters (one implementation for all faces).

The app ships analyzer attrs to the browser, the report writes them to ``summary.json`` and the
CLI writes them next to a scan's table; all of them go through :func:`jsonable`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN, infinite): for text and charts
    built from attrs that may hold either."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def jsonable(obj: Any, *, finite: bool = False) -> Any:
    """``obj`` with numpy / torch / pandas / tuple values turned into plain JSON types.

    Dict keys become strings, tuples and arrays lists, numpy and torch scalars Python numbers;
    anything else that JSON cannot hold becomes its ``str``. With ``finite=True`` NaN and
    infinities become None (a browser's ``JSON.parse`` refuses them).
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, finite=finite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, finite=finite) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return jsonable(obj.tolist(), finite=finite)
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), finite=finite)
    if isinstance(obj, float):
        return None if finite and not math.isfinite(obj) else obj
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)
