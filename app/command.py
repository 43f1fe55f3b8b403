"""``workbench app``: the Dash app's command, added to the ``workbench`` command line through
the entry-point group ``workbench.commands`` (see pyproject.toml), so that the core never
imports the app. Dash loads only when the command runs."""

from __future__ import annotations

import argparse

from workbench.cli.registry import Command
from workbench.errors import WorkbenchError

#: Top-level modules of the ``app`` extra (pyproject.toml) that the server imports.
APP_EXTRA = ("dash", "diskcache", "plotly", "waitress")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument(
        "--threads", type=int, default=8, help="request threads of the server (default 8)"
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="Dash's development server with its debug tools (never on a shared machine)",
    )


def check_address(host: str, port: int) -> None:
    """Refuse a port outside 1..65535 or a host that does not resolve, before the model
    loads (a bad address would otherwise fail only after the load)."""
    import socket

    from probes.checks import integer

    integer("--port", port, minimum=1, maximum=65535)
    try:
        socket.getaddrinfo(host, port)
    except (OSError, UnicodeError) as exc:
        raise WorkbenchError(f"--host {host!r} is no address to bind: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """Serve the app (:func:`app.server.serve`) until interrupted."""
    check_address(args.host, args.port)
    from probes.checks import integer

    integer("--threads", args.threads, minimum=1, maximum=256)
    try:
        from app.server import serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in APP_EXTRA:
            raise
        raise WorkbenchError(
            f"the app needs its extra dependencies ({exc}); install them with "
            "pip install 'attention-workbench[app]'"
        ) from None
    serve(model=args.model, host=args.host, port=args.port, debug=args.debug, threads=args.threads)
    return 0


#: The command the ``app`` entry point of ``workbench.commands`` names.
COMMAND = Command("app", "serve the Dash app", _arguments, run)
