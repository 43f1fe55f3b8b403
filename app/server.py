"""Dash app entry point: ``workbench app`` -> :func:`serve`; tests, notebooks -> :func:`create_app`.

The app imports only the public ``workbench`` API. One loaded model is shared read-only by all
sessions (loading per request would be far too slow): :func:`get_model` keeps it in a
module-level cache keyed by model name that is filled once and never changed per session.
Forward passes run in background callbacks (:class:`app.job_manager.JobManager`), in daemonic
processes forked from the server, so the page stays responsive and jobs can report progress and
be cancelled.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path

import dash
import diskcache

import workbench
from app import views
from app.context import AppContext
from app.job_manager import JobManager
from app.page import make_layout
from app.state import SessionStore
from app.views import permalink, prompt
from workbench import analyzers

ASSETS = Path(__file__).parent / "assets"


@functools.lru_cache(maxsize=2)
def get_model(name: str | None = None) -> workbench.LoadedModel:
    """The loaded model ``name`` (None = embedded SmolLM2), loaded once per process."""
    return workbench.load_model(name)


def default_job_threads() -> int:
    """Torch threads per background job (``WORKBENCH_APP_THREADS``, default 1).

    Jobs are forked from the server; torch's OpenMP pool does not survive a fork once the
    parent has used it, so a forked job with more than one thread can hang. One thread per job
    is safe; several sessions' jobs then run on separate cores.
    """
    try:
        return max(1, int(os.environ.get("WORKBENCH_APP_THREADS", "1")))
    except ValueError:
        return 1


def create_app(
    lm: workbench.LoadedModel,
    *,
    cache_dir: str | os.PathLike | None = None,
    job_threads: int | None = None,
) -> dash.Dash:
    """Build the Dash app around one loaded model.

    Args:
        lm: the model every view uses (read only).
        cache_dir: where background-job results and per-session arrays go (default: a new
            temporary directory, so separate app instances never share entries).
        job_threads: torch threads per background job (default :func:`default_job_threads`).
    """
    root = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="workbench-app-"))
    root.mkdir(parents=True, exist_ok=True)
    manager = JobManager(diskcache.Cache(str(root / "jobs")))
    store = SessionStore(str(root / "sessions"))
    app = dash.Dash(
        __name__,
        title="Attention workbench",
        assets_folder=str(ASSETS),
        background_callback_manager=manager,
        suppress_callback_exceptions=True,
        update_title=None,
    )
    wb = AppContext(
        lm=lm,
        store=store,
        job_threads=job_threads or default_job_threads(),
        analyzers=tuple(analyzers.list_analyzers()),
    )
    app.layout = make_layout(wb)
    for view in (prompt, *views.TABS, permalink):
        view.register(app, wb)
    return app


def serve(
    model: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug: bool = False,
    threads: int = 8,
) -> None:
    """Load ``model`` and serve the app (bound to 127.0.0.1 unless told otherwise).

    A production WSGI server (waitress: one process, ``threads`` request threads, so one
    loaded model serves every session; background jobs still run in their own processes);
    ``debug=True`` runs Dash's development server with its debug tools instead."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not every progress poll
    lm = get_model(model)
    app = create_app(lm)
    print(f"Attention workbench on http://{host}:{port}/  ({lm.info.name})", flush=True)
    if debug:
        app.run(host=host, port=port, debug=True, use_reloader=False)
        return
    from waitress import serve as serve_wsgi

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" chatter
    serve_wsgi(app.server, host=host, port=port, threads=int(threads), ident="attention-workbench")
