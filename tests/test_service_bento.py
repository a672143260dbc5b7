"""`bentoml build` packages the service and the shipped models; request-level guard and auth
units (no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rankiq.service.auth import bearer_token, needs_auth, token_matches
from rankiq.service.guard import FormSpec, RequestRejected, check_multipart

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bentoml_build_packages_service_and_models(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    tag = r.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    bento = tmp_path / "home" / "bentos" / name / version
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "rankiq.service.app:RankIQ" and name == "rankiq"
    assert {a["route"] for a in meta["schema"]["routes"]} >= {"/score", "/compare"}
    src = bento / "src"
    assert (src / "service" / "app.py").is_file() and (src / "constraints.txt").is_file()
    assert not (src / "training").exists() and not (src / "tests").exists()
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "torch" not in reqs
    # the packaged models pass the same checks (SHA-256 of every file) the service runs
    from rankiq.service.models import load_models

    models = load_models(src / "models")
    assert {m.mode for m in models.values()} == {"reference", "no-reference"}


def test_bearer_token_parsing_and_comparison():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    assert token_matches("s3cret", "Bearer s3cret")
    assert not token_matches("s3cret", "Bearer s3cre") and not token_matches("s3cret", None)
    assert needs_auth("/score", "t") and needs_auth("/metrics", "t")
    assert not needs_auth("/livez", "t") and not needs_auth("/readyz", "t")
    assert not needs_auth("/score", None)


SPEC = FormSpec(required_files=("image",), optional_files=("reference",),
                bool_values=("saliency",))


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


CT = "multipart/form-data; boundary=b0undary"


def test_check_multipart_accepts_valid_forms():
    check_multipart(_multipart([("image", "x.dcm", b"\0" * 300)]), CT, SPEC)
    check_multipart(_multipart([("image", "x", b"a"), ("reference", "y", b"b"),
                                ("saliency", None, b"true")]), CT, SPEC)


@pytest.mark.parametrize(("body", "ctype", "status"), [
    (_multipart([("image", "x", b"a")]), "application/json", 415),
    (_multipart([("image", "x", b"a")]), "multipart/form-data", 400),
    (_multipart([("image", None, b"http://example.org/a.dcm")]), CT, 400),
    (_multipart([("reference", "x", b"a")]), CT, 400),
    (_multipart([("image", "x", b"a"), ("image", "y", b"b")]), CT, 400),
    (_multipart([("image", "x", b"a"), ("extra", "y", b"b")]), CT, 400),
    (_multipart([("image", "x", b"a"), ("saliency", None, b"perhaps")]), CT, 400),
    (_multipart([("image", "x", b"a")])[:-10], CT, 400),
    (b"garbage", CT, 400),
])
def test_check_multipart_rejects(body, ctype, status):
    with pytest.raises(RequestRejected) as err:
        check_multipart(body, ctype, SPEC)
    assert err.value.status == status


@pytest.mark.slow
def test_rankiq_serve_starts_the_service(rankiq_exe, tmp_path):
    """`rankiq serve` (what `make serve` runs) execs bentoml serve with the shipped models."""
    import signal
    import time

    import requests
    from rankiq.service.liveserver import free_port, http_status

    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([str(rankiq_exe), "serve", "--port", str(port), "--host",
                                 "127.0.0.1", "--workers", "1"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert proc.poll() is None, (tmp_path / "log").read_text()[-3000:]
            time.sleep(0.3)
        info = requests.get(f"http://127.0.0.1:{port}/models", timeout=10).json()
        assert info["ready"] and len(info["models"]) == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_bench_serve_smoke(rankiq_exe):
    """`rankiq bench serve` runs end to end (tiny counts; numbers are printed, not asserted)."""
    r = subprocess.run([str(rankiq_exe), "bench", "serve", "--requests", "4",
                        "--series-requests", "1", "--clients", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for row in ("256x256 slice, no reference", "saliency", "with reference", "20-slice zip",
                "server RSS"):
        assert row in r.stdout
