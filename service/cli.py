"""The ``rankiq`` command line: one entry point, subcommands contributed by providers.

``service`` owns the entry point and the serving commands (``inspect``, ``score``, ``compare``,
``qa``, ``serve``...). Training commands live in ``training`` and are contributed through the
``rankiq.commands`` entry-point group, so ``service`` never imports ``training`` (the dependency
only runs the other way). Handlers are named as ``"module:function"`` strings and imported only
when their subcommand runs, so ``rankiq --help`` is fast and never needs torch.

Exit codes: 0 success, 1 usage error, 2 bad input (one-line message), 3 missing optional
dependency, 70 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from rankiq.service.commands.registry import Registry, require  # noqa: F401 - re-exported
from rankiq.service.errors import MissingDependency, RankIQError

EXIT_USAGE = 1
EXIT_INPUT = 2
EXIT_DEPENDENCY = 3
EXIT_INTERNAL = 70


class _Parser(argparse.ArgumentParser):
    """argparse that exits 1 (not 2) on usage errors, keeping 2 for bad input."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _providers() -> list[Callable[[Registry], None]]:
    from rankiq.service.commands import register as service_register

    providers: list[Callable[[Registry], None]] = [service_register]
    for ep in entry_points(group="rankiq.commands"):
        try:
            providers.append(ep.load())
        except ImportError as exc:  # a broken optional provider must not break serving commands
            print(f"rankiq: warning: commands from {ep.name!r} unavailable: {exc}", file=sys.stderr)
    return providers


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every provider's subcommands."""
    parser = _Parser(
        prog="rankiq",
        description="RankIQ: a learned MRI image-quality metric designed for radiologists' "
                    "rankings (shipped models: simulated readers calibrated to the paper's "
                    "agreement).",
    )
    from rankiq.service import __version__

    parser.add_argument("--version", action="version", version=f"rankiq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    bench_parser = commands.add_parser("bench", help="measure speed and memory (prints a table)")
    bench = bench_parser.add_subparsers(dest="bench", metavar="WHAT", parser_class=_Parser)
    bench.required = True
    registry = Registry(commands, bench)
    for provider in _providers():
        provider(registry)
    return parser


def _resolve(handler: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = handler.partition(":")
    return getattr(importlib.import_module(module), func)


def _debug() -> bool:
    from rankiq.service.settings import ServiceSettings

    try:
        return ServiceSettings.from_env().debug
    except ValueError:  # another malformed setting: no traceback then
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rankiq``; returns the exit code (also used by the console script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(_resolve(args.handler)(args) or 0)
    except MissingDependency as exc:
        print(f"rankiq {args.command}: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "onnx", "sigpy", "nilearn",
                                                    "nibabel", "efficientnet_pytorch",
                                                    "matplotlib"}:
            print(
                f"rankiq {args.command}: needs the training dependencies ({exc.name} is missing); "
                "install them with `make venv` or `pip install -c constraints.txt '.[train]'`",
                file=sys.stderr,
            )
            return EXIT_DEPENDENCY
        raise
    except RankIQError as exc:
        print(f"rankiq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"rankiq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback unless asked
        if _debug():
            raise
        print(
            f"rankiq {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set RANKIQ_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
