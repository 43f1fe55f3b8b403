"""The ``workbench`` command line: info, capture, bench, generate, scan, organism, report, and
the commands other installed packages add (``workbench app``, from the ``app`` package).

The command table lives in :mod:`workbench.cli.registry`: the built-in commands (one module per
group: :mod:`.model`, :mod:`.generate`, :mod:`.scan`, :mod:`.organism`, :mod:`.report`)
register themselves on import, other packages' commands come from the entry-point group
``workbench.commands``. The core never imports a front-end.

Every user error is a :class:`~workbench.errors.WorkbenchError` printed as one line
(``error: ...``) with exit status 2; nothing prints a traceback for bad input. Ctrl-C prints
``interrupted``; :func:`main` returns 130 and the process (:func:`run`) ends by SIGINT, as an
uncaught Ctrl-C would, so the shell sees status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from workbench.cli.registry import (
    ENTRY_POINT_GROUP,
    EXIT_USER_ERROR,
    Command,
    Parser,
    all_commands,
    check_command,
    command,
    error_line,
    register,
)
from workbench.errors import WorkbenchError

#: What :func:`main` returns after Ctrl-C (128 + SIGINT, the shell's status for it).
EXIT_INTERRUPTED = 128 + signal.SIGINT

#: The modules of the built-in commands, imported (so registered) in the order that
#: ``workbench --help`` lists them.
BUILTIN_MODULES = ("model", "generate", "scan", "organism", "report")
for _module in BUILTIN_MODULES:
    importlib.import_module(f"workbench.cli.{_module}")


def build_parser(
    commands: Sequence[Command] | None = None, only: str | None = None
) -> argparse.ArgumentParser:
    """The argument parser of ``commands`` (default: every command of the table).

    With ``only``, just that command declares its options; the others appear by name and help
    line. ``main`` passes the command on the line, so ``workbench --help`` never calls any
    ``add_arguments`` (some of them import the intervention or analyzer tables, hence torch).
    """
    parser = Parser(
        prog="workbench", description="Attention-head workbench for mechanistic interpretability."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in all_commands() if commands is None else commands:
        p = sub.add_parser(cmd.name, help=cmd.help)
        if only is None or cmd.name == only:
            cmd.add_arguments(p)
        p.set_defaults(func=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``workbench`` console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = all_commands()
    try:
        check_command(argv, commands)
        only = argv[0] if argv and not argv[0].startswith("-") else ""
        args = build_parser(commands, only=only).parse_args(argv)
        if getattr(args, "quiet", False):  # also silence transformers' weight-loading bar
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        return args.func(args)
    except WorkbenchError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    """Process entry point (the ``workbench`` console script, ``python -m workbench.cli``).

    Exits with :func:`main`'s status. After Ctrl-C it ends by SIGINT with the default handler,
    the convention for interrupted programs (the shell sees 130 and a loop around the command
    stops). Exiting with ``sys.exit(130)`` instead is not reliable: CPython marks a
    ``KeyboardInterrupt`` that passes through C code running Python (an import inside an
    extension, for one) as unhandled even when ours catches it, and then kills the process by
    SIGINT at exit anyway; so the status would depend on where the interrupt landed.
    """
    code = main()
    if code == EXIT_INTERRUPTED and os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(code)


__all__ = [
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "Command",
    "build_parser",
    "command",
    "main",
    "register",
    "run",
]
