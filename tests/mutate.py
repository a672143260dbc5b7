"""`make mutate`: mutation testing of the core modules with cosmic-ray.

Each core module is mutated (one small change at a time: an operator, a comparison, a constant,
a boolean, a loop that never runs...) and the tests that cover it are run against the mutant; a
mutant the tests still pass "survived". The kill rate (killed / tested) per module is printed as
a Markdown table (the numbers of docs/benchmarks.md come from it).

cosmic-ray edits source files in place, so everything runs in a scratch copy of the working tree
(tracked and untracked, not ignored, files), never in the checkout; the copy is imported through
``PYTHONPATH`` (``rankiq/service`` and ``rankiq/training`` link to its folders), subprocesses
included. Operators are a representative subset (one replacement per arithmetic operator rather
than all ten), mutants inside type annotations are skipped (never evaluated: equivalent), and
``--sample N`` tests a seeded random sample of N mutants per module for a
time-limited run (0 = all). The sample depends on the seed and the source alone (mutants are
ordered by place and operator), so runs with the same seed are comparable. Mutants checked by
hand to be equivalent are listed, each with its reason, in :data:`EQUIVALENT_MUTANTS`; they
are left out after sampling (the sample does not move when the list grows).
``--show-survivors`` prints every surviving mutant (file:line, operator, diff).

    .venv/bin/python tests/mutate.py [--modules service/preprocess.py ...] [--sample 40]
        [--seed 1] [--show-survivors]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: module -> the fast tests that cover it (run with -x against each mutant)
TARGETS: dict[str, list[str]] = {
    "service/preprocess.py": ["tests/test_preprocess.py"],
    "service/scoring.py": ["tests/test_scoring.py", "tests/test_public_api.py"],
    "service/models.py": ["tests/test_models.py", "tests/test_models_service.py",
                          "tests/test_public_api.py", "tests/test_scoring.py"],
    "service/readers/agreement.py": ["tests/test_agreement.py", "tests/test_agreement_stats.py"],
    "service/qa/aggregate.py": ["tests/test_qa_aggregate.py"],
    "service/qa/selection.py": ["tests/test_qa_selection.py"],
    "service/io/limits.py": ["tests/test_io_budgets.py", "tests/test_io_archive.py"],
    "service/guard.py": ["tests/test_guard.py",
                         "tests/test_service_bento.py::test_bearer_token_parsing_and_comparison",
                         "tests/test_service_bento.py::test_check_multipart_accepts_valid_forms",
                         "tests/test_service_bento.py::test_check_multipart_rejects"],
}

#: operators left out: the other nine replacements of each arithmetic operator (one is kept),
#: bit shifts and bitwise operators (not used for arithmetic in these modules)
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceBinaryOperator_Add_(Mul|Div)$",
    r"core/ReplaceBinaryOperator_Sub_(Mul|Div)$",
    r"core/ReplaceBinaryOperator_Mul_(Add|Sub)$",
    r"core/ReplaceBinaryOperator_Div_(Add|Sub)$",
    r"core/ReplaceComparisonOperator_.*_(Is|IsNot|In|NotIn)$",
    r"core/ReplaceUnaryOperator_.*_(Invert|UAdd)$",
]


#: Mutants that cannot change behaviour, each checked by hand: (module, line as written, line as
#: mutated, why). Lines are compared without whitespace; a mutant matches only when both lines
#: do, so a later edit of the line brings its mutants back.
EQUIVALENT_MUTANTS: list[tuple[str, str, str, str]] = [
    ("service/preprocess.py", "if (h, w) != (side, side):", "if (h, w) < (side, side):",
     "h, w <= side: the tuples differ exactly when one side is shorter, which is when the "
     "lexicographic < holds"),
    ("service/preprocess.py",
     'y = scipy.fft.ifft2(z, norm="ortho", workers=workers, overwrite_x=True)',
     'y = scipy.fft.ifft2(z, norm="ortho", workers=workers, overwrite_x=False)',
     "z is a temporary of this call: letting the FFT overwrite it only saves memory"),
    ("service/preprocess.py", "return x.astype(np.complex64, copy=False)",
     "return x.astype(np.complex64, copy=True)",
     "a copy instead of the caller's own complex64 array: no caller writes into the result"),
    ("service/preprocess.py", "x = x.astype(np.complex64, copy=False)",
     "x = x.astype(np.complex64, copy=True)",
     "np.stack of its real and imaginary parts copies anyway"),
    *((mod, f"{line}(-1){tail}", f"{line}(-2){tail}",
       "NumPy 2 reads a negative size in reshape as the unknown one")
      for mod, line, tail in (
          ("service/scoring.py", "scores = np.asarray(scores, dtype=np.float32).reshape", ""),
          ("service/models.py", "a = np.log(np.maximum(np.asarray(s1, np.float64).reshape",
           ", self.floor))"),
          ("service/models.py", "b = np.log(np.maximum(np.asarray(s2, np.float64).reshape",
           ", self.floor))"),
          ("service/models.py", "d = np.asarray(s1, np.float64).reshape",
           " - np.asarray(s2, np.float64).reshape(-1)"),
          ("service/models.py",
           "d = np.asarray(s1, np.float64).reshape(-1) - np.asarray(s2, np.float64).reshape",
           ""))),
    ("service/qa/aggregate.py", "scores = np.asarray(scores, dtype=np.float64).reshape(-1)",
     "scores = np.asarray(scores, dtype=np.float64).reshape(-2)",
     "NumPy 2 reads a negative size in reshape as the unknown one"),
    ("service/qa/aggregate.py", "valid = ~blank & np.isfinite(scores)",
     "valid = ~blank * np.isfinite(scores)", "the product of boolean arrays is their logical and"),
    ("service/qa/selection.py",
     "if len(modes) != 1 or not isinstance(doc[modes[0]], dict) or not doc[modes[0]]:",
     "if len(modes) != 1 or not isinstance(doc[modes[-1]], dict) or not doc[modes[0]]:",
     "read only once len(modes) == 1: its first is its last"),
    ("service/qa/selection.py",
     'conds = tuple(Condition(k, _compile(v, f"{where}.{k}")) for k, v in doc[modes[0]].items())',
     'conds = tuple(Condition(k, _compile(v, f"{where}.{k}")) for k, v in doc[modes[-1]].items())',
     "modes holds exactly one mode (checked just above): its first is its last"),
    ("service/guard.py",
     '"on_part_data": on_part_data, "on_end": lambda: ended.append(True),',
     '"on_part_data": on_part_data, "on_end": lambda: ended.append(False),',
     "only whether the list is empty is read, never its items"),
    *(("service/scoring.py", "grad = np.abs(s[:, 0] - s[:, 1]) / (2 * h)  # (S, F)",
       f"grad = np.abs(s[:, 0] - s[:, 1]) / ({step})  # (S, F)",
       "a constant factor of every gradient cancels: each map is scaled to sum to the score")
      for step in ("1 * h", "3 * h", "2 / h")),
    ("service/scoring.py",
     "display = (np.abs(img[:, 0]) if img.shape[1] == 1",
     "display = (np.abs(img[:, -1]) if img.shape[1] == 1",
     "with one channel, channel -1 is channel 0"),
    ("service/models.py",
     "except (OSError, ValueError, KeyError, TypeError) as exc:",
     "except (CosmicRayTestingException, ValueError, KeyError, TypeError) as exc:",
     "classifier.json was read in full by the SHA-256 check just before: an OSError here needs "
     "the file to vanish in between (a race no test can stage)"),
    ("service/qa/selection.py",
     "except (IndexError, TypeError, ValueError):",
     "except (IndexError, CosmicRayTestingException, ValueError):",
     "_as_values returns strings only: float() of a string raises ValueError, never TypeError"),
    ("service/qa/selection.py",
     "return Rule(doc[\"reason\"], conds, modes[0])",
     "return Rule(doc[\"reason\"], conds, modes[-1])",
     "modes holds exactly one mode (checked just above): its first is its last"),
    *(("service/guard.py",
       "MAX_VALUE_BYTES = 64  # non-file form values are short flags",
       f"MAX_VALUE_BYTES = {n}  # non-file form values are short flags",
       "python-multipart passes a part's data in one callback per write() and the guard writes "
       "the body once, so the cap (a memory bound for data split over calls) never cuts a value")
      for n in (63, 65)),
]


def _squash(line: str) -> str:
    return "".join(line.split())


def copy_tree(dst: Path) -> None:
    """The working tree (tracked and untracked, not ignored) into ``dst``, importable."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dst / src.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / src.relative_to(REPO))
    (dst / "rankiq" / "service").symlink_to("../service")
    (dst / "rankiq" / "training").symlink_to("../training")


