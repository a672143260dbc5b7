"""What a command provider gets: the :class:`Registry` to add subcommands to, and
:func:`require` for optional dependencies.

Kept apart from :mod:`rankiq.service.cli` (which builds the parser and runs the handlers) so
command modules never import the entry point: the dependency runs one way, cli -> commands.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from rankiq.service.errors import MissingDependency


class Registry:
    """What a provider gets to add commands: the top-level and the ``bench`` subparsers."""

    def __init__(self, commands: argparse._SubParsersAction[Any],
                 bench: argparse._SubParsersAction[Any]) -> None:
        self._commands = commands
        self._bench = bench

    def command(self, name: str, handler: str, help: str) -> argparse.ArgumentParser:
        """Add ``rankiq NAME``; ``handler`` is ``"module:function"`` taking the parsed args."""
        p: argparse.ArgumentParser = self._commands.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    def bench(self, name: str, handler: str, help: str) -> argparse.ArgumentParser:
        """Add ``rankiq bench NAME``."""
        p: argparse.ArgumentParser = self._bench.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p


def require(module: str, command: str) -> None:
    """Raise :class:`MissingDependency` with install advice when ``module`` cannot be imported."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"`rankiq {command}` needs {module}, which is not installed: run `make venv` "
            "or `pip install -c constraints.txt '.[train]'`"
        ) from exc
