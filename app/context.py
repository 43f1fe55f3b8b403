"""What every view's callbacks share: the model, the session store, job settings, and the
life cycle of background jobs (completion marks and the watchdog that reports a killed job).

State design: the model is shared read only; every forward pass runs in a background callback,
a process forked from the server, so probes and interventions attach their hooks to that
process's copy only. Per-session state lives in the browser (``dcc.Store``) or, for per-head
arrays, in the server-side :class:`~app.state.SessionStore` keyed by the page's session id.
No callback mutates module state. Every callback catches its errors and writes a readable
message into the page; an unexpected exception is logged with its traceback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dash import Input, Output, State
from dash.exceptions import PreventUpdate

from app import ids
from app.state import SessionStore
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import dash

    from workbench.lm import LoadedModel
    from workbench.models import ModelInfo

log = logging.getLogger("workbench.app")

STOPPED = (
    "Stopped: the job was cancelled, or its worker process ended before it finished "
    "(see the server log)."
)


@dataclass(frozen=True)
class AppContext:
    """What callbacks need besides their inputs (read only).

    Attributes:
        lm: the model every view uses (read only; forwards run in forked jobs).
        store: per-session arrays on disk.
        job_threads: torch threads per background job.
        analyzers: ``(name, summary)`` of every registered analyzer.
    """

    lm: LoadedModel
    store: SessionStore
    job_threads: int = 1
    analyzers: tuple[tuple[str, str], ...] = ()

    @property
    def info(self) -> ModelInfo:
        return self.lm.info

    @staticmethod
    def job_key(kind: str, *clicks: Any) -> str:
        """Name of one job run: its kind and the click counts that started it."""
        return f"{kind}-" + "-".join(str(c or 0) for c in clicks)

    def mark_done(self, session: str, kind: str, *clicks: Any) -> None:
        """Record that a job finished (successfully or with a handled error)."""
        self.store.mark_done(session, self.job_key(kind, *clicks))


@dataclass(frozen=True)
class JobControls:
    """The page controls of one background job.

    Attributes:
        kind: the job's name in completion marks (``AppContext.mark_done``).
        start: buttons that start it (disabled while it runs; their clicks name the run).
        cancel: its cancel button (enabled while it runs).
        busy: a ``dcc.Store`` that is True while it runs (the watchdog listens to it).
        error: where its error message goes.
        showing: components made visible only while it runs (a progress bar).
    """

    kind: str
    start: tuple[str, ...]
    cancel: str
    busy: str
    error: str
    showing: tuple[str, ...] = ()
    status: str | None = None  # its progress status line (reset when it stops unfinished)

    def background(self, progress: Sequence[Output]) -> dict[str, Any]:
        """The keyword arguments of ``app.callback`` that make a callback this job: run in the
        background, disable/enable/show the controls while it runs, cancel, report progress.

        The error box is emptied when a run starts (the last run's message no longer applies)
        and again as it ends: the renderer applies the ``running`` end values before the
        job's own outputs, so the run's error (or the watchdog's "stopped", which follows the
        end of ``busy``) is what stays."""
        visible, hidden = {"visibility": "visible"}, {"visibility": "hidden"}
        return {
            "background": True,
            "prevent_initial_call": True,
            "running": [
                *[(Output(b, "disabled"), True, False) for b in self.start],
                (Output(self.cancel, "disabled"), False, True),
                *[(Output(c, "style"), visible, hidden) for c in self.showing],
                (Output(self.error, "children"), "", ""),
                (Output(self.busy, "data"), True, False),
            ],
            "cancel": [Input(self.cancel, "n_clicks")],
            "progress": list(progress),
            "interval": 500,
        }


def watchdog(app: dash.Dash, ctx: AppContext, job: JobControls) -> None:
    """Report a job that ended without writing its completion mark (cancelled or killed), and
    replace its last progress line ("Running…", "12/48…") by "Stopped."."""
    outputs = [Output(job.error, "children", allow_duplicate=True)]
    if job.status is not None:
        outputs.append(Output(job.status, "children", allow_duplicate=True))

    @app.callback(
        *outputs,
        Input(job.busy, "data"),
        *[State(c, "n_clicks") for c in job.start],
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def check(busy: bool, *args: Any) -> Any:
        sid = args[-1]
        if busy or ctx.store.job_done(sid, ctx.job_key(job.kind, *args[:-1])):
            raise PreventUpdate
        return (STOPPED, "Stopped.") if job.status is not None else STOPPED


def message_of(exc: BaseException, what: str = "The request") -> str:
    """One readable line for an exception (WorkbenchError messages are written for users)."""
    if isinstance(exc, WorkbenchError):
        return str(exc)
    log.error("%s failed", what, exc_info=exc)
    return (
        f"{what} failed unexpectedly ({type(exc).__name__}: {exc}). The app is still running; "
        "the traceback is in the server log."
    )


def as_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number from an input box, or a WorkbenchError naming the field and range."""
    try:
        f = float(value)
        if not math.isfinite(f) or f != int(f):
            raise ValueError
        ivalue = int(f)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{name} must be a whole number, got {value!r}") from None
    if (lo is not None and ivalue < lo) or (hi is not None and ivalue > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise WorkbenchError(f"{name} must be in {bounds}, got {ivalue}")
    return ivalue
