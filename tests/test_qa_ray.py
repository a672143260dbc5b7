"""`rankiq qa --engine ray` on a real two-node Ray cluster of local processes (`ray start --head`
plus `ray start --address`, each with 1 CPU and its own temp dir): the same outputs as the local
engine row for row, a resume after the driver is SIGKILLed, and a worker node SIGKILLed midway.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_qa import MODEL_DIR, build, rankiq, read_csv, read_json

ray = pytest.importorskip("ray")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL_DIR / "metadata.json").exists(),
                       reason="models/iqnet-noref not exported yet"),
]
SERIES = 12


@pytest.fixture(scope="module")
def cluster():
    from rankiq.service.qa.ray_engine import LocalRayCluster

    with LocalRayCluster(cpus=1) as c:
        c.start(nodes=2)
        yield c


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A small archive (with a localizer, a derived map, a non-image and an unreadable file)
    and the local engine's outputs for it."""
    root = tmp_path_factory.mktemp("ray-qa")
    truth = build(root, SERIES, seed=11, size=256, slices=(40, 48), extras=True)
    local = rankiq("qa", str(root / "archive"), "--out", str(root / "local"), "--threads", "1",
                   "--no-progress")
    assert local.returncode == 0, local.stderr
    return {"root": root, "truth": truth, "local": root / "local"}


def _same_outputs(out: Path, local: Path) -> None:
    """qa.csv and failed.csv byte for byte, qa.json equal but for the number of runs."""
    assert read_csv(out / "qa.csv") == read_csv(local / "qa.csv")
    assert (out / "qa.csv").read_bytes() == (local / "qa.csv").read_bytes()
    assert (out / "failed.csv").read_bytes() == (local / "failed.csv").read_bytes()
    a, b = read_json(out / "qa.json"), read_json(local / "qa.json")
    a["summary"].pop("runs"), b["summary"].pop("runs")
    assert a == b
    assert (out / "report.html").exists()


