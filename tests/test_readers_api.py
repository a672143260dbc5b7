"""The reader-study app over HTTP, as clients would use it: security and bad input, ten
concurrent readers, a SIGKILLed server (SQLite and a real PostgreSQL), and the CLI export."""

from __future__ import annotations

import csv
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from helpers_pairs import write_synthetic_pairs
from helpers_readers import RANKIQ, ReaderServer, invite, invite_cli, postgres
from rankiq.service.readers.rankings import read_likert

pytestmark = pytest.mark.slow


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    return write_synthetic_pairs(tmp_path / "pairs.h5", n_pairs=8, size=32, seed=3)


def test_security_and_bad_input(tmp_path: Path, pairs: Path) -> None:
    db = f"sqlite:///{tmp_path / 'study.db'}"
    a, b = invite_cli(db, "R1"), invite(db, "R2")
    admin = invite_cli(db, "boss", "admin")
    lk = invite(db, "R1", "likert")  # the same reader also scores single images
    with ReaderServer(pairs, db, "--repeat-fraction", "0", "--likert-pairs", "3") as srv:
        u = srv.url
        r = requests.get(u + "/api/next", headers=_bearer("rq_unknown"))
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert requests.get(u + "/api/next").status_code == 401
        assert requests.post(u + "/login", data={"token": "rq_unknown"},
                             allow_redirects=False).status_code == 401
        assert requests.get(u + "/api/admin/summary", headers=_bearer(a)).status_code == 403
        assert requests.get(u + "/api/next", headers=_bearer(admin)).status_code == 403
        item_a = requests.get(u + "/api/next", headers=_bearer(a)).json()["item"]
        # a reader cannot see or vote on another reader's item
        vote = {"presentation": item_a["id"], "nonce": item_a["nonce"], "choice": "left"}
        r = requests.post(u + "/api/vote", headers=_bearer(b), json=vote)
        assert r.status_code == 403 and r.json()["error"] == "not_assigned"
        assert requests.get(u + item_a["images"]["left"], headers=_bearer(b)).status_code == 403
        for path in ("/api/image/99999999999999999999999/left", "/api/image/x/left",
                     "/api/image/1/elsewhere", "/api/admin/export/../x"):
            r = requests.get(u + path, headers=_bearer(a))
            assert 400 <= r.status_code < 500 and "error" in r.json(), path
        for bad in ({"presentation": item_a["id"]}, {**vote, "choice": "up"},
                    {**vote, "seconds": -1}, {**vote, "extra": 1}, [1, 2], "x",
                    {**vote, "presentation": 2**70}):
            r = requests.post(u + "/api/vote", headers=_bearer(a), json=bad)
            assert r.status_code == 422 and r.json()["error"] == "malformed_vote", bad
        for raw in ('{"presentation": 1, "nonce": "x", "choice": "left", "seconds": NaN}',
                    '{"presentation": 1, "nonce": "x", "choice": "left", "seconds": Infinity}'):
            r = requests.post(u + "/api/vote", data=raw, headers={
                **_bearer(a), "Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["error"] == "malformed_vote"
        r = requests.post(u + "/api/vote", headers=_bearer(a), json={**vote, "nonce": "forged"})
        assert r.status_code == 403 and r.json()["error"] == "bad_nonce"
        # cookie sessions need the CSRF header for a vote
        s = requests.Session()
        assert s.post(u + "/login", data={"token": a}).url.endswith("/read")
        r = s.post(u + "/api/vote", json=vote)
        assert r.status_code == 403 and r.json()["error"] == "csrf"
        assert requests.post(u + "/api/vote", headers=_bearer(a), json=vote).status_code == 200
        r = requests.post(u + "/api/vote", headers=_bearer(a), json=vote)  # replayed
        assert r.status_code == 409 and r.json()["error"] == "replayed"
        mine = requests.get(u + "/api/me", headers=_bearer(b)).json()["votes"]
        assert mine == []  # R2 sees none of R1's votes
        export = requests.get(u + "/api/admin/export/rankings.csv", headers=_bearer(admin))
        assert export.status_code == 200
        assert export.text.count("\nR1,") == 1  # recorded once
        assert "content-security-policy" in {k.lower() for k in export.headers}
        # Likert mode: single images scored 1-5, both images of the 3 Likert pairs, no repeat
        hl = _bearer(lk)
        n = 0
        while not (nxt := requests.get(u + "/api/next", headers=hl).json())["done"]:
            it = nxt["item"]
            assert set(it["images"]) == {"single", "reference"}
            img = requests.get(u + it["images"]["single"], headers=hl)
            assert img.headers["content-type"] == "image/png"
            body = {"presentation": it["id"], "nonce": it["nonce"]}
            r = requests.post(u + "/api/vote", headers=hl, json={**body, "choice": "left"})
            assert r.status_code == 422
            score = 1 + n % 5
            assert requests.post(u + "/api/vote", headers=hl,
                                 json={**body, "choice": score}).status_code == 200
            n += 1
        assert n == 6
        likert = requests.get(u + "/api/admin/export/likert.csv", headers=_bearer(admin))
    path = tmp_path / "likert.csv"
    path.write_text(likert.text)
    scores = read_likert(path)
    assert len(scores) == 6 and {s.reader for s in scores} == {"R1"}
    assert len({s.pair_id for s in scores}) == 3 and {s.image for s in scores} == {1, 2}


def test_ten_concurrent_readers(tmp_path: Path, pairs: Path) -> None:
    db = f"sqlite:///{tmp_path / 'study.db'}"
    tokens = {f"R{i}": invite(db, f"R{i}") for i in range(1, 11)}
    acked: dict[str, list[int]] = {r: [] for r in tokens}
    shown: dict[str, list[int]] = {r: [] for r in tokens}
    errors: list[str] = []
    with ReaderServer(pairs, db, "--readers-per-pair", "4", "--repeat-fraction", "0.25",
                      "--repeat-gap", "1") as srv:
        def reader(name: str) -> None:
            h = _bearer(tokens[name])
            try:
                while True:
                    nxt = requests.get(srv.url + "/api/next", headers=h, timeout=30).json()
                    if nxt["done"]:
                        return
                    it = nxt["item"]
                    shown[name].append(it["id"])
                    r = requests.post(srv.url + "/api/vote", headers=h, timeout=30, json={
                        "presentation": it["id"], "nonce": it["nonce"], "choice": "left"})
                    if r.status_code != 200:
                        errors.append(r.text)
                        return
                    acked[name].append(it["id"])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=reader, args=(n,)) for n in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        admin = invite(db, "boss", "admin")
        summary = requests.get(srv.url + "/api/admin/summary", headers=_bearer(admin)).json()
    assert errors == []
    votes = _rows(Path(_export(db, tmp_path / "out")) / "rankings.csv")
    assert len(votes) == sum(len(v) for v in acked.values())
    by_reader: dict[str, list[int]] = {}
    for v in votes:
        by_reader.setdefault(v["reader"], []).append(int(v["pair_id"]))
    for name, seq in by_reader.items():
        assert all(x != y for x, y in zip(seq, seq[1:], strict=False)), name
    firsts = {(v["reader"], v["pair_id"]) for v in votes}
    per_pair = {p: sum(1 for _, q in firsts if q == p) for _, p in firsts}
    assert set(per_pair.values()) == {4} and len(per_pair) == 8  # every pair, 4 readers
    assert summary["pairs_complete"] == 8


def _export(db: str, out: Path) -> Path:
    subprocess.run([*RANKIQ, "readers", "export", "--db", db, "--out", str(out)], check=True,
                   capture_output=True)
    return out


def _vote(srv: ReaderServer, h: dict[str, str]) -> int:
    it = requests.get(srv.url + "/api/next", headers=h).json()["item"]
    r = requests.post(srv.url + "/api/vote", headers=h, json={
        "presentation": it["id"], "nonce": it["nonce"], "choice": "similar"})
    assert r.status_code == 200
    return int(it["id"])


def _kill_between_votes(db: str, tmp_path: Path, pairs: Path) -> None:
    h = _bearer(invite(db, "R1"))
    srv = ReaderServer(pairs, db, "--repeat-fraction", "0").start()
    acked = [_vote(srv, h) for _ in range(3)]
    open_item = requests.get(srv.url + "/api/next", headers=h).json()["item"]
    srv.kill()  # SIGKILL right after the acknowledgements, an item open
    srv = ReaderServer(pairs, db, "--repeat-fraction", "0", port=srv.port).start()
    try:
        resumed = requests.get(srv.url + "/api/next", headers=h).json()["item"]
        assert resumed["id"] == open_item["id"]  # the reader resumes where they stopped
        mine = requests.get(srv.url + "/api/me", headers=h).json()["votes"]
        assert len(mine) == len(acked) == 3
        acked.append(_vote(srv, h))
    finally:
        srv.kill()
    rows = _rows(_export(db, tmp_path / "out") / "rankings.csv")
    assert [r["outcome"] for r in rows] == ["similar"] * len(acked)


def test_sigkill_loses_no_acknowledged_vote_sqlite(tmp_path: Path, pairs: Path) -> None:
    _kill_between_votes(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, pairs)


def test_sigkill_loses_no_acknowledged_vote_postgres(tmp_path: Path, pairs: Path) -> None:
    try:
        pg = postgres()
        url = pg.__enter__()
    except FileNotFoundError as exc:
        pytest.skip(f"PostgreSQL binaries missing: {exc}")
    try:
        _kill_between_votes(url, tmp_path, pairs)
    finally:
        pg.__exit__(None, None, None)