def config(module: str, tests: list[str], timeout: float) -> str:
    """A cosmic-ray TOML config for one module."""
    cmd = (f"{sys.executable} -m pytest -x -q -p no:randomly -p no:cacheprovider "
           f"-o addopts='' {' '.join(tests)}")
    excluded = ", ".join(f"'{e}'" for e in EXCLUDED_OPERATORS)
    return (f"[cosmic-ray]\nmodule-path = \"{module}\"\ntimeout = {timeout}\n"
            f"excluded-modules = []\ntest-command = \"{cmd}\"\n\n"
            f"[cosmic-ray.distributor]\nname = \"local\"\n\n"
            f"[cosmic-ray.filters.operators-filter]\nexclude-operators = [{excluded}]\n")


def _annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``(start, end)`` (line, column) of every annotation in a module (with ``from __future__
    import annotations`` they are never evaluated, so their mutants are equivalent)."""
    import ast

    nodes: list[ast.expr] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            nodes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
    return [((n.lineno, n.col_offset), (n.end_lineno or n.lineno, n.end_col_offset or 0))
            for n in nodes]


def _listed_equivalent(tree: Path, m: object) -> bool:
    """Whether mutant ``m`` (a MutationSpec) is one of :data:`EQUIVALENT_MUTANTS`."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    module, line = str(m.module_path), m.start_pos[0]  # type: ignore[attr-defined]
    source = (tree / module).read_text(encoding="utf-8")
    written = _squash(source.splitlines()[line - 1])
    wanted = [_squash(after) for mod, before, after, _ in EQUIVALENT_MUTANTS
              if mod == module and _squash(before) == written]
    if not wanted:
        return False
    op = cosmic_ray.plugins.get_operator(m.operator_name)(  # type: ignore[attr-defined]
        **(m.operator_args or {}))  # type: ignore[attr-defined]
    mutated = mutate_code(source, op, m.occurrence)  # type: ignore[attr-defined]
    return mutated is not None and _squash(mutated.splitlines()[line - 1]) in wanted


