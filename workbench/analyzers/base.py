"""Analyzer interface, registry and the shared pieces every analyzer uses.

An analyzer takes a loaded model and a task (a prompt set and its parameters) and returns a
tidy pandas DataFrame with one row per (layer, query head): ``layer, head, head_id, score``,
its evidence columns, and ``df.attrs`` holding its parameters, counts (``prompts_used``,
``prompts_passed``...), and its causal evidence (``df.attrs["causal"]``, see
:mod:`workbench.analyzers.causal`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
from tqdm.auto import tqdm

from probes.checks import ArgumentError, describe, integer, unknown_keywords
from workbench.analyzers.frames import (  # noqa: F401  (re-exported: the analyzers' API)
    INTERVAL_COLUMNS,
    SUMMED_ATTRS,
    head_frame,
    merge_mean_frames,
)
from workbench.analyzers.params import COMMON, Check
from workbench.errors import WorkbenchError
from workbench.lm import LoadedModel

Progress = bool | Callable[[str, int, int], None]
"""A tqdm bar (True), nothing (False), or a callback ``progress(desc, done, total)``."""

#: The ``progress`` of the analyzer ``run`` in progress (set by the checked ``run``), so that
#: phases after the prompt loop (the causal check) report to the same place: :func:`phase`.
_RUN_PROGRESS: ContextVar[Progress] = ContextVar("analyzer_run_progress", default=False)


@contextlib.contextmanager
def phase(desc: str, total: int) -> Iterator[Callable[[], None]]:
    """Progress of a phase of ``total`` steps outside the prompt loop (the causal check's
    forwards), shown where the running analyzer shows its progress: its callback gets
    ``(desc, done, total)`` at the start and after each step, ``progress=True`` gets a tqdm
    bar, ``False`` nothing. Yields ``step()``, to call after each step."""
    progress = _RUN_PROGRESS.get()
    bar = tqdm(total=total, desc=desc, leave=False, disable=callable(progress) or not progress)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if callable(progress):
            progress(desc, done, total)

    if callable(progress):
        progress(desc, 0, total)
    try:
        yield step
    finally:
        bar.close()


QUICK_NOTE = (
    "quick mode: weak evidence (a small task and few random draws; run without quick for "
    "intervals and p-values worth trusting)"
)
"""``df.attrs["note"]`` of a run with ``quick=True``."""


class AnalyzerError(WorkbenchError):
    """Bad analyzer request (unknown name, bad parameter, empty prompt set...)."""


class AnalyzerArgumentError(AnalyzerError, ArgumentError):
    """An analyzer parameter has an unknown name, or a wrong type, range or value."""


def _checked_run(run: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    """``run`` preceded by :meth:`Analyzer.check_params`: nothing runs on a bad parameter."""

    @functools.wraps(run)
    def checked(self: Analyzer, lm: LoadedModel, prompts=None, **params: Any) -> pd.DataFrame:
        if not isinstance(lm, LoadedModel):
            raise AnalyzerArgumentError(
                f"{self.name}: lm must be a LoadedModel (workbench.load_model()), "
                f"got {describe(lm)}"
            )
        params = self.check_params(lm, params)
        quick = bool(params.get("quick", False))
        if quick:  # the small task of quick mode, for what the caller did not set
            params = {**type(self).quick_params, **params}
        token = _RUN_PROGRESS.set(params.get("progress", True))
        try:
            df = run(self, lm, prompts, **params)
        finally:
            _RUN_PROGRESS.reset(token)
        if "quick" in type(self).parameters():
            df.attrs["quick"] = quick
            if quick:
                df.attrs["note"] = QUICK_NOTE
        return df

    checked.__checked__ = True  # type: ignore[attr-defined]
    return checked


class Analyzer(ABC):
    """One head family's analysis. Subclasses set ``name``/``summary`` and implement :meth:`run`.

    ``run(lm, prompts=None, *, progress=True, **params)``: ``prompts`` is None (the analyzer's
    default task), a list of strings / prompt items (dicts with ``prompt`` and the analyzer's
    own fields), or a :class:`~pathlib.Path` of a prompt file.

    Parameters are the keyword-only parameters of the subclass's ``run`` (no ``**kwargs``);
    each has a check in :attr:`checks` or :data:`~workbench.analyzers.params.COMMON`. Every call
    of ``run`` first refuses unknown names and bad values (:meth:`check_params`), so nothing
    runs on a misspelt or out-of-range parameter.
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
    checks: ClassVar[Mapping[str, Check]] = {}
    """The check of each keyword parameter of ``run`` not in
    :data:`workbench.analyzers.params.COMMON` (or overriding it there)."""
    quick_params: ClassVar[Mapping[str, Any]] = {}
    """Parameters of ``quick=True``: the small task and few random draws used before the
    defaults were sized by measurement; a parameter the caller gives wins. A quick run's
    ``attrs`` hold ``quick=True`` and a ``note`` that its evidence is weak."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap a ``run`` defined here so that every call checks its parameters first, and make
        sure each of its keyword parameters has a check (an analyzer without one fails at
        import, not at a user's call)."""
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is None or getattr(run, "__checked__", False):
            return
        missing = [name for name in _keywords(run) if name not in {**COMMON, **cls.checks}]
        if missing:
            raise TypeError(f"{cls.__name__}.run: no check for parameter(s) {missing}")
        cls.run = _checked_run(run)  # type: ignore[method-assign]

    @classmethod
    def parameters(cls) -> tuple[str, ...]:
        """The keyword parameters ``run`` takes (``progress`` included), from its signature."""
        return _keywords(cls.run)

    @classmethod
    def select(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``params`` that ``run`` takes: for options given to every analyzer of
        a batch (a report's ``top_k``, ``draws``, ``seed``, ``n_prompts``, ``causal``), which
        not every analyzer has. A user's own parameters go to :meth:`check_params` instead."""
        names = set(cls.parameters())
        return {key: value for key, value in params.items() if key in names}

    def check_params(self, lm: LoadedModel | None, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` checked as ``run`` checks them, before any work: unknown names refused
        (with the close matches), each value through its check; returns the values in
        canonical form. ``lm=None`` (no model loaded yet): checks that need the model (layer
        and head ranges, the context length) check types only.

        Raises:
            AnalyzerArgumentError: naming the parameter, the bad value and what is allowed.
        """
        cls = type(self)
        try:
            unknown_keywords(f"analyzer {cls.name!r}", params, cls.parameters())
        except ArgumentError as exc:
            raise AnalyzerArgumentError(str(exc)) from None
        checks = {**COMMON, **cls.checks}
        out = {}
        for key, value in params.items():
            try:
                out[key] = checks[key](key, value, lm)
            except ArgumentError as exc:
                if isinstance(exc, AnalyzerError):
                    raise
                raise AnalyzerArgumentError(f"{cls.name}: {exc}") from None
        return out

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
    if not isinstance(name, str) or name not in ANALYZERS:
        raise AnalyzerArgumentError(
            f"unknown analyzer {name!r}; known: {', '.join(sorted(ANALYZERS))}"
        )
    return ANALYZERS[name]()


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


def require_done(scan: Scan, what: str) -> None:
    """An interrupted scan with nothing finished has nothing to report."""
    if scan.done == 0:
        raise AnalyzerError(f"{what}: interrupted before any prompt finished; nothing to report")


def top_heads(df: pd.DataFrame, k: int, column: str = "score") -> list[tuple[int, int]]:
    """The ``k`` heads with the highest ``column`` as ``(layer, head)``."""
    best = df.nlargest(k, column)
    return [(int(a), int(b)) for a, b in zip(best["layer"], best["head"], strict=True)]


def _keywords(run: Callable[..., Any]) -> tuple[str, ...]:
    """Keyword-only parameters of ``run`` (its ``**kwargs`` catch-all, if any, is no parameter)."""
    params = inspect.signature(run).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_room(lm: LoadedModel, n_tokens: int, max_new_tokens: int, where: str) -> None:
    """Refuse, before any work, a generation of ``max_new_tokens`` after the longest prompt
    (``n_tokens``) that would run past the model's context."""
    context = lm.info.max_context
    if n_tokens + max_new_tokens > context:
        raise AnalyzerArgumentError(
            f"{where}: max_new_tokens={max_new_tokens} after the longest prompt ({n_tokens} "
            f"tokens) exceeds the model's context of {context} tokens; lower max_new_tokens "
            f"to at most {max(context - n_tokens, 0)} or shorten the prompts"
        )


def checked(check: Callable[..., Any], name: str, value: Any, **kwargs: Any) -> Any:
    """``check(name, value, **kwargs)`` (a :mod:`probes.checks` validator) whose error is an
    :class:`AnalyzerArgumentError`, for functions of the analyzers outside ``run``."""
    try:
        return check(name, value, **kwargs)
    except ArgumentError as exc:
        if isinstance(exc, AnalyzerError):
            raise
        raise AnalyzerArgumentError(str(exc)) from None


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an integer ``>= minimum`` (:func:`probes.checks.integer`, raising
    :class:`AnalyzerError`): kept for callers outside the analyzers."""
    return integer(name, value, minimum=minimum, error=AnalyzerArgumentError)


def ensure_list(items: Iterable[Any]) -> list[Any]:
    out = list(items)
    if not out:
        raise AnalyzerError("the prompt set is empty")
    return out
