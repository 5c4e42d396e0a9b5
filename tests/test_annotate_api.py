"""`dfj annotate` API: every action, security, conflicts, export/import — on SQLite and, where
`initdb`/`pg_ctl` and psycopg are installed, on a real PostgreSQL server started for the session."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the annotate extra: pip install -e '.[annotate]'")
pytest.importorskip("sqlalchemy", reason="needs the annotate extra: pip install -e '.[annotate]'")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from deepfakejudge.annotate.app import create_app  # noqa: E402
from deepfakejudge.annotate.project import export_all, open_project  # noqa: E402
from deepfakejudge.annotate.work import flip  # noqa: E402
from deepfakejudge.cli import main  # noqa: E402
from deepfakejudge.data import load_records  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BOX = {"category": "text and symbols", "bbox": [20, 20, 120, 100], "expression": "the block letters on the visor"}


# ---------------------------------------------------------------- PostgreSQL for the session

def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return matches[-1] if matches else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (fsync off), or a skip saying what is missing."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="PostgreSQL driver missing: pip install 'psycopg[binary]'")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="dfj-pg-"))
    data = root / "data"
    if prefix:
        shutil.chown(root, "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(prefix + [initdb, "-D", str(data), "-A", "trust", "-U", "dfj", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True, env=env)
    subprocess.run(prefix + [pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                             f"-F -p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, env=env)
    try:
        yield f"postgresql+psycopg://dfj@127.0.0.1:{port}"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)


def _pg_database(pg_url: str) -> str:
    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    engine = create_engine(f"{pg_url}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{pg_url}/{name}"


# ---------------------------------------------------------------- project fixtures

@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A copy of the bundled examples: exports are written beside the data, never into examples/."""
    out = tmp_path_factory.mktemp("data") / "examples"
    shutil.copytree(EXAMPLES, out, ignore=shutil.ignore_patterns("*.py", "*.md"))
    return out


def _datasets(data_dir: Path) -> list[str]:
    return [str(data_dir / f"{n}.jsonl") for n in ("detect", "pointwise", "pairwise")]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "annotations.db")
    return _pg_database(request.getfixturevalue("pg_url"))


class Project:
    def __init__(self, db: str, data_dir: Path, share: float = 0.3, results=()):
        self.opened = open_project(db, _datasets(data_dir), annotators=["alice", "bob"], double_share=share,
                                   seed=0, results=results)
        self.ctx = self.opened.ctx
        self.app = create_app(self.ctx)
        self.tokens = dict(self.opened.tokens)

    def client(self, who: str) -> TestClient:
        c = TestClient(self.app)
        c.headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return c

    def items(self, who: str, kind: str | None = None) -> list[dict]:
        items = self.client(who).get("/api/items").json()["items"]
        return [i for i in items if kind is None or i["kind"] == kind]

    def admin_view(self, item_id: int) -> dict:
        return self.client("admin").get(f"/api/items/{item_id}").json()

    def shared_item(self, kind: str) -> int:
        """An item of `kind` assigned to both alice and bob."""
        bob = {i["id"] for i in self.items("bob", kind)}
        return next(i["id"] for i in self.items("alice", kind) if i["id"] in bob)


@pytest.fixture
def project(db_url, data_dir):
    p = Project(db_url, data_dir)
    yield p
    p.ctx.store.close()


@pytest.fixture
def sqlite_project(tmp_path, data_dir):
    p = Project(str(tmp_path / "a.db"), data_dir)
    yield p
    p.ctx.store.close()


def put(client: TestClient, item_id: int, **payload):
    return client.put(f"/api/items/{item_id}/annotation", json=payload)


# ---------------------------------------------------------------- login and access