def skip_equivalent(db: Path, tree: Path, *, listed: bool = False) -> int:
    """Mark mutants inside annotations (equivalent by construction) skipped, or with
    ``listed`` those of :data:`EQUIVALENT_MUTANTS` (after sampling, so that the list does not
    move the sample); returns how many."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans: dict[str, list[tuple[tuple[int, int], tuple[int, int]]]] = {}
    skipped = 0
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        for item in list(wdb.pending_work_items):
            for m in item.mutations:
                key = str(m.module_path)
                if key not in spans:
                    spans[key] = _annotation_spans(tree / key)
                pos = tuple(m.start_pos)
                if (_listed_equivalent(tree, m) if listed
                        else any(a <= pos < b for a, b in spans[key])):
                    wdb.set_result(item.job_id,
                                   WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                    skipped += 1
                    break
    return skipped


def sample(db: Path, n: int, seed: int) -> None:
    """Keep a seeded random sample of ``n`` pending mutants: the others are marked skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(db), WorkDB.Mode.open) as wdb:
        # job ids are random UUIDs drawn afresh by every ``cosmic-ray init``: sort by where the
        # mutant is and what it does, so that a seed picks the same mutants on every run
        pending = [item.job_id for item in sorted(wdb.pending_work_items, key=_mutant_key)]
        if n <= 0 or len(pending) <= n:
            return
        keep = set(random.Random(seed).sample(pending, n))
        for job in pending:
            if job not in keep:
                wdb.set_result(job, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def _mutant_key(item: object) -> tuple:
    """A stable sort key of a work item: module, position, operator, occurrence."""
    return tuple((str(m.module_path), tuple(m.start_pos), m.operator_name, m.occurrence)
                 for m in item.mutations)  # type: ignore[attr-defined]


def survivors(db: Path) -> list[str]:
    """Each surviving mutant as ``file:line operator`` and its diff."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    out = []
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        for item, result in sorted(wdb.completed_work_items, key=lambda r: _mutant_key(r[0])):
            if (result.worker_outcome == WorkerOutcome.NORMAL
                    and result.test_outcome == TestOutcome.SURVIVED):
                m = item.mutations[0]
                out.append(f"{m.module_path}:{m.start_pos[0]} {m.operator_name} "
                           f"(occurrence {m.occurrence})\n{result.diff or ''}")
    return out


def tally(db: Path) -> tuple[int, int, int]:
    """``(killed, survived, incompetent-or-timeout)`` over the tested mutants."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed = survived = other = 0
    with use_db(str(db), WorkDB.Mode.open) as wdb:
        for _, result in wdb.results:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome == WorkerOutcome.NORMAL:
                if result.test_outcome == TestOutcome.SURVIVED:
                    survived += 1
                else:
                    killed += 1
            else:  # a timeout or a crash of the mutated code counts as detected
                other += 1
    return killed, survived, other


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", nargs="*", default=list(TARGETS), help="modules to mutate")
    ap.add_argument("--sample", type=int, default=0, help="mutants per module (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant's tests")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    ap.add_argument("--show-survivors", action="store_true",
                    help="print each surviving mutant (file:line, operator, diff)")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="rankiq-mutate-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    copy_tree(tree)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1",
           "RANKIQ_FFT_WORKERS": "1"}
    cr = str(Path(sys.executable).parent / "cosmic-ray")
    filt = str(Path(sys.executable).parent / "cr-filter-operators")
    rows = []
    try:
        for module in args.modules:
            name = module.replace("/", "_").removesuffix(".py")
            cfg, db = work / f"{name}.toml", work / f"{name}.sqlite"
            cfg.write_text(config(module, TARGETS[module], args.timeout))
            db.unlink(missing_ok=True)
            t0 = time.monotonic()
            subprocess.run([cr, "init", str(cfg), str(db)], cwd=tree, env=env, check=True)
            subprocess.run([filt, str(db), str(cfg)], cwd=tree, env=env, check=True)
            equivalent = skip_equivalent(db, tree)
            sample(db, args.sample, args.seed)
            listed = skip_equivalent(db, tree, listed=True)
            subprocess.run([cr, "exec", str(cfg), str(db)], cwd=tree, env=env, check=True)
            killed, survived, other = tally(db)
            if args.show_survivors:
                for text in survivors(db):
                    print(f"SURVIVED {text}", flush=True)
            tested = killed + survived + other
            rate = 100.0 * (killed + other) / tested if tested else float("nan")
            rows.append((module, tested, killed + other, survived, rate,
                         time.monotonic() - t0))
            print(f"{module}: {killed + other}/{tested} killed ({rate:.1f} %); "
                  f"{equivalent} mutants in annotations and {listed} listed equivalent "
                  "ones skipped", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| module | mutants tested | killed | survived | kill rate | time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for module, tested, k, s, rate, secs in rows:
        print(f"| `{module}` | {tested} | {k} | {s} | {rate:.1f} % | {secs:.0f} |")
    total = sum(r[1] for r in rows)
    killed_all = sum(r[2] for r in rows)
    if total:
        print(f"| all | {total} | {killed_all} | {total - killed_all} | "
              f"{100.0 * killed_all / total:.1f} % | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
