"""The documentation: a short README whose examples work, links that resolve, a site that builds
offline, and no text that points outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Markdown files whose relative links must resolve (the site's pages and the root documents).
LINKED = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# Built from pieces so that this file does not match itself.
MACHINE_PATH = re.compile("|".join(re.escape(p) for p in ("/wo" + "rk/", "/ro" + "ot/",
                                                          "/ho" + "me/", "../sha" + "red")))


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _relative_links(md: Path) -> list[str]:
    targets = LINK.findall(_prose(md.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t, re.I)]


def test_readme_is_at_most_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details into docs/"


@pytest.mark.parametrize("md", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_to_files(md: Path) -> None:
    if not md.exists():
        pytest.skip(f"{md.name} not written")
    broken = []
    for target in _relative_links(md):
        path = target.split("#", 1)[0]
        if path and not (md.parent / path).resolve().is_file():
            broken.append(target)
    assert not broken, f"{md.relative_to(ROOT)}: links to missing files: {broken}"


def test_link_checker_sees_links_outside_code_only() -> None:
    text = ("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n"
            '![d](img/p.png "t") [e](#top) [f](https://e.org)')
    found = [t for t in LINK.findall(_prose(text))
             if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t, re.I)]
    assert found == ["x.md", "img/p.png"]


def _tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    files = []
    for name in out.stdout.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        with path.open("rb") as f:
            head = f.read(8192)
        if b"\0" not in head:  # binary files (PNG, ONNX, HDF5) hold no prose
            files.append(path)
    return files


def test_no_machine_paths_or_outside_references_in_tracked_text() -> None:
    offenders = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)


def _service_routes() -> set[str]:
    from rankiq.service.app import RankIQ

    routes = {"/livez", "/readyz", "/healthz", "/metrics", "/models"}
    for api in RankIQ.apis.values():
        routes.add(api.route)
        if getattr(api, "is_task", False):  # a BentoML task: submit, then poll status / get
            routes.update(f"{api.route}/{verb}" for verb in ("submit", "status", "get"))
    return routes


def test_readme_curl_example_targets_a_service_route() -> None:
    text = README.read_text(encoding="utf-8")
    urls = re.findall(r"curl [^\n]*?http://(?:127\.0\.0\.1|localhost):\d+(/[\w/.-]*)", text)
    assert urls, "README.md has no curl example against the local service"
    routes = _service_routes()
    assert "/score" in routes
    missing = sorted(set(urls) - routes)
    assert not missing, f"README curl examples call routes the service lacks: {missing}"


def test_readme_python_quickstart_runs() -> None:
    """The three-line quickstart scores pydicom's MR slice and prints a score."""
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", quick, re.S)
    assert code is not None, "no Python block in the README's quickstart"
    lines = [ln for ln in code.group(1).splitlines() if ln.strip()]
    assert len(lines) <= 3
    out = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    median, worst, worst_slice = out.stdout.split()
    assert float(median) >= 0 and float(worst) >= float(median) and int(worst_slice) == 0
    # the comment beside print() shows what it prints: it must follow the shipped model
    shown = re.search(r"print\(.*#\s*([\d.]+) ([\d.]+) (\d+)", code.group(1))
    assert shown is not None, "the quickstart's print line has no '# median worst slice' comment"
    assert (f"{float(median):.2f}", f"{float(worst):.2f}", worst_slice) == shown.groups(), (
        f"README quickstart says {shown.groups()}, the shipped model prints {out.stdout.split()}")


def test_site_builds_strictly_without_third_party_resources(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 10
    external = re.compile(r"""(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)""", re.I)
    loaded = set()
    for page in pages:
        loaded.update(external.findall(page.read_text(encoding="utf-8")))
    assert not loaded, f"the site links or loads third-party URLs: {sorted(loaded)[:10]}"
    styles = " ".join(p.read_text(encoding="utf-8", errors="replace")
                      for p in site.rglob("*") if p.suffix in {".css", ".html"})
    assert "fonts.googleapis" not in styles and "fonts.gstatic" not in styles


def test_site_build_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """Strict mode really is strict: a link to a missing heading stops the build."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as f:
        f.write("\n[broken](scores.md#no-such-heading)\n")
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert out.returncode != 0
    assert "no-such-heading" in out.stdout + out.stderr