def _run(cluster, *args: str) -> subprocess.CompletedProcess:
    """`rankiq ARGS` as a driver of ``cluster`` (its auth token in the environment)."""
    env = {**os.environ, **cluster.driver_env, "OMP_NUM_THREADS": "1", "RANKIQ_FFT_WORKERS": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "rankiq"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _start(archive: dict, out: Path, cluster) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "rankiq"
    env = {**os.environ, **cluster.driver_env, "OMP_NUM_THREADS": "1",
           "RANKIQ_FFT_WORKERS": "1"}
    return subprocess.Popen([str(exe), "qa", str(archive["root"] / "archive"), "--out", str(out),
                             "--engine", "ray", "--address", cluster.address, "--threads", "1",
                             "--no-progress", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _wait_done(proc: subprocess.Popen, journal: Path, at_least: int, timeout: float = 120) -> int:
    """Poll the journal until ``at_least`` series are done; returns how many are."""
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            try:
                with sqlite3.connect(journal, timeout=1) as db:
                    done = db.execute("SELECT COUNT(*) FROM series WHERE status = 'done'"
                                      ).fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= at_least:
                return done
        time.sleep(0.05)
    return done


def _scoring_on(cluster, node) -> bool:
    """Whether an actor process of ``node`` is scoring a series now (Ray titles a busy actor
    process ``ray::ScorerActor.score``)."""
    for pid in cluster.processes(node):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ScorerActor.score"):
                return True
        except OSError:
            continue
    return False


def test_ray_engine_on_two_nodes_matches_the_local_engine_row_for_row(archive, cluster, tmp_path):
    out = tmp_path / "ray"
    r = _run(cluster, "qa", str(archive["root"] / "archive"), "--out", str(out), "--engine",
             "ray", "--address", cluster.address, "--threads", "1", "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["engine"] == "ray" and s["scored_now"] == SERIES
    # both nodes scored (a third actor may have waited for a node that another test killed,
    # until the head noticed)
    assert s["ray"]["nodes"] == 2
    _same_outputs(out, archive["local"])
    # resuming a finished run on the other engine scores nothing and writes the same reports
    again = rankiq("qa", str(archive["root"] / "archive"), "--out", str(out), "--resume",
                   "--no-progress", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["scored_now"] == 0
    _same_outputs(out, archive["local"])


def test_ray_engine_errors_are_one_line(archive, tmp_path):
    bad = rankiq("qa", str(archive["root"] / "archive"), "--out", str(tmp_path / "a"),
                 "--address", "127.0.0.1:1")
    assert bad.returncode == 2 and "--address needs --engine ray" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    web = rankiq("qa", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--out",
                 str(tmp_path / "b"), "--engine", "ray")
    assert web.returncode == 2 and "--engine ray" in web.stderr


def test_driver_killed_midway_resumes_without_rescoring(archive, cluster, tmp_path):
    out = tmp_path / "ray"
    journal = out / "journal.sqlite"
    proc = _start(archive, out, cluster)
    try:
        _wait_done(proc, journal, 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    with sqlite3.connect(journal) as db:
        before = dict(db.execute("SELECT series_key, result FROM series WHERE status = 'done'"))
    assert 2 <= len(before) < SERIES, f"kill came too late: {len(before)} of {SERIES} done"

    resumed = _run(cluster, "qa", str(archive["root"] / "archive"), "--out", str(out),
                   "--resume", "--engine", "ray", "--address", cluster.address, "--threads", "1",
                   "--no-progress", "--json")
    assert resumed.returncode == 0, resumed.stderr
    s = json.loads(resumed.stdout)
    assert s["scored_before"] == len(before) and s["scored_now"] == SERIES - len(before)
    with sqlite3.connect(journal) as db:
        kept = dict(db.execute("SELECT series_key, result FROM series WHERE run = 1 AND "
                               "status = 'done'"))
        runs = dict(db.execute("SELECT run, COUNT(*) FROM series WHERE status = 'done' "
                               "GROUP BY run"))
    assert kept == before  # the first run's results are untouched
    assert runs == {1: len(before), 2: SERIES - len(before)}
    _same_outputs(out, archive["local"])


def test_worker_node_killed_midway_loses_and_duplicates_nothing(archive, cluster, tmp_path):
    """A third node joins, then dies (SIGKILL of the node and its workers) while its actor
    scores a series; the cluster is left with its two nodes (once the head notices)."""
    out = tmp_path / "ray"
    worker = cluster.add_node()
    proc = _start(archive, out, cluster)
    try:
        deadline = time.monotonic() + 120
        seen = False
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            seen = _scoring_on(cluster, worker)
        assert seen, "the worker node's actor never scored"
        # at once, while its actor holds a series (asking again could catch it between two)
        cluster.kill_node(worker)
        done_at_kill = _wait_done(proc, out / "journal.sqlite", 0)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        cluster.kill_node(worker)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert done_at_kill < SERIES, f"kill came too late: {done_at_kill} of {SERIES} done"
    s = json.loads(stdout.decode().strip().splitlines()[-1] if stdout.strip() else "null")
    assert s, (stdout.decode()[-2000:], stderr.decode()[-2000:])
    assert s["scored_now"] == SERIES and s["ray"]["nodes"] == 3
    assert s["ray"]["lost"] >= 1  # the dead node's actor held series; they were scored again
    keys = [r["series_key"] for r in read_csv(out / "qa.csv")]
    assert len(keys) == len(set(keys)) == SERIES
    _same_outputs(out, archive["local"])


def test_ray_is_imported_only_by_the_ray_engine():
    code = ("import sys; import rankiq.service.qa.runner, rankiq.service.qa.ray_engine, "
            "rankiq.service.commands.qa_cmd, rankiq.service.qa.route; "
            "from rankiq.service.cli import main; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'ray'], 'ray imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