def test_login_link_sets_a_strict_httponly_cookie(sqlite_project):
    c = TestClient(sqlite_project.app)
    assert c.get("/api/me").status_code == 401
    page = c.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    bad = c.get("/login?token=not-a-token", follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text
    # A login link only fills in a confirm form (a GET never logs in: no login CSRF).
    link = c.get(f"/login?token={sqlite_project.tokens['alice']}", follow_redirects=False)
    assert link.status_code == 200 and "set-cookie" not in link.headers
    assert "Log in as alice" in link.text and 'method="post"' in link.text
    assert c.get("/api/me").status_code == 401
    good = c.post("/login", data={"token": sqlite_project.tokens["alice"]}, follow_redirects=False)
    assert good.status_code == 303
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/api/me").json() == {"name": "alice", "role": "annotator"}
    form = TestClient(sqlite_project.app).post("/login", data={"token": sqlite_project.tokens["bob"]},
                                               follow_redirects=False)
    assert form.status_code == 303
    out = c.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and 'dfj_token=""' in out.headers["set-cookie"]


def test_annotators_see_only_their_assignments(sqlite_project):
    p = sqlite_project
    alice, bob = p.client("alice"), p.client("bob")
    mine = {i["id"] for i in p.items("alice")}
    theirs = {i["id"] for i in p.items("bob")} - mine
    other = min(theirs)
    assert alice.get(f"/api/items/{other}").status_code == 404
    assert alice.get(f"/img/{other}").status_code == 404
    assert alice.get(f"/items/{other}").status_code == 404
    assert put(alice, other, version=0, status="draft").status_code == 404
    assert bob.get(f"/img/{other}").status_code == 200
    for path in ("/api/agreement", "/api/export?dataset=detect", "/api/annotators", "/api/review", "/review", "/agreement"):
        assert alice.get(path).status_code == 403, path
    assert alice.post("/api/assign", json={}).status_code == 403
    assert alice.post("/api/import", content=b"{}").status_code == 403


def test_security_headers_and_cross_origin_writes(sqlite_project):
    alice = sqlite_project.client("alice")
    r = alice.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    item = sqlite_project.items("alice", "annotate")[0]["id"]
    forged = alice.put(f"/api/items/{item}/annotation", json={"version": 0, "status": "draft"},
                       headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403
    # The scheme is part of the origin: a page on http://host is not https://host, nor the reverse.
    other_scheme = alice.put(f"/api/items/{item}/annotation", json={"version": 0, "status": "draft"},
                             headers={"Origin": "https://testserver"})
    assert other_scheme.status_code == 403
    same = alice.put(f"/api/items/{item}/annotation", json={"version": 0, "status": "draft"},
                     headers={"Origin": "http://testserver"})
    assert same.status_code == 200, same.text
    # A login form posted from another site is refused too (login CSRF).
    assert TestClient(sqlite_project.app).post("/login", data={"token": sqlite_project.tokens["bob"]},
                                               headers={"Origin": "http://evil.example"}).status_code == 403


# ---------------------------------------------------------------- annotate, rate, skip, flag

def test_annotate_saves_class_boxes_expression_rationale(project):
    alice = project.client("alice")
    item = project.items("alice", "annotate")[0]["id"]
    r = put(alice, item, version=0, status="draft", label="edited", artifacts=[BOX], rationale="Letters <b>flat</b>.")
    assert r.status_code == 200, r.text
    assert r.json()["annotation"]["version"] == 1
    r = put(alice, item, version=1, status="done", label="edited", artifacts=[BOX, {**BOX, "bbox": None}],
            rationale="Letters <b>flat</b>.", note="checked")
    assert r.status_code == 200
    got = alice.get(f"/api/items/{item}").json()
    a = got["annotation"]
    assert (a["status"], a["version"], a["label"], a["note"]) == ("done", 2, "edited", "checked")
    assert a["artifacts"][0] == {"category": "text and symbols", "bbox": [20, 20, 120, 100],
                                 "expression": "the block letters on the visor"}
    assert a["artifacts"][1]["bbox"] is None
    assert "label" not in got["item"]  # annotators start fresh: no prior class shown


def test_stale_version_gets_409_and_keeps_the_stored_work(project):
    alice = project.client("alice")
    item = project.items("alice", "annotate")[0]["id"]
    assert put(alice, item, version=0, status="draft", label="real").status_code == 200
    stale = put(alice, item, version=0, status="draft", label="fake")  # a second tab, still at version 0
    assert stale.status_code == 409
    body = stale.json()
    assert body["current"]["version"] == 1 and body["current"]["label"] == "real"
    assert "reload" in body["error"]
    assert alice.get(f"/api/items/{item}").json()["annotation"]["label"] == "real"


def test_concurrent_saves_of_one_version_let_exactly_one_through(project):
    from deepfakejudge.annotate.store import User
    from deepfakejudge.annotate.work import Conflict, save

    item = project.items("alice", "annotate")[0]["id"]
    with project.ctx.store.read() as session:
        from deepfakejudge.annotate.store import user_for_token
        user: User = user_for_token(session, project.tokens["alice"])
    barrier, outcomes = threading.Barrier(4), []

    def worker(label: str) -> None:
        barrier.wait()
        try:
            with project.ctx.store.write() as session:
                save(session, user, item, {"version": 0, "status": "draft", "label": label}, project.ctx.taxonomy.names)
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=worker, args=(lbl,)) for lbl in ("real", "fake", "edited", "real")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
    assert project.client("alice").get(f"/api/items/{item}").json()["annotation"]["version"] == 1


@pytest.mark.parametrize("payload, field", [
    ({"label": "maybe"}, "label"),
    ({"artifacts": [{**BOX, "category": "gremlins"}]}, "artifacts[0].category"),
    ({"artifacts": [{**BOX, "bbox": [300, 10, 400, 20]}]}, "artifacts[0].bbox"),
    ({"artifacts": [{**BOX, "bbox": [10, 10, 20]}]}, "artifacts[0].bbox"),
    ({"artifacts": [{**BOX, "bbox": [30, 10, 20, 20]}]}, "artifacts[0].bbox"),
    ({"artifacts": [{**BOX, "expression": "x" * 501}]}, "expression"),
    ({"artifacts": [BOX] * 101}, "artifacts"),
    ({"rationale": "x" * 10_001}, "rationale"),
    ({"score": 3}, "score"),
    ({"status": "done"}, "label"),
    ({"status": "todo"}, "status"),
    ({"version": "1"}, "version"),
])
def test_bad_fields_get_422_naming_the_field(sqlite_project, payload, field):
    alice = sqlite_project.client("alice")
    item = sqlite_project.items("alice", "annotate")[0]["id"]
    r = put(alice, item, **{"version": 0, "status": "draft", **payload})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert alice.get(f"/api/items/{item}").json()["annotation"]["version"] == 0


def test_body_limits_and_malformed_json(sqlite_project):
    alice = sqlite_project.client("alice")
    item = sqlite_project.items("alice", "annotate")[0]["id"]
    huge = json.dumps({"version": 0, "status": "draft", "rationale": "x" * (1 << 20)})
    r = alice.put(f"/api/items/{item}/annotation", content=huge, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    chunked = alice.put(f"/api/items/{item}/annotation", content=iter([b" " * (1 << 20), b"{}"]),
                        headers={"Content-Type": "application/json"})  # no Content-Length: counted as it arrives
    assert chunked.status_code == 413
    r = alice.put(f"/api/items/{item}/annotation", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "<body>"
    r = alice.put(f"/api/items/{item}/annotation", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422


def test_rate_pointwise(project):
    alice = project.client("alice")
    item = project.items("alice", "pointwise")[0]["id"]
    view = alice.get(f"/api/items/{item}").json()["item"]
    assert view["label"] in ("real", "fake", "edited") and view["response"].startswith("<reasoning>")
    assert put(alice, item, version=0, status="done", score=6).status_code == 422
    assert put(alice, item, version=0, status="done").json()["field"] == "score"
    r = put(alice, item, version=0, status="done", score=2)
    assert r.status_code == 200 and r.json()["annotation"]["score"] == 2


def test_rate_pairwise_records_the_randomised_position(project):
    alice = project.client("alice")
    pairs = project.items("alice", "pairwise")
    views = {i["id"]: project.admin_view(i["id"]) for i in pairs}
    swapped = {iid: next(a["swapped"] for a in v["annotations"] if a["annotator"] == "alice") for iid, v in views.items()}
    assert set(swapped.values()) == {True, False}  # both orders occur
    for iid, was_swapped in [(next(k for k, v in swapped.items() if v), True), (next(k for k, v in swapped.items() if not v), False)]:
        record = views[iid]["record"]
        shown = alice.get(f"/api/items/{iid}").json()["item"]["responses"]
        expected = [record["response_b"], record["response_a"]] if was_swapped else [record["response_a"], record["response_b"]]
        assert shown == expected
        r = put(alice, iid, version=0, status="done", shown_choice="A")  # the left one
        assert r.status_code == 200 and r.json()["annotation"]["shown_choice"] == "A"
        stored = next(a for a in project.admin_view(iid)["annotations"] if a["annotator"] == "alice")
        assert stored["choice"] == ("B" if was_swapped else "A")
        assert stored["swapped"] is was_swapped


def test_skip_and_flag_with_a_note(project):
    alice = project.client("alice")
    first, second = [i["id"] for i in project.items("alice", "pointwise")[:2]]
    assert put(alice, first, version=0, status="skipped", note="image too small").json()["annotation"]["status"] == "skipped"
    r = put(alice, second, version=0, status="flagged", note="response cut off")
    assert r.json()["annotation"]["status"] == "flagged"
    statuses = {i["id"]: i["status"] for i in project.items("alice")}
    assert statuses[first] == "skipped" and statuses[second] == "flagged"


# ---------------------------------------------------------------- assignment

def test_assignment_double_share_is_exact_balanced_and_stable(project):
    p = project
    admin = p.client("admin")
    everything = admin.get("/api/items").json()["items"]
    assert len(everything) == 140
    counts = [len(i["annotations"]) for i in everything]
    assert counts.count(2) == round(0.3 * 140) and counts.count(1) == 140 - 42
    for i in everything:
        assert len({a["annotator"] for a in i["annotations"]}) == len(i["annotations"])
        assert i["double"] == (len(i["annotations"]) == 2)
    loads = [len(p.items("alice")), len(p.items("bob"))]
    assert sum(loads) == 182 and abs(loads[0] - loads[1]) <= 1
    again = admin.post("/api/assign", json={})
    assert again.json()["new_assignments"] == 0
    more = admin.post("/api/assign", json={"double_share": 0.5}).json()
    assert more["double_items"] == 70 and more["new_assignments"] == 70 - 42
    assert admin.post("/api/assign", json={"double_share": 1.5}).status_code == 422


def test_admin_adds_annotators_and_rotates_tokens(sqlite_project):
    p = sqlite_project
    admin = p.client("admin")
    r = admin.post("/api/annotators", json={"name": "carol"})
    assert r.status_code == 200 and r.json()["token"]
    carol = TestClient(p.app)
    carol.headers["Authorization"] = f"Bearer {r.json()['token']}"
    assert carol.get("/api/me").json()["name"] == "carol"
    assert admin.post("/api/annotators", json={"name": "carol"}).status_code == 409
    assert admin.post("/api/annotators", json={"name": "<script>"}).status_code == 422
    rotated = admin.post("/api/annotators/carol/token").json()["token"]
    assert carol.get("/api/me").status_code == 401
    carol.headers["Authorization"] = f"Bearer {rotated}"
    assert carol.get("/api/me").status_code == 200
    names = [a["name"] for a in admin.get("/api/annotators").json()["annotators"]]
    assert names == ["admin", "alice", "bob", "carol"]


# ---------------------------------------------------------------- agreement, export, import

def test_agreement_endpoint_reflects_finished_double_annotations(project):
    alice, bob, admin = project.client("alice"), project.client("bob"), project.client("admin")
    assert admin.get("/api/agreement").json()["label"]["n"] == 0
    item = project.shared_item("annotate")
    assert put(alice, item, version=0, status="done", label="edited", artifacts=[BOX]).status_code == 200
    r = put(bob, item, version=0, status="done", label="edited", artifacts=[{**BOX, "bbox": [20, 20, 120, 60]}])
    assert r.status_code == 200  # half of alice's box: IoU 0.5
    report = admin.get("/api/agreement").json()
    assert report["label"]["n"] == 1 and report["label"]["observed"] == 1.0
    assert report["boxes"]["mean_iou"] == pytest.approx(0.5) and report["boxes"]["f1_at_50"] == 1.0
    dl = admin.get("/api/agreement?download=1")
    assert "attachment" in dl.headers["content-disposition"]


def _finish_some(p: Project) -> None:
    alice, bob = p.client("alice"), p.client("bob")
    for who, c in (("alice", alice), ("bob", bob)):
        for it in p.items(who, "annotate")[:3]:
            assert put(c, it["id"], version=it["version"], status="done", label="edited", artifacts=[BOX],
                       rationale=f"by {who}").status_code == 200
        for it in p.items(who, "pointwise")[:3]:
            put(c, it["id"], version=it["version"], status="done", score=4)
        for it in p.items(who, "pairwise")[:3]:
            put(c, it["id"], version=it["version"], status="done", shown_choice="B")


def test_export_is_canonical_and_validates(project, data_dir, tmp_path):
    _finish_some(project)
    admin = project.client("admin")
    for name in ("detect", "pointwise", "pairwise"):
        r = admin.get(f"/api/export?dataset={name}")
        assert r.status_code == 200
        rows = [json.loads(line) for line in r.text.splitlines()]
        assert rows and int(r.headers["x-dfj-rows"]) == len(rows)
        target = data_dir / f"{name}.export-{uuid.uuid4().hex[:6]}.jsonl"  # beside the data: paths resolve
        target.write_text(r.text, encoding="utf-8")
        try:
            assert main(["data", "validate", str(target)]) == 0
            loaded = load_records(target)
            assert not loaded.errors and len(loaded.samples) == len(rows)
        finally:
            target.unlink()
        for row in rows:
            assert row["annotation"]["status"] == "done"
            if name == "detect":
                assert row["label"] == "edited" and row["artifacts"][0]["bbox"] == [20, 20, 120, 100]
                assert row["rationale"].startswith("by ")
            if name == "pointwise":
                assert row["score"] == 4
            if name == "pairwise":
                assert row["preferred"] in ("A", "B")
                assert row["preferred"] == ("A" if row["annotation"]["position_swapped"] else "B")
    per = admin.get("/api/export?dataset=detect&annotator=bob").text.splitlines()
    assert all(json.loads(line)["annotation"]["annotator"] == "bob" for line in per)
    assert admin.get("/api/export?dataset=nope").status_code == 404
    # the CLI writes every dataset and agreement.json, image paths relative to the output folder
    reports = export_all(project.ctx.store, tmp_path / "out")
    assert {r.dataset for r in reports} == {"detect", "pointwise", "pairwise"}
    for name in ("detect", "pointwise", "pairwise"):
        # the images stay in the loaded data's folder, outside the export's: allowed by name
        assert main(["data", "validate", str(tmp_path / "out" / f"{name}.jsonl"), "--image-root", str(data_dir)]) == 0
    assert json.loads((tmp_path / "out" / "agreement.json").read_text())["label"]["n"] >= 0


def test_export_taken_during_work_is_one_snapshot(project):
    from deepfakejudge.annotate.exchange import export_rows

    alice = project.client("alice")
    todo = [i["id"] for i in project.items("alice", "pointwise")[:2]]
    put(alice, todo[0], version=0, status="done", score=5)
    with project.ctx.store.read() as session:
        first, _ = export_rows(session, "pointwise")  # the snapshot starts here
        assert put(alice, todo[1], version=0, status="done", score=1).status_code == 200  # committed meanwhile
        second, _ = export_rows(session, "pointwise")
    assert [r["id"] for r in first] == [r["id"] for r in second]
    with project.ctx.store.read() as session:
        assert len(export_rows(session, "pointwise")[0]) == len(first) + 1


def test_import_continues_work_and_never_overwrites_silently(project, db_url, data_dir, tmp_path):
    _finish_some(project)
    admin = project.client("admin")
    exported = admin.get("/api/export?dataset=detect&annotator=alice").text
    # a fresh project continues from the export
    fresh_db = str(tmp_path / "fresh.db") if "://" not in db_url else _pg_database(db_url.rsplit("/", 1)[0])
    fresh = Project(fresh_db, data_dir)
    try:
        r = fresh.client("admin").post("/api/import", content=exported.encode())
        assert r.status_code == 200 and r.json()["imported"] == 3 and r.json()["problems"] == []
        again = fresh.client("admin").get("/api/export?dataset=detect&annotator=alice").text
        strip = lambda text: [{k: v for k, v in json.loads(line).items() if k != "annotation"} for line in text.splitlines()]  # noqa: E731
        assert strip(again) == strip(exported)
        # a second import of the same rows leaves the work alone and says so
        r = fresh.client("admin").post("/api/import", content=exported.encode())
        assert r.json()["imported"] == 0 and all("not overwritten" in p for p in r.json()["problems"])
        # multipart upload from the admin page, rows for another annotator, bad rows reported by line
        bad = b'{"id": "nope", "image": "x.jpg", "label": "real"}\n{"id": "camera", "image": "images/camera.jpg", "label": "real"}\nnot json\n'
        r = fresh.client("admin").post("/api/import", files={"file": ("x.jsonl", bad)}, data={"annotator": "bob"})
        body = r.json()
        assert body["imported"] == 1
        assert any(p.startswith("line 1: field 'id'") for p in body["problems"])
        assert any(p.startswith("line 3: malformed JSON") for p in body["problems"])
        assert fresh.client("admin").post("/api/import?annotator=zed", content=exported.encode()).json()["imported"] == 0
    finally:
        fresh.ctx.store.close()


# ---------------------------------------------------------------- review

def _results(tmp_path: Path) -> tuple[Path, Path, Path]:
    pw = tmp_path / "pointwise.results.jsonl"
    rows = [
        {"id": "astronaut-l5", "score": 5, "reasoning": "Grounded <script>alert(1)</script>", "probs": {"1": .01, "2": .01, "3": .03, "4": .15, "5": .8},
         "expected_score": 4.72, "choice_mass": .97, "raw": "<reasoning>x</reasoning><score>5</score>"},
        {"id": "astronaut-l4", "score": 1, "reasoning": "harsh", "probs": None, "expected_score": None, "choice_mass": None, "raw": "r"},
        {"id": "astronaut-l3", "score": None, "reasoning": None, "probs": None, "expected_score": None, "choice_mass": None, "raw": "??"},
        {"id": None, "where": "pointwise.jsonl:99", "field": "image", "error": "file not found"},
    ]
    pw.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "torn', encoding="utf-8")
    pa = tmp_path / "pairwise.results.jsonl"
    prow = {"id": "astronaut-l5-vs-l4", "choice": "A", "p_a": .7, "agree": False,
            "orders": [{"swapped": False, "choice": "A", "p_a": .9, "raw": "<answer>A</answer>"},
                       {"swapped": True, "choice": "A", "p_a": .5, "raw": "<answer>A</answer>"}]}
    qrow = {"id": "astronaut-l3-vs-l5", "choice": "B", "p_a": .2, "agree": True, "orders": []}
    pa.write_text(json.dumps(prow) + "\n" + json.dumps(qrow) + "\n", encoding="utf-8")
    det = tmp_path / "detect.results.jsonl"
    det.write_text(json.dumps({"id": "astronaut", "prediction": "fake", "p_fake": .8, "raw": "<answer>fake</answer>"}) + "\n"
                   + json.dumps({"id": "camera", "prediction": "real", "p_fake": .1}) + "\n", encoding="utf-8")
    return pw, pa, det


def test_review_filters_by_disagreement(tmp_path, data_dir):
    pw, pa, det = _results(tmp_path)
    size = pw.stat().st_size
    p = Project(str(tmp_path / "r.db"), data_dir, results=(pw, pa, det))
    try:
        admin = p.client("admin")
        ids = lambda **q: [e["id"] for e in admin.get("/api/review", params=q).json()["entries"]]  # noqa: E731
        assert ids(file=0) == ["astronaut-l5", "astronaut-l4", "astronaut-l3", None]
        assert ids(file=0, filter="judge-gold") == ["astronaut-l4"]  # gold 4, judge 1
        assert ids(file=0, filter="judge-gold", min_gap=4) == []
        assert ids(file=0, filter="unparsable") == ["astronaut-l3"]
        assert ids(file=0, filter="error") == [None]
        assert ids(file=1, filter="orders") == ["astronaut-l5-vs-l4"]
        assert ids(file=2, filter="wrong") == ["astronaut"]
        assert admin.get("/api/review", params={"filter": "bogus"}).status_code == 422
        # judge vs human: a human rates astronaut-l5 a 2, the judge said 5
        owner = next(w for w in ("alice", "bob") if any(i["sample_id"] == "astronaut-l5" for i in p.items(w)))
        iid = next(i["id"] for i in p.items(owner) if i["sample_id"] == "astronaut-l5")
        put(p.client(owner), iid, version=0, status="done", score=2)
        assert ids(file=0, filter="judge-human") == ["astronaut-l5"]
        entry = admin.get("/api/review", params={"file": 0}).json()["entries"][0]
        assert entry["human"]["scores"] == [2] and entry["probs"][4] == ["5", 0.8]
        page = admin.get("/review?file=0")
        assert page.status_code == 200
        assert "Grounded &lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
        assert admin.get("/review?file=1").status_code == 200 and admin.get("/review?file=2").status_code == 200
        assert pw.stat().st_size == size  # the torn last line was left alone
    finally:
        p.ctx.store.close()


# ---------------------------------------------------------------- escaping and files

def _hostile_dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (120, 80, 40)).save(root / "images" / "a.png")
    Image.new("RGB", (8, 8)).save(root.parent / "secret.png")
    (root / "images" / "link.png").symlink_to(root.parent / "secret.png")
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    rows = [
        {"id": "ok", "image": "images/a.png", "label": "fake", "response": f"<reasoning>{evil}</reasoning> <answer>fake</answer>",
         "artifacts": [{"category": "texture", "bbox": [1, 1, 20, 20], "expression": evil}]},
        {"id": "up", "image": "../secret.png", "label": "real"},
        {"id": "link", "image": "images/link.png", "label": "real"},
        {"id": "abs", "image": str(root.parent / "secret.png"), "label": "real"},
    ]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_explanations_render_as_text_and_files_stay_in_the_data_folder(tmp_path):
    data = _hostile_dataset(tmp_path / "set")
    opened = open_project(str(tmp_path / "h.db"), [str(data)], annotators=["alice"])
    try:
        problems = opened.loads[0].problems
        assert opened.loads[0].added == 1 and len(problems) == 3
        assert all("outside the data folder" in p for p in problems)
        app = create_app(opened.ctx)
        alice = TestClient(app)
        alice.headers["Authorization"] = f"Bearer {opened.tokens['alice']}"
        item = alice.get("/api/items").json()["items"][0]["id"]
        page = alice.get(f"/items/{item}").text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
        assert "<script>alert" not in page and "<img src=x" not in page
        # the page's JSON data block cannot close its script tag either
        assert "</script><img" not in page.split('id="page-data">', 1)[1].split("</script>", 1)[0]
        note = "<script>alert(2)</script>"
        put(alice, item, version=0, status="done", score=3, note=note)
        admin = TestClient(app)
        admin.headers["Authorization"] = f"Bearer {opened.tokens['admin']}"
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in admin.get(f"/items/{item}").text
        assert alice.get(f"/img/{item}").status_code == 200
        assert alice.get("/img/999").status_code == 404
        assert alice.get("/static/../db.py").status_code == 404
        assert alice.get("/static/%2e%2e/db.py").status_code == 404
    finally:
        opened.ctx.store.close()


def test_sqlite_runs_in_wal_mode(sqlite_project):
    from sqlalchemy import text

    with sqlite_project.ctx.store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_cli_rejects_bad_options(tmp_path, capsys):
    data = str(EXAMPLES / "detect.jsonl")
    assert main(["annotate", "--data", data, "--db", str(tmp_path / "x.db"), "--double-share", "2", "--export", str(tmp_path)]) == 2
    assert "--double-share 2.0" in capsys.readouterr().err
    assert main(["annotate", "--data", data, "--db", "sqlite://", "--export", str(tmp_path)]) == 2
    assert main(["annotate", "--data", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "x.db")]) == 2
    assert main(["annotate", "--data", data, "--db", str(tmp_path / "x.db"), "--results", "nope.jsonl"]) == 2


def test_cli_export_then_validate(tmp_path, data_dir, capsys):
    db = str(tmp_path / "cli.db")
    args = ["annotate", "--data", str(data_dir / "pointwise.jsonl"), "--db", db, "--annotator", "alice", "--export", str(tmp_path / "o1")]
    assert main(args) == 0
    assert (tmp_path / "o1" / "pointwise.jsonl").read_text() == ""  # nothing finished yet
    rows = [json.loads(line) for line in (data_dir / "pointwise.jsonl").read_text().splitlines()[:5]]
    imp = tmp_path / "prior.jsonl"
    imp.write_text("".join(json.dumps({**r, "score": 3}) + "\n" for r in rows))
    assert main(["annotate", "--data", str(data_dir / "pointwise.jsonl"), "--db", db, "--import", str(imp),
                 "--import-as", "alice", "--export", str(tmp_path / "o2")]) == 0
    out = tmp_path / "o2" / "pointwise.jsonl"
    assert main(["data", "validate", str(out)]) == 1  # its images are outside the export's folder...
    assert "--image-root" in capsys.readouterr().err
    assert main(["data", "validate", str(out), "--image-root", str(data_dir)]) == 0  # ...allowed by name
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in exported] == [r["id"] for r in rows]
    assert all(r["score"] == 3 for r in exported)
    assert any(r.get("original", {}).get("score") not in (None, 3) for r in exported)


def test_admin_pages_render_counts_and_annotations(sqlite_project):
    p = sqlite_project
    alice, admin = p.client("alice"), p.client("admin")
    item = p.items("alice", "annotate")[0]["id"]
    put(alice, item, version=0, status="done", label="fake", artifacts=[BOX], rationale="seams")
    overview = admin.get("/").text
    for n in (14, 70, 56):
        assert f"<td>{n}</td>" in overview
    assert "built-in method" not in overview
    page = admin.get(f"/items/{item}").text
    assert "the block letters on the visor" in page and 'width="100' in page  # alice's box drawn
    assert admin.get("/items/99999").status_code == 404


# ---------------------------------------------------------------- export → data validate → meta-eval

def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _meta_eval(capsys, kind: str, pred: Path, gold: Path) -> dict:
    capsys.readouterr()
    assert main(["meta-eval", kind, "--pred", str(pred), "--gold", str(gold), "--json", "--n-resamples", "50"]) == 0
    return {f["key"]: f for f in json.loads(capsys.readouterr().out)["figures"]}


def test_export_feeds_meta_eval_human_agreement(project, data_dir, tmp_path, capsys):
    """Two annotators rate the double-annotated items over HTTP; the export's human_scores /
    human_preferences give meta-eval's kappas, checked against sklearn on the ratings we sent."""
    from sklearn.metrics import cohen_kappa_score

    p, admin = project, project.client("admin")
    clients = {who: p.client(who) for who in ("alice", "bob")}
    sent: dict[str, dict[str, dict[str, object]]] = {}  # kind -> sample id -> {annotator: canonical rating}
    for kind in ("pointwise", "pairwise"):
        mine = {who: {i["id"]: i for i in p.items(who, kind)} for who in clients}
        shared = sorted(set(mine["alice"]) & set(mine["bob"]))
        alone = sorted(set(mine["alice"]) - set(mine["bob"]))[:3]  # single-annotated: one entry
        assert len(shared) >= 8
        sent[kind] = {}
        for n, iid in enumerate(shared + alone):
            if kind == "pointwise":
                ratings = {"alice": n % 5 + 1, "bob": min(5, n % 5 + 1 + n % 3 // 2)}
            else:
                ratings = {"alice": "AB"[n % 2], "bob": "AB"[n % 2] if n % 4 != 3 else "AB"[1 - n % 2]}
            view = p.admin_view(iid)
            for who, rating in ratings.items():
                if iid not in mine[who]:
                    continue
                if kind == "pointwise":
                    payload = {"score": rating}
                else:  # the annotator clicks the side where the canonical choice was shown
                    swapped = next(a["swapped"] for a in view["annotations"] if a["annotator"] == who)
                    payload = {"shown_choice": flip(rating) if swapped else rating}
                r = put(clients[who], iid, version=0, status="done", **payload)
                assert r.status_code == 200, r.text
                sent[kind].setdefault(mine[who][iid]["sample_id"], {})[who] = rating

    for kind, field, judge_field in (("pointwise", "human_scores", "score"), ("pairwise", "human_preferences", "choice")):
        r = admin.get(f"/api/export?dataset={kind}")
        gold = data_dir / f"{kind}.export-{uuid.uuid4().hex[:6]}.jsonl"  # beside the data: image paths resolve
        gold.write_text(r.text, encoding="utf-8")
        try:
            assert main(["data", "validate", str(gold)]) == 0
            rows = [json.loads(line) for line in r.text.splitlines()]
            assert {row["id"]: row[field] for row in rows} == sent[kind]
            for row in rows:
                info = row["annotation"]
                assert list(row[field]) == info["annotators"] and info["annotator"] == info["annotators"][0]
                assert row["score" if kind == "pointwise" else "preferred"] == row[field][info["annotator"]]
            # a judge that copies alice on even rows and gives 3 / "A" elsewhere
            judge = {row["id"]: (row[field]["alice"] if n % 2 == 0 and "alice" in row[field]
                                 else (3 if kind == "pointwise" else "A")) for n, row in enumerate(rows)}
            pred = write_rows(tmp_path / f"{kind}.pred.jsonl", [{"id": k, judge_field: v} for k, v in judge.items()])
            fig = _meta_eval(capsys, kind, pred, gold)
        finally:
            gold.unlink()
        opts = {"weights": "quadratic", "labels": [1, 2, 3, 4, 5]} if kind == "pointwise" else {"labels": ["A", "B"]}
        both = [h for h in sent[kind].values() if len(h) == 2]
        assert fig["kappa_alice_bob"]["n"] == len(both)
        assert fig["kappa_alice_bob"]["value"] == pytest.approx(
            cohen_kappa_score([h["alice"] for h in both], [h["bob"] for h in both], **opts))
        rated = [(h["alice"], judge[sid]) for sid, h in sent[kind].items() if "alice" in h]
        assert fig["kappa_judge_alice"]["n"] == len(rated)
        assert fig["kappa_judge_alice"]["value"] == pytest.approx(
            cohen_kappa_score([x for x, _ in rated], [y for _, y in rated], **opts))
        assert fig["alpha_annotators"]["n"] == len(both)


def test_export_moves_fields_that_contradict_the_human_under_original(tmp_path):
    """A pair's intended levels and a `target` that imply another judgement than the human's are
    kept under `original`, never beside the human's `score` / `preferred`; agreeing ones stay."""
    from deepfakejudge.train.examples import target_text

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 90, 90)).save(root / "images" / "a.png")
    base = {"image": "images/a.png", "label": "fake", "rationale": "a seam at the jaw"}
    answer = "<reasoning>seams</reasoning> <answer>fake</answer>"
    rows = [
        {**base, "id": "p-agree", "response": answer, "score": 4, "target": "<reasoning>ok</reasoning>\n<score>4</score>"},
        {**base, "id": "p-differ", "response": answer, "score": 4, "target": "<reasoning>ok</reasoning>\n<score>4</score>"},
        {**base, "id": "q-agree", "response_a": "x", "response_b": "y", "preferred": "B", "score_a": 1, "score_b": 5},
        {**base, "id": "q-differ", "response_a": "x", "response_b": "y", "preferred": "B", "score_a": 1, "score_b": 5,
         "target": "<answer>B</answer>"},
        {**base, "id": "q-tie", "response_a": "x", "response_b": "y", "preferred": "A", "score_a": 3, "score_b": 3},
    ]
    data = write_rows(root / "mixed.jsonl", rows)
    opened = open_project(str(tmp_path / "s.db"), [str(data)], annotators=["alice"], double_share=0)
    try:
        app = create_app(opened.ctx)
        alice, admin = TestClient(app), TestClient(app)
        alice.headers["Authorization"] = f"Bearer {opened.tokens['alice']}"
        admin.headers["Authorization"] = f"Bearer {opened.tokens['admin']}"
        human = {"p-agree": 4, "p-differ": 2, "q-agree": "B", "q-differ": "A", "q-tie": "A"}
        for it in alice.get("/api/items").json()["items"]:
            want = human[it["sample_id"]]
            if isinstance(want, int):
                payload = {"score": want}
            else:
                swapped = admin.get(f"/api/items/{it['id']}").json()["annotations"][0]["swapped"]
                payload = {"shown_choice": flip(want) if swapped else want}
            assert put(alice, it["id"], version=0, status="done", **payload).status_code == 200
        out = root / "export.jsonl"
        out.write_text(admin.get("/api/export?dataset=mixed").text, encoding="utf-8")
    finally:
        opened.ctx.store.close()
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    strip = ("annotation", "human_scores", "human_preferences")
    got = {k: {f: v for f, v in r.items() if f not in strip} for k, r in got.items()}
    assert got["p-agree"] == rows[0]  # nothing to move: the target says 4, so did alice
    assert got["p-differ"] == {**{k: v for k, v in rows[1].items() if k != "target"}, "score": 2,
                               "original": {"score": 4, "target": rows[1]["target"]}}
    assert got["q-agree"] == rows[2]
    assert got["q-differ"] == {**{k: v for k, v in rows[3].items() if k not in ("score_a", "score_b", "target")},
                               "preferred": "A",
                               "original": {"preferred": "B", "score_a": 1, "score_b": 5, "target": "<answer>B</answer>"}}
    assert got["q-tie"] == {**{k: v for k, v in rows[4].items() if k not in ("score_a", "score_b")},
                            "original": {"score_a": 3, "score_b": 3}}  # equal levels prefer neither
    # what is left is consistent: `dfj train` accepts every exported target, `dfj data validate` the file
    targets = {s.id: target_text(s, "pointwise" if s.response else "pairwise") for s in load_records(out).samples}
    assert targets["p-differ"].endswith("<score>2</score>") and targets["q-differ"].endswith("<answer>A</answer>")
    assert main(["data", "validate", str(out)]) == 0
