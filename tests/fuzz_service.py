"""``make fuzz``: the hostile corpus (``helpers_hostile``, fixed seed) and schemathesis (from
the service's own ``/docs.json``) against a live 2-worker server with a token.

Fails (exit 1) on any 5xx, any answer slower than the request timeout, or the marker string in
any answer, QA result, server log line or ``/metrics``. Prints the number of cases of each kind
and of 5xx answers (counted from the server's access log, so schemathesis' cases are counted
too). A few minutes on 2 cores with the defaults.

    python tests/fuzz_service.py [--mutated N] [--examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers_hostile import MARKER, hostile_cases, send  # noqa: E402
from helpers_service import AUTH, TOKEN, start_server  # noqa: E402
from test_service_fuzz import SERVER_ENV, TIMEOUT_S, check_server  # noqa: E402

ACCESS = re.compile(r"\(status=(\d{3}),")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutated", type=int, default=3000, help="byte-mutated inputs")
    ap.add_argument("--examples", type=int, default=200,
                    help="schemathesis examples per operation")
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()
    server = start_server(workers=2, env=SERVER_ENV)
    scratch = tempfile.mkdtemp(prefix="rankiq-fuzz-")  # schemathesis writes its state here
    problems: list[str] = []
    try:
        cases = hostile_cases(seed=args.seed, mutated=args.mutated)
        kinds: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        tasks = []
        t0 = time.monotonic()
        for case in cases:
            status, took, text = send(server.url, case, AUTH)
            kinds[case.name.split("-")[0]] += 1
            statuses[status] += 1
            if status >= 500 or took > TIMEOUT_S or MARKER in text:
                problems.append(f"{case.name}: {status} in {took:.1f} s: {text[:300]}")
            if case.route == "/qa/submit" and status == 200:
                tasks.append(json.loads(text)["task_id"])
        print(f"hostile corpus: {len(cases)} cases in {time.monotonic() - t0:.0f} s "
              f"{dict(kinds)}; answers {dict(sorted(statuses.items()))}", flush=True)
        before = len(ACCESS.findall(server.log(tail=500_000_000)))
        st = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "run", server.url + "/docs.json",
             "--url", server.url, "-H", f"Authorization: Bearer {TOKEN}",
             "--checks", "not_a_server_error", "--max-response-time", str(TIMEOUT_S),
             "--max-examples", str(args.examples), "--seed", str(args.seed),
             "--generation-database", "none", "--no-color", "--workers", "2"],
            capture_output=True, text=True, timeout=3600, cwd=scratch)
        tail = "\n".join(st.stdout.splitlines()[-25:])
        print(tail, flush=True)
        if st.returncode != 0:
            problems.append(f"schemathesis exit {st.returncode}")
        log = server.log(tail=500_000_000)
        codes = Counter(int(c) for c in ACCESS.findall(log))
        st_cases = len(ACCESS.findall(log)) - before
        problems += check_server(server.url, log, tasks)
        fives = sum(n for c, n in codes.items() if c >= 500)
        print(f"schemathesis: {st_cases} requests; all requests {sum(codes.values())}, "
              f"5xx: {fives}; marker leaks: {sum('marker' in p for p in problems)}")
        if fives:
            problems.append(f"{fives} answers 5xx in the access log")
    finally:
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)
    for p in problems:
        print("PROBLEM", p)
    print("fuzz:", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
