"""``rankiq readers serve|invite|export``: the multi-reader study web app (no torch)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankiq.service.commands.registry import Registry

DB_HELP = ("study database URL (default sqlite:///rankiq-readers.db; PostgreSQL: "
           "postgresql+psycopg://user@host/db)")


def add_commands(reg: Registry) -> None:
    """Add ``rankiq readers`` and its subcommands."""
    from rankiq.service.readers.settings import DEFAULT_DB, ORDERS, Settings

    d = Settings()
    top = reg.command("readers", "rankiq.service.commands.readers_cmd:usage",
                      "run a reader study: pairwise rankings (and Likert scores) from many "
                      "readers in a web page")
    sub = top.add_subparsers(dest="readers_command", metavar="ACTION")

    s = sub.add_parser("serve", help="serve the study's reader and admin pages",
                       description="serve the study's reader and admin pages")
    s.set_defaults(handler="rankiq.service.commands.readers_cmd:serve")
    s.add_argument("--pairs", required=True, help="pairs HDF5 file (from `rankiq simulate`)")
    s.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    s.add_argument("--readers-per-pair", type=int, default=d.readers_per_pair,
                   help=f"distinct readers per pair (default {d.readers_per_pair})")
    s.add_argument("--repeat-fraction", type=float, default=d.repeat_fraction,
                   help="repeats per answered pair, for intra-reader agreement "
                        f"(default {d.repeat_fraction})")
    s.add_argument("--repeat-gap", type=int, default=d.repeat_gap,
                   help=f"items between a pair and its repeat (default {d.repeat_gap})")
    s.add_argument("--reference", choices=("shown", "hidden"), default=d.reference,
                   help=f"show the reference beside the images (default {d.reference})")
    s.add_argument("--likert-pairs", type=int, default=d.likert_pairs,
                   help="pairs whose two images Likert readers score (default 0 = all)")
    s.add_argument("--likert-criteria", default=None,
                   help="text file with the Likert scale's criteria, one line per level")
    s.add_argument("--order", choices=ORDERS, default=d.order,
                   help="random, or active learning: disagreement (readers' votes) or "
                        "priority (a model's uncertainty from --priority)")
    s.add_argument("--priority", help="CSV pair_id,priority (higher first) for --order priority")
    s.add_argument("--seed", type=int, default=d.seed, help="left/right and order seed")

    i = sub.add_parser("invite", help="create a reader (or admin) token; prints it once",
                       description="create a reader (or admin) token; prints it once")
    i.set_defaults(handler="rankiq.service.commands.readers_cmd:invite")
    i.add_argument("name", help="reader name as it appears in the exports (e.g. R1)")
    i.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    i.add_argument("--task", choices=("rank", "likert", "admin"), default="rank",
                   help="rank pairs (default), score single images (likert), or admin")

    e = sub.add_parser("export", help="write rankings.csv, likert.csv and study.json",
                       description="write rankings.csv, likert.csv and study.json")
    e.set_defaults(handler="rankiq.service.commands.readers_cmd:export")
    e.add_argument("--db", default=DEFAULT_DB, help=DB_HELP)
    e.add_argument("--out", required=True, help="folder to write")


def usage(args: argparse.Namespace) -> int:
    """``rankiq readers`` without an action."""
    print("rankiq readers: choose an action: serve, invite or export (see --help)",
          file=sys.stderr)
    return 1


def serve(args: argparse.Namespace) -> int:
    """``rankiq readers serve``."""
    import uvicorn
    from rankiq.service.readers.app import create_app
    from rankiq.service.readers.db import StudyDB, redact
    from rankiq.service.readers.pairsource import PairSource
    from rankiq.service.readers.settings import DEFAULT_CRITERIA, Settings, StudyError
    from rankiq.service.readers.study import configure, read_priorities

    criteria = DEFAULT_CRITERIA
    if args.likert_criteria:
        try:
            with open(args.likert_criteria, encoding="utf-8") as fh:
                criteria = fh.read().strip() or DEFAULT_CRITERIA
        except (OSError, UnicodeDecodeError):
            raise StudyError(422, "bad_criteria", "--likert-criteria: cannot read the file") \
                from None
    priorities = read_priorities(args.priority) if args.priority else None
    settings = Settings(
        readers_per_pair=args.readers_per_pair, repeat_fraction=args.repeat_fraction,
        repeat_gap=args.repeat_gap, reference=args.reference, likert_pairs=args.likert_pairs,
        likert_criteria=criteria, order=args.order,
        priority_source=None if not args.priority else "the --priority CSV",
        priorities=priorities, seed=args.seed).validate()
    if not 0 < args.port < 65536:
        raise StudyError(422, "bad_port", "--port must be 1-65535")
    source = PairSource(args.pairs)
    db = StudyDB(args.db)
    configure(db, source.fingerprint, source.n, settings)
    app = create_app(db, source)
    print(f"rankiq readers: {source.n} pairs, database {redact(args.db)}; "
          f"serving on http://{args.host}:{args.port}/", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, access_log=False,
                    log_level="warning", timeout_graceful_shutdown=5)
    finally:
        db.close()
        source.close()
    return 0


def invite(args: argparse.Namespace) -> int:
    """``rankiq readers invite``: print a new token (stored hashed only)."""
    from rankiq.service.readers.db import StudyDB
    from rankiq.service.readers.study import invite as make

    db = StudyDB(args.db)
    try:
        token = make(db, args.name, args.task)
    finally:
        db.close()
    print(token)
    print(f"rankiq readers: token for {args.name} ({args.task}); it is shown only now",
          file=sys.stderr)
    return 0


def export(args: argparse.Namespace) -> int:
    """``rankiq readers export``."""
    from rankiq.service.readers.db import StudyDB
    from rankiq.service.readers.study import export as write

    db = StudyDB(args.db)
    try:
        info = write(db, args.out)
    finally:
        db.close()
    print(f"wrote {', '.join(info['files'])} to {args.out}: {info['n_votes']} votes "
          f"({info['n_skips']} skips), {info['n_likert_scores']} Likert scores; "
          f"{info['order']}")
    return 0
