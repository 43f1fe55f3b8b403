"""The command table of the ``workbench`` command line.

A command is a name, a one-line help, an ``add_arguments(parser)`` that declares its options and
a ``run(args) -> int`` that does the work (:class:`Command`). The built-in commands register
themselves with :func:`register` when :mod:`workbench.cli` is imported; commands of other
installed packages come from the entry-point group :data:`ENTRY_POINT_GROUP`, whose entries name
a :class:`Command` (or a zero-argument callable returning one)::

    [project.entry-points."workbench.commands"]
    app = "app.command:COMMAND"

That is how ``workbench app`` reaches the Dash app without the core importing it. A front-end
whose entry point cannot be loaded still appears in the table, as a command that fails with one
``error:`` line (:func:`unavailable`), so one broken package never breaks the others.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from workbench.errors import WorkbenchError

#: Exit status of a command stopped by a user error (one ``error: ...`` line on stderr).
EXIT_USER_ERROR = 2
#: Entry-point group of the commands other installed packages add to ``workbench``.
ENTRY_POINT_GROUP = "workbench.commands"

#: A command's ``add_arguments(parser)`` and ``run(args) -> exit status``.
AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One ``workbench`` subcommand.

    Attributes:
        name: the word on the command line (``workbench NAME ...``).
        help: one line for ``workbench --help``.
        add_arguments: declares the command's options on its subparser.
        run: does the work; returns the exit status (user errors raise
            :class:`~workbench.errors.WorkbenchError`, printed as ``error: ...``, exit 2).
    """

    name: str
    help: str
    add_arguments: AddArguments
    run: Run


_BUILTIN: dict[str, Command] = {}


def register(command: Command) -> Command:
    """Add (or replace) a built-in command; the table keeps registration order."""
    _BUILTIN[command.name] = command
    return command


def command(name: str, help: str, add_arguments: AddArguments) -> Callable[[Run], Run]:
    """Decorator: register the decorated ``run(args) -> int`` as the built-in command ``name``."""

    def decorate(run: Run) -> Run:
        register(Command(name, help, add_arguments, run))
        return run

    return decorate


class UsageError(WorkbenchError):
    """A command line that argparse cannot parse (unknown option, missing value, bad type)."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are :class:`UsageError` (printed by ``main`` as one
    ``error: ...`` line, exit 2) instead of usage text and ``SystemExit``; ``--help`` still
    prints and exits 0. Subparsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        """Raise :class:`UsageError` naming the command and pointing at its ``--help``."""
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def error_line(exc: BaseException) -> str:
    """The one ``error: ...`` line of a user error (line breaks of the message folded)."""
    return "error: " + " ".join(str(exc).split())


def builtin_commands() -> tuple[Command, ...]:
    """The commands registered with :func:`register`, in registration order."""
    return tuple(_BUILTIN.values())


@dataclass(frozen=True)
class Unavailable(Command):
    """A command whose package is broken: it takes any arguments and fails with ``reason``."""

    reason: str = ""


def unavailable(name: str, reason: str) -> Unavailable:
    """A stand-in for a command that cannot be loaded: ``workbench NAME ...`` prints
    ``error: reason`` and exits 2, whatever the arguments."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        raise WorkbenchError(reason)

    return Unavailable(name, f"(unavailable: {reason})", add_arguments, run, reason)


def check_command(argv: list[str], commands: tuple[Command, ...]) -> None:
    """Fail early, with one clear line, when ``argv`` names no command or a broken one.

    Raises:
        WorkbenchError: ``argv[0]`` is not a command's name (say where commands come from),
            or names a command whose entry point cannot be loaded (say why).
    """
    if not argv or argv[0].startswith("-"):
        return  # --help, or argparse's own "required" message
    by_name = {c.name: c for c in commands}
    command = by_name.get(argv[0])
    if command is None:
        raise WorkbenchError(unknown_command_message(argv[0], list(by_name)))
    if isinstance(command, Unavailable):
        raise WorkbenchError(command.reason)


def _load_entry_point(entry: metadata.EntryPoint) -> Command:
    """The :class:`Command` an entry point names, or :func:`unavailable` saying why not."""
    where = f"entry point {entry.name} = {entry.value!r} (group {ENTRY_POINT_GROUP})"
    try:
        obj = entry.load()
        command = obj if isinstance(obj, Command) or not callable(obj) else obj()
    except Exception as exc:  # any failure of a foreign package: report it, never crash
        reason = f"command {entry.name!r} cannot be loaded: {where} failed: {exc}"
        return unavailable(entry.name, reason)
    if not isinstance(command, Command):
        reason = (
            f"command {entry.name!r} cannot be loaded: {where} gives a "
            f"{type(command).__name__}, not a workbench.cli.registry.Command"
        )
        return unavailable(entry.name, reason)
    if command.name != entry.name:
        reason = f"command {entry.name!r}: {where} gives a command named {command.name!r}"
        return unavailable(entry.name, reason)
    return command


def plugin_commands() -> tuple[Command, ...]:
    """The commands of the entry-point group :data:`ENTRY_POINT_GROUP`, sorted by name.

    A name that a built-in command already has is skipped (the built-in wins).
    """
    entries = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    seen: set[str] = set()
    out = []
    for entry in entries:
        if entry.name in _BUILTIN or entry.name in seen:
            continue
        seen.add(entry.name)
        out.append(_load_entry_point(entry))
    return tuple(out)


def all_commands() -> tuple[Command, ...]:
    """Built-in commands first (registration order), then those of other packages."""
    return builtin_commands() + plugin_commands()


def unknown_command_message(name: str, known: list[str]) -> str:
    """The ``error:`` text for ``workbench NAME`` when no command is called NAME."""
    return (
        f"unknown command {name!r}; known: {', '.join(known)}. Commands of other packages "
        f"come from the entry-point group {ENTRY_POINT_GROUP!r}: if {name!r} is one, install "
        "(or reinstall) the package that provides it, e.g. `pip install -e .` in this project"
    )
