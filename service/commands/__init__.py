"""Serving-side subcommands of ``rankiq``.

Each module in ``COMMAND_MODULES`` exposes ``add_commands(reg)``; it must import nothing heavy
at module level (handlers import what they need when their command runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry

COMMAND_MODULES = (
    "rankiq.service.commands.inspect_cmd",  # rankiq inspect
    "rankiq.service.commands.score_cmd",  # rankiq score / compare
    "rankiq.service.commands.serve_cmd",  # rankiq serve
    "rankiq.service.commands.qa_cmd",  # rankiq qa
    "rankiq.service.commands.calibrate_cmd",  # rankiq calibrate
    "rankiq.service.commands.readers_cmd",  # rankiq readers serve / invite / export
    "rankiq.service.bench.serve",  # rankiq bench serve
    "rankiq.service.bench.qa",  # rankiq bench qa
)


def register_modules(reg: Registry, modules: tuple[str, ...]) -> None:
    """Import each command module and let it add its subcommands."""
    for name in modules:  # a listed module that is missing is a bug: never skipped silently
        importlib.import_module(name).add_commands(reg)


def register(reg: Registry) -> None:
    """Add the serving commands."""
    register_modules(reg, COMMAND_MODULES)
