"""A real browser on `dfj annotate`: headless Chromium (Debian's `chromium` + `chromium-driver`)
driven by Selenium. Draws a box with the mouse, picks a category, types an expression and a
rationale, rates explanations, provokes a save conflict, and checks that the export holds it all.
A screenshot of every page goes to $DFJ_TEST_ARTIFACTS/annotate-screenshots (default: the
system temp folder)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)",
                allow_module_level=True)
pytest.importorskip("selenium", reason="browser tests need selenium: pip install -e '.[dev]'")
pytest.importorskip("uvicorn", reason="needs the annotate extra: pip install -e '.[annotate]'")

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from deepfakejudge.annotate.app import create_app  # noqa: E402
from deepfakejudge.annotate.project import open_project  # noqa: E402
from deepfakejudge.cli import main  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots():
    out = Path(os.environ.get("DFJ_TEST_ARTIFACTS", tempfile.gettempdir())) / "annotate-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    data = root / "examples"
    shutil.copytree(EXAMPLES, data, ignore=shutil.ignore_patterns("*.py", "*.md"))
    results = root / "pointwise.results.jsonl"
    rows = [{"id": "astronaut_text-l5", "score": 2, "reasoning": "The letters look printed <b>on</b> the visor.",
             "probs": {"1": 0.05, "2": 0.5, "3": 0.3, "4": 0.1, "5": 0.05}, "expected_score": 2.6, "choice_mass": 0.93,
             "raw": "<reasoning>…</reasoning><score>2</score>"},
            {"id": "astronaut_text-l4", "score": 4, "reasoning": "Fine.", "probs": None, "expected_score": None,
             "choice_mass": None, "raw": "<score>4</score>"}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    opened = open_project(str(root / "a.db"), [str(data / f"{n}.jsonl") for n in ("detect", "pointwise", "pairwise")],
                          annotators=["alice", "bob"], double_share=0.3, seed=0, results=[results])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(opened.ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "tokens": opened.tokens, "ctx": opened.ctx, "data": data, "root": root}
    srv.should_exit = True
    thread.join(10)
    opened.ctx.store.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions", "--window-size=1400,1000", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def api(server, who: str, path: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(server["url"] + path, method=method,
                                 headers={"Authorization": f"Bearer {server['tokens'][who]}", "Content-Type": "application/json"},
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read().decode()
    return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw


def wait_for(driver, predicate, what: str, timeout: float = 10):
    # An element found on the page being left goes stale when the next one loads: look again.
    return WebDriverWait(driver, timeout, 0.05, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                         ).until(lambda d: predicate(d), message=f"waiting for {what}")


def saved(driver) -> bool:
    return driver.find_element(By.ID, "saved").text.startswith("saved")


def test_annotate_rate_review_and_export_in_a_real_browser(server, browser, shots):
    url, d = server["url"], browser
    # -- log in with the token form
    d.get(url + "/")
    assert d.current_url.endswith("/login")
    d.save_screenshot(str(shots / "01-login.png"))
    d.find_element(By.ID, "token").send_keys(server["tokens"]["alice"], Keys.ENTER)
    wait_for(d, lambda d: d.find_elements(By.ID, "start"), "the home page")
    d.save_screenshot(str(shots / "02-home.png"))

    # -- annotate an edited image: class by key, a box by mouse, its category, expression, rationale
    mine = api(server, "alice", "/api/items")["items"]
    target = next((i for i in mine if i["kind"] == "annotate" and i["sample_id"] == "astronaut_text"),
                  next(i for i in mine if i["kind"] == "annotate"))
    d.get(f"{url}/items/{target['id']}")
    canvas = d.find_element(By.ID, "canvas")
    wait_for(d, lambda d: d.execute_script("return document.getElementById('image').complete && "
                                           "document.getElementById('canvas').width > 0"), "the image")
    d.find_element(By.TAG_NAME, "body").send_keys("e")  # shortcut: class edited
    Select(d.find_element(By.ID, "category")).select_by_visible_text("text and symbols")
    size = canvas.size
    scale = api(server, "alice", f"/api/items/{target['id']}")["item"]["width"] / size["width"]  # image px per CSS px
    (ActionChains(d).move_to_element_with_offset(canvas, -size["width"] // 2 + 60, -size["height"] // 2 + 40)
     .click_and_hold().move_by_offset(140, 100).release().perform())
    rows = wait_for(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#artifacts li.artifact"), "the new artifact row")
    assert len(rows) == 1
    focused = d.switch_to.active_element
    assert "expr" in focused.get_attribute("class")  # the expression field takes the keyboard at once
    focused.send_keys("the flat white letters on the curved visor")
    Select(rows[0].find_element(By.CSS_SELECTOR, "select.cat")).select_by_visible_text("perspective/geometry")
    d.find_element(By.ID, "rationale").send_keys("Edited: block letters ignore the visor's curvature <script>x</script>.")
    wait_for(d, lambda d: saved(d) and not d.execute_script("return DFJ.isDirty()"), "the autosave")
    d.save_screenshot(str(shots / "03-annotate.png"))
    stored = api(server, "alice", f"/api/items/{target['id']}")["annotation"]
    assert stored["label"] == "edited" and stored["status"] == "draft"
    [box] = stored["artifacts"]
    assert box["category"] == "perspective/geometry"
    assert box["expression"] == "the flat white letters on the curved visor"
    x0, y0, x1, y1 = box["bbox"]
    assert abs((x1 - x0) - 140 * scale) <= 2 and abs((y1 - y0) - 100 * scale) <= 2
    assert abs(x0 - 60 * scale) <= 2 and abs(y0 - 40 * scale) <= 2
    d.find_element(By.ID, "rationale").send_keys(Keys.CONTROL, Keys.ENTER)  # done, on to the next item
    wait_for(d, lambda d: not d.current_url.endswith(f"/items/{target['id']}"), "the next item")
    assert api(server, "alice", f"/api/items/{target['id']}")["annotation"]["status"] == "done"

    # -- rate a pointwise explanation with the keyboard
    point = next(i for i in mine if i["kind"] == "pointwise")
    d.get(f"{url}/items/{point['id']}")
    assert d.find_element(By.CSS_SELECTOR, ".rubric").is_displayed()
    d.find_element(By.TAG_NAME, "body").send_keys("4")
    wait_for(d, saved, "the score to save")
    assert d.find_element(By.CSS_SELECTOR, "input[name=score][value='4']").is_selected()
    d.save_screenshot(str(shots / "04-rate-pointwise.png"))

    # -- compare two explanations: click the right-hand one
    pair = next(i for i in mine if i["kind"] == "pairwise")
    d.get(f"{url}/items/{pair['id']}")
    d.find_element(By.CSS_SELECTOR, "input[name=choice][value='B']").click()
    wait_for(d, saved, "the choice to save")
    d.save_screenshot(str(shots / "05-rate-pairwise.png"))

    # -- a stale page: another tab saves first, this one shows the conflict instead of overwriting
    point2 = [i for i in mine if i["kind"] == "pointwise"][1]
    d.get(f"{url}/items/{point2['id']}")
    api(server, "alice", f"/api/items/{point2['id']}/annotation", "PUT", {"version": 0, "status": "done", "score": 1})
    d.find_element(By.TAG_NAME, "body").send_keys("5")
    banner = wait_for(d, lambda d: d.find_element(By.ID, "banner").is_displayed() and d.find_element(By.ID, "banner"),
                      "the conflict banner")
    assert "Conflict" in banner.text and d.find_element(By.ID, "reload").is_displayed()
    d.save_screenshot(str(shots / "06-conflict.png"))
    assert api(server, "alice", f"/api/items/{point2['id']}")["annotation"]["score"] == 1
    d.find_element(By.ID, "reload").click()
    wait_for(d, lambda d: d.find_element(By.CSS_SELECTOR, "input[name=score][value='1']").is_selected(), "the reload")

    # -- the admin's pages: overview, review with the judge's distribution, live agreement
    d.get(f"{url}/login?token={server['tokens']['admin']}")
    d.find_element(By.ID, "confirm-login").click()  # a login link asks before logging in
    wait_for(d, lambda d: "Overview" in d.find_element(By.TAG_NAME, "h1").text, "the overview")
    d.save_screenshot(str(shots / "07-overview.png"))
    d.get(f"{url}/review?filter=all")
    assert len(d.find_elements(By.CSS_SELECTOR, "article.review")) == 2
    assert len(d.find_elements(By.CSS_SELECTOR, "table.dist meter")) == 5
    assert "<b>on</b>" in d.find_element(By.CSS_SELECTOR, "article.review").text  # shown as text, not markup
    d.save_screenshot(str(shots / "08-review.png"))
    d.get(f"{url}/agreement")
    wait_for(d, lambda d: d.find_element(By.ID, "live").text.startswith("live ·"), "the live refresh")
    d.save_screenshot(str(shots / "09-agreement.png"))
    d.get(f"{url}/items/{target['id']}")
    d.save_screenshot(str(shots / "10-item-admin.png"))

    # -- the export holds what was done in the browser, and validates
    out = server["root"] / "export"
    assert main(["annotate", "--data", str(server["data"] / "detect.jsonl"), "--data", str(server["data"] / "pointwise.jsonl"),
                 "--data", str(server["data"] / "pairwise.jsonl"), "--db", str(server["root"] / "a.db"), "--export", str(out)]) == 0
    detect = {r["id"]: r for r in map(json.loads, (out / "detect.jsonl").read_text().splitlines())}
    row = detect[target["sample_id"]]
    assert row["label"] == "edited" and row["rationale"].startswith("Edited: block letters")
    assert row["artifacts"] == [{"category": "perspective/geometry", "bbox": box["bbox"],
                                 "expression": "the flat white letters on the curved visor"}]
    pointwise = {r["id"]: r for r in map(json.loads, (out / "pointwise.jsonl").read_text().splitlines())}
    assert pointwise[point["sample_id"]]["score"] == 4 and pointwise[point2["sample_id"]]["score"] == 1
    pairwise = {r["id"]: r for r in map(json.loads, (out / "pairwise.jsonl").read_text().splitlines())}
    prow = pairwise[pair["sample_id"]]
    assert prow["preferred"] == ("A" if prow["annotation"]["position_swapped"] else "B")
    # The export names the images where they were loaded from, outside its folder: it validates with
    # the --image-root its summary gives (images are read only from under the data's folder otherwise).
    for name in ("detect", "pointwise", "pairwise"):
        assert main(["data", "validate", str(out / f"{name}.jsonl"), "--image-root", str(server["data"])]) == 0
    print(f"screenshots in {shots}")
