"""The reader study as a person uses it: headless Chromium (Debian chromium + chromium-driver,
driven by Selenium; nothing downloaded) signs in with a token, ranks pairs with keys and clicks,
meets its repeats; the admin page shows progress and agreement; the export read by
``rankiq agreement`` gives the figures the votes imply."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from helpers_pairs import write_synthetic_pairs
from helpers_readers import RANKIQ, ReaderServer, invite
from rankiq.service.readers.agreement import summarize
from rankiq.service.readers.rankings import Vote

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: what each reader means for each pair (image 1 better, 2 better, similar)
INTENDED = {"R1": {0: "1", 1: "2", 2: "similar", 3: "1"},
            "R2": {0: "1", 1: "1", 2: "similar", 3: "2"}}


def _driver():  # noqa: ANN202 - selenium's type
    if not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()):
        pytest.skip("Debian packages chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1320,760", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _presentation(db: str, pid: int) -> sa.Row:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT * FROM presentations WHERE id = :i"),
                                {"i": pid}).one()
    finally:
        engine.dispose()


def _choice(outcome: str, flipped: bool) -> str:
    """The button meaning ``outcome`` (about images 1/2) given the drawn left/right."""
    if outcome == "similar":
        return "similar"
    return "left" if (outcome == "1") != flipped else "right"


def _shots() -> Path | None:
    """Screenshots go to docs/img when RANKIQ_DOC_SCREENSHOTS=1 (how the docs' were made)."""
    return REPO / "docs" / "img" if os.environ.get("RANKIQ_DOC_SCREENSHOTS") == "1" else None


def test_reader_ranks_with_keys_and_clicks_admin_exports(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pairs = write_synthetic_pairs(tmp_path / "pairs.h5", n_pairs=4, size=96, seed=5)
    db = f"sqlite:///{tmp_path / 'study.db'}"
    r1, r2, admin = invite(db, "R1"), invite(db, "R2"), invite(db, "boss", "admin")
    intended: list[Vote] = []
    shots = _shots()
    drv = _driver()
    try:
        with ReaderServer(pairs, db, "--readers-per-pair", "2", "--repeat-fraction", "0.5",
                          "--repeat-gap", "1", "--seed", "4") as srv:
            drv.get(srv.url + "/")
            drv.find_element(By.ID, "token").send_keys(r1)
            drv.find_element(By.ID, "signin").click()
            wait = WebDriverWait(drv, 20)

            def state() -> tuple[str, str]:
                return drv.execute_script(
                    "return [document.body.dataset.state || '', document.body.dataset.item "
                    "|| '']")

            wait.until(lambda d: state()[0] in ("ready", "done"))
            flips, repeats, seen_pairs, n = set(), 0, [], 0
            while state()[0] == "ready":
                item = int(state()[1])
                row = _presentation(db, item)
                flips.add(bool(row.flipped))
                repeats += bool(row.is_repeat)
                seen_pairs.append(row.pair_id)
                outcome = INTENDED["R1"][row.pair_id]
                if row.is_repeat and repeats == 2:  # the reader changes their mind once
                    outcome = "similar" if outcome != "similar" else "1"
                choice = _choice(outcome, bool(row.flipped))
                if shots is not None and n == 1:
                    drv.save_screenshot(str(shots / "readers-reader.png"))
                if n % 2 == 0:  # keys 1/2/3 on even items, clicks on odd ones
                    key = {"left": "1", "right": "2", "similar": "3"}[choice]
                    drv.find_element(By.TAG_NAME, "body").send_keys(key)
                else:
                    drv.find_element(By.CSS_SELECTOR, f'button[data-choice="{choice}"]').click()
                intended.append(Vote("R1", row.pair_id, outcome))
                n += 1
                wait.until(lambda d, i=str(item): state()[0] in ("ready", "done")
                           and state()[1] != i)
            assert state()[0] == "done"
            assert repeats == 2 and flips == {True, False}
            assert all(a != b for a, b in zip(seen_pairs, seen_pairs[1:], strict=False))
            assert len(set(seen_pairs)) == 4
            # a second reader votes over HTTP
            h = {"Authorization": f"Bearer {r2}"}
            while not (nxt := requests.get(srv.url + "/api/next", headers=h).json())["done"]:
                it = nxt["item"]
                row = _presentation(db, it["id"])
                outcome = INTENDED["R2"][row.pair_id]
                requests.post(srv.url + "/api/vote", headers=h, json={
                    "presentation": it["id"], "nonce": it["nonce"],
                    "choice": _choice(outcome, bool(row.flipped))}).raise_for_status()
                intended.append(Vote("R2", row.pair_id, outcome))
            # the admin signs in (a fresh session) and sees progress and agreement
            drv.delete_all_cookies()
            drv.get(srv.url + "/")
            drv.find_element(By.ID, "token").send_keys(admin)
            drv.find_element(By.ID, "signin").click()
            wait.until(lambda d: d.execute_script("return document.body.dataset.state")
                       == "ready")
            assert "4 of 4 pairs reached 2 readers" in drv.find_element(
                By.ID, "overall-progress").text
            # R1 changed one of two repeats (0.75), R2 kept both (1.0)
            assert drv.find_element(By.ID, "intra-mean").text == "87.5 %"
            if shots is not None:
                drv.save_screenshot(str(shots / "readers-admin.png"))
            http_export = requests.get(srv.url + "/api/admin/export/rankings.csv",
                                       headers={"Authorization": f"Bearer {admin}"}).text
    finally:
        drv.quit()
    out = tmp_path / "export"
    subprocess.run([*RANKIQ, "readers", "export", "--db", db, "--out", str(out)], check=True,
                   capture_output=True)
    assert (out / "rankings.csv").read_text() == http_export.replace("\r\n", "\n") or \
        (out / "rankings.csv").read_bytes() == http_export.encode()
    study = json.loads((out / "study.json").read_text())
    assert study["settings"]["order"] == "random" and "no active learning" in study["order"]
    got = json.loads(subprocess.run(
        [*RANKIQ, "agreement", "--rankings", str(out / "rankings.csv"), "--json"],
        check=True, capture_output=True, text=True).stdout)
    want = summarize(intended)
    # R1 repeated two pairs and changed one answer: (1 + 0.5) / 2; R2 repeated two, kept both
    assert got["intra"] == pytest.approx({"R1": 0.75, "R2": 1.0})
    assert got["intra"] == pytest.approx(want["intra"])
    assert got["inter"] == pytest.approx(want["inter"])
    assert got["overall"] == pytest.approx(want["overall"])
    assert got["n_votes"] == len(intended) == 12  # 4 pairs + 2 repeats, each reader
