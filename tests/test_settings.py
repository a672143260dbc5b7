"""service.settings: every RANKIQ_* variable is read when asked for, never at import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rankiq.service import settings
from rankiq.service.settings import ServiceSettings, fft_workers, usable_cpus


def test_importing_rankiq_reads_no_setting():
    # malformed values would raise if any module read them at import
    bad = {k: "not-a-number" for k in ("RANKIQ_FFT_WORKERS", "RANKIQ_MAX_SLICES",
                                        "RANKIQ_ORT_THREADS", "RANKIQ_RETENTION")}
    code = ("import rankiq, rankiq.service.preprocess, rankiq.service.scoring, "
            "rankiq.service.io, rankiq.service.qa.runner, rankiq.service.qa.route, "
            "rankiq.service.cli, rankiq.service.fft; print('imported')")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **bad},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr


def test_fft_workers_is_read_at_each_call(monkeypatch):
    from rankiq.service.fft import fft2c, ifft2c

    monkeypatch.setenv("RANKIQ_FFT_WORKERS", "3")
    assert fft_workers() == 3
    monkeypatch.setenv("RANKIQ_FFT_WORKERS", "bad")
    with pytest.raises(ValueError, match="RANKIQ_FFT_WORKERS"):
        fft2c(np.ones((4, 4), np.complex64))
    monkeypatch.delenv("RANKIQ_FFT_WORKERS")
    monkeypatch.setattr(settings, "_default_fft_workers", 0)
    assert fft_workers() == usable_cpus()
    settings.set_default_fft_workers(2)  # a service worker's share
    assert fft_workers() == 2
    x = np.arange(16, dtype=np.complex64).reshape(4, 4)
    np.testing.assert_allclose(ifft2c(fft2c(x)), x, atol=1e-5)


def test_settings_object_holds_every_variable(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("RANKIQ_"):
            monkeypatch.delenv(k)
    st = ServiceSettings.from_env()
    assert st.jobs_dir == Path.home() / ".rankiq" / "jobs"
    assert (st.qa_model, st.qa_rules, st.qa_thresholds, st.debug) == ("iqnet-noref", None, None,
                                                                       False)
    monkeypatch.setenv("RANKIQ_STATE_DIR", str(tmp_path))
    assert ServiceSettings.from_env().jobs_dir == tmp_path / "jobs"
    monkeypatch.setenv("RANKIQ_JOBS_DIR", str(tmp_path / "j"))
    monkeypatch.setenv("RANKIQ_QA_MODEL", "iqnet-ref")
    monkeypatch.setenv("RANKIQ_QA_RULES", str(tmp_path / "rules.yaml"))
    monkeypatch.setenv("RANKIQ_DEBUG", "1")
    st = ServiceSettings.from_env()
    assert st.jobs_dir == tmp_path / "j" and st.qa_model == "iqnet-ref" and st.debug
    assert st.qa_rules == tmp_path / "rules.yaml"
    monkeypatch.setenv("RANKIQ_MAX_SLICES", "0")
    with pytest.raises(ValueError, match="RANKIQ_MAX_SLICES"):
        ServiceSettings.from_env()


def test_every_variable_read_in_the_code_is_documented(repo_root):
    import re

    documented = set(re.findall(r"RANKIQ_[A-Z_]+", settings.__doc__ or ""))
    used = set()
    for folder in ("service", "training", "rankiq"):
        for f in (repo_root / folder).rglob("*.py"):
            used |= set(re.findall(r"RANKIQ_[A-Z_]*[A-Z]", f.read_text(encoding="utf-8")))
    assert used - documented == set()


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_usable_cpus_follow_the_cgroup_quota(tmp_path):
    """A container's CPU limit (cgroup v2 ``cpu.max``, v1 CFS quota) caps the CPUs a process
    may use, which ``os.cpu_count()`` does not see; no limit or an unreadable file: the
    affinity mask."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    assert usable_cpus(v2) == _affinity()  # no cgroup files
    (v2 / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(v2) == _affinity()
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one worker
    assert usable_cpus(v2) == 1
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two
    assert usable_cpus(v2) == min(2, _affinity())
    (v2 / "cpu.max").write_text("garbage\n")
    assert usable_cpus(v2) == _affinity()
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(tmp_path / "v1") == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert usable_cpus(tmp_path / "v1") == _affinity()


def test_service_workers_default_to_one_per_usable_cpu(monkeypatch):
    """Unset RANKIQ_WORKERS: one worker per usable CPU (a request computes on one core, so one
    worker leaves the other cores idle), at most four (each holds its own models)."""
    monkeypatch.delenv("RANKIQ_WORKERS", raising=False)
    monkeypatch.setattr(settings, "usable_cpus", lambda cgroup=None: 2)
    assert ServiceSettings.from_env().workers == 2
    monkeypatch.setattr(settings, "usable_cpus", lambda cgroup=None: 64)
    assert ServiceSettings.from_env().workers == 4
    assert settings.default_workers(settings.MAX_DEFAULT_QA_WORKERS) == 8  # batch QA's cap
    monkeypatch.setattr(settings, "usable_cpus", lambda cgroup=None: 1)
    assert ServiceSettings.from_env().workers == 1
    monkeypatch.setenv("RANKIQ_WORKERS", "3")
    assert ServiceSettings.from_env().workers == 3
