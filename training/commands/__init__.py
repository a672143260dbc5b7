"""Training-side subcommands of ``rankiq``, contributed through the ``rankiq.commands``
entry-point group (so ``service`` never imports ``training``). Registration imports nothing
heavy; torch is imported by handlers only, and a missing torch gives a one-line message."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rankiq.service.commands import register_modules

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry

COMMAND_MODULES = (
    "rankiq.training.commands.simulate_cmd",  # rankiq simulate / bench simulate
    "rankiq.training.commands.panel_cmd",  # rankiq panel / agreement
    "rankiq.training.commands.train_cmd",  # rankiq train / evaluate / bench train
    "rankiq.training.commands.export_cmd",  # rankiq export / bench score
    "rankiq.training.commands.noref_cmd",  # rankiq train-noref
    "rankiq.training.commands.experiment_cmd",  # rankiq experiment denoise / recon
)


def register(reg: Registry) -> None:
    """Add the training commands."""
    register_modules(reg, COMMAND_MODULES)
