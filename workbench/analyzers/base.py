"""Analyzer interface, registry and the shared pieces every analyzer uses.

An analyzer takes a loaded model and a task (a prompt set and its parameters) and returns a
tidy pandas DataFrame with one row per (layer, query head): ``layer, head, head_id, score``,
its evidence columns, and ``df.attrs`` holding its parameters, counts (``prompts_used``,
``prompts_passed``...), and its causal evidence (``df.attrs["causal"]``, see
:mod:`workbench.analyzers.causal`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.errors import WorkbenchError
from workbench.heads import head_id
from workbench.lm import LoadedModel

Progress = bool | Callable[[str, int, int], None]
"""A tqdm bar (True), nothing (False), or a callback ``progress(desc, done, total)``."""


class AnalyzerError(WorkbenchError):
    """Bad analyzer request (unknown name, bad parameter, empty prompt set...)."""


class Analyzer(ABC):
    """One head family's analysis. Subclasses set ``name``/``summary`` and implement :meth:`run`.

    ``run(lm, prompts=None, *, progress=True, **params)``: ``prompts`` is None (the analyzer's
    default task), a list of strings / prompt items (dicts with ``prompt`` and the analyzer's
    own fields), or a prompt file path.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # How batch reports (workbench.report) split the work; the defaults suit any analyzer.
    shard_rule: ClassVar[str | None] = None
    """``"mean"``: ``score`` and every evidence column are means over prompts, so prompt shards
    merge by a ``prompts_used``-weighted mean (:meth:`merge`), and ``run`` accepts
    ``ranking=[(layer, head), ...]`` to run only its causal step's ranking from a merged table.
    ``None``: the report runs the analyzer as one unit of work."""
    item_fields: ClassVar[tuple[str, ...]] = ()
    """Fields each prompt item needs besides ``prompt`` (a report gives user prompts lacking
    them to the analyzer's default task instead)."""
    uses_frames: ClassVar[bool] = False
    """``run`` takes ``frames={name: df}`` of other analyzers (the atlas)."""
    causal_prompts: ClassVar[int] = 0
    """For ``shard_rule="mean"``: the causal metric reads only this many leading prompts."""

    @abstractmethod
    def run(
        self, lm: LoadedModel, prompts=None, *, progress: Progress = True, **params: Any
    ) -> pd.DataFrame:
        """Score every head; see the class docstring."""

    def default_items(self, lm: LoadedModel, **params: Any) -> list[Any] | None:
        """The prompt items of the default task when it is a fixed list (so a report can shard
        it), else None."""
        return None

    def merge(self, frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
        """Merge shard tables of a ``shard_rule="mean"`` analyzer: numeric columns become the
        ``prompts_used``-weighted mean, counts in ``attrs`` add up, other attrs come from the
        first shard. Analyzers with boolean flag columns override this to recompute them."""
        return merge_mean_frames(frames)


ANALYZERS: dict[str, type[Analyzer]] = {}


def register_analyzer(cls: type[Analyzer]) -> type[Analyzer]:
    """Class decorator adding an analyzer to :data:`ANALYZERS` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ANALYZERS[cls.name] = cls
    return cls


def get_analyzer(name: str) -> Analyzer:
    """The registered analyzer ``name`` (a clear error listing the known ones otherwise)."""
    try:
        return ANALYZERS[name]()
    except KeyError:
        raise AnalyzerError(
            f"unknown analyzer {name!r}; known: {', '.join(sorted(ANALYZERS))}"
        ) from None


def head_frame(
    lm: LoadedModel,
    score: torch.Tensor | np.ndarray,
    evidence: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Tidy DataFrame from per-head arrays of shape (n_layers, n_heads).

    Columns: ``layer, head, head_id, score`` then each evidence column; ``attrs`` copied into
    ``df.attrs`` (keep them JSON-serialisable: they go into reports).
    """
    n_layers, n_heads = lm.info.n_layers, lm.info.n_heads
    layers, heads = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")

    def flat(x):
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.shape != (n_layers, n_heads):
            raise ValueError(f"expected shape {(n_layers, n_heads)}, got {arr.shape}")
        return arr.reshape(-1)

    data: dict[str, Any] = {
        "layer": layers.reshape(-1),
        "head": heads.reshape(-1),
        "head_id": [head_id(int(a), int(b)) for a, b in zip(layers.flat, heads.flat, strict=True)],
        "score": flat(score).astype(np.float64),
    }
    for name, values in (evidence or {}).items():
        data[name] = flat(values)
    df = pd.DataFrame(data)
    df.attrs.update({"model": lm.info.name, **dict(attrs or {})})
    return df


@dataclass
class Scan:
    """Loop over prompts with a progress bar; Ctrl-C stops it without losing finished prompts.

    Use as a context manager::

        with Scan(items, "sinks", progress) as scan:
            for item in scan:
                ...                  # per-prompt work, results appended by the caller
        scan.done, scan.interrupted  # how far it got

    ``KeyboardInterrupt`` raised inside the block is swallowed and recorded, so the analyzer
    can still build its DataFrame from the prompts that finished (``attrs["interrupted"]``).

    ``progress``: ``True`` for a tqdm bar, ``False`` for none, or a callable
    ``progress(desc, done, total)`` called at the start and after every item (the app's job
    runner and the report use this to forward progress without parsing terminal output).
    """

    items: list[Any]
    desc: str
    progress: Progress = True
    done: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    _bar: Any = field(default=None, repr=False)
    _start: float = 0.0

    def __enter__(self) -> Scan:
        self._start = time.perf_counter()
        self._bar = tqdm(
            total=len(self.items),
            desc=self.desc,
            disable=callable(self.progress) or not self.progress,
            leave=False,
        )
        self._report()
        return self

    def _report(self) -> None:
        if callable(self.progress):
            self.progress(self.desc, self.done, len(self.items))

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            yield item
            self.done += 1
            self._bar.update(1)
            self._report()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._bar.close()
        self.seconds = time.perf_counter() - self._start
        if exc_type is KeyboardInterrupt:
            self.interrupted = True
            return True
        return False

    def attrs(self) -> dict[str, Any]:
        return {
            "prompts_total": len(self.items),
            "prompts_used": self.done,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


SUMMED_ATTRS = ("prompts_total", "prompts_used", "prompts_passed", "seconds")


def merge_mean_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """``prompts_used``-weighted mean of the numeric columns of per-prompt-mean head tables
    (same heads, same order); see :meth:`Analyzer.merge`."""
    if not frames:
        raise ValueError("no frames to merge")
    weights = np.array([float(f.attrs.get("prompts_used", 0)) for f in frames])
    if weights.sum() <= 0:
        raise ValueError("no shard used any prompt")
    first = frames[0]
    flags = [c for c in first.columns if first[c].dtype == bool]
    if flags:
        raise NotImplementedError(f"boolean columns {flags}: override Analyzer.merge")
    out = first.copy()
    keys = ("layer", "head", "head_id")
    for frame in frames[1:]:
        if not frame[list(keys)].equals(first[list(keys)]):
            raise ValueError("shard tables cover different heads")
    for col in first.columns:
        if col in keys or not pd.api.types.is_numeric_dtype(first[col]):
            continue
        stacked = np.stack([f[col].to_numpy(dtype=np.float64) for f in frames])
        out[col] = (weights @ stacked) / weights.sum()
    attrs = dict(first.attrs)
    for key in SUMMED_ATTRS:
        if all(key in f.attrs for f in frames):
            attrs[key] = sum(f.attrs[key] for f in frames)
    if "seconds" in attrs:
        attrs["seconds"] = round(float(attrs["seconds"]), 3)
    attrs["interrupted"] = any(f.attrs.get("interrupted", False) for f in frames)
    attrs["shards"] = len(frames)
    attrs.pop("causal", None)
    out.attrs = attrs
    return out


def require_done(scan: Scan, what: str) -> None:
    """An interrupted scan with nothing finished has nothing to report."""
    if scan.done == 0:
        raise AnalyzerError(f"{what}: interrupted before any prompt finished; nothing to report")


def top_heads(df: pd.DataFrame, k: int, column: str = "score") -> list[tuple[int, int]]:
    """The ``k`` heads with the highest ``column`` as ``(layer, head)``."""
    best = df.nlargest(k, column)
    return [(int(a), int(b)) for a, b in zip(best["layer"], best["head"], strict=True)]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise AnalyzerError(f"{name} must be an integer, got {value!r}") from None
    if ivalue < minimum or ivalue != value:
        raise AnalyzerError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return ivalue


def ensure_list(items: Iterable[Any]) -> list[Any]:
    out = list(items)
    if not out:
        raise AnalyzerError("the prompt set is empty")
    return out
