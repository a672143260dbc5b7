"""The `rankiq` entry point: subcommand registry, exit codes and torch-free serving commands."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
from rankiq.service import commands as service_commands
from rankiq.service.cli import (
    EXIT_DEPENDENCY,
    EXIT_USAGE,
    Registry,
    _Parser,
    build_parser,
    main,
    require,
)
from rankiq.service.commands import register as service_register
from rankiq.service.errors import MissingDependency
from rankiq.training import commands as training_commands


def _subcommands(parser) -> set[str]:
    for action in parser._actions:  # argparse keeps subparsers as an action
        if action.__class__.__name__ == "_SubParsersAction":
            return set(action.choices)
    return set()


def test_help_lists_serving_and_training_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "inspect" in out and "bench" in out and "train" in out and "simulate" in out


TRAINING_COMMANDS = {"simulate", "panel", "agreement", "train", "evaluate", "export",
                     "train-noref"}
SERVING_COMMANDS = {"inspect", "score", "compare", "qa", "serve", "calibrate", "bench"}


def test_training_commands_come_from_the_entry_point():
    names = _subcommands(build_parser())
    assert names >= SERVING_COMMANDS | TRAINING_COMMANDS
    # they arrive through the plugin group, not from service: service's own provider alone
    # registers none of them, and the group names the training provider
    (ep,) = [e for e in entry_points(group="rankiq.commands") if e.name == "training"]
    assert ep.value == "rankiq.training.commands:register"
    parser = _Parser(prog="rankiq")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    bench = commands.add_parser("bench").add_subparsers(dest="bench", parser_class=_Parser)
    service_register(Registry(commands, bench))
    assert not set(commands.choices) & TRAINING_COMMANDS
    assert set(commands.choices) >= SERVING_COMMANDS
    ep.load()(Registry(commands, bench))
    assert set(commands.choices) >= TRAINING_COMMANDS


def test_every_listed_command_module_exists():
    """A command module listed but missing is an error, not a silently absent command."""
    for modules in (service_commands.COMMAND_MODULES, training_commands.COMMAND_MODULES):
        for name in modules:
            assert hasattr(importlib.import_module(name), "add_commands"), name


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_missing_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == EXIT_USAGE


def test_require_names_the_missing_module_and_the_fix():
    with pytest.raises(MissingDependency) as exc:
        require("surely_not_an_installed_module_xyz", "train")
    msg = str(exc.value)
    assert "surely_not_an_installed_module_xyz" in msg and "make venv" in msg


def test_missing_dependency_exit_code(monkeypatch, capsys):
    import rankiq.service.cli as cli

    def handler(args):
        require("surely_not_an_installed_module_xyz", "demo")

    monkeypatch.setattr(cli, "_resolve", lambda name: handler)
    assert main(["inspect", "whatever"]) == EXIT_DEPENDENCY
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs surely_not_an_installed_module_xyz" in err


def test_service_package_never_imports_torch():
    code = (
        "import sys, importlib, pkgutil\n"
        "import rankiq.service as service\n"
        "n = 0\n"
        "for m in pkgutil.walk_packages(service.__path__, 'rankiq.service.'):\n"
        "    if m.name == 'rankiq.service.app' or '.migrations.' in m.name:\n"
        "        continue  # the BentoML service definition (server tests) and Alembic's\n"
        "        # migration scripts (they run inside alembic only)\n"
        "    importlib.import_module(m.name)\n"
        "    n += 1\n"
        "assert n > 40, n\n"
        "bad = sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')"
        " or k.startswith('rankiq.training'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"service imports {out.stdout.strip()}"
