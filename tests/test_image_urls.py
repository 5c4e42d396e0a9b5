"""Images named by URL (data/urls.py): `memory://` (fsspec's in-process filesystem) and `http://`
from a real server on 127.0.0.1 give the same judgements as the same images on disk; a missing URL
is one error row; a protocol without its package stops the run once, before any model loads; the
other dataset consumers keep or refuse URLs as documented; `--engine ray` replicas read http:// images."""

from __future__ import annotations

import functools
import io
import json
import shutil
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from deepfakejudge.cli import main
from deepfakejudge.data import load_records, open_image
from deepfakejudge.data.urls import is_url

SMALL = ["--max-pixels", str(16 * 28 * 28), "--device", "cpu"]
NAMES = ("a.png", "b.png", "c.jpg")


def rows_by_id(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}), "an id was written twice"
    return {r["id"]: r for r in rows}


def pointwise(model, data, out, *extra):
    return ["judge", "pointwise", "--model", str(model), "--data", str(data), "--out", str(out), "--mode", "score-only",
            "--batch-size", "2", "--allow-errors", "--json", *SMALL, *extra]


def write_data(path: Path, images: list[str]) -> Path:
    """Six rows over `images` (cycled), then one row whose image does not exist (`gone`)."""
    rows = [{"id": f"r{i}", "image": images[i % len(images)], "label": "fake" if i % 2 else "real",
             "response": f"<reasoning>Region {i} is smeared.</reasoning> <answer>fake</answer>"} for i in range(6)]
    rows.append({"id": "gone", "image": images[0].rsplit("/", 1)[0] + "/absent.png" if "/" in images[0] else "absent.png",
                 "label": "fake", "response": "<reasoning>x</reasoning>"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("url-images")
    rng = np.random.default_rng(7)
    for i, name in enumerate(NAMES):
        Image.fromarray(rng.integers(0, 256, (30 + 10 * i, 40, 3), dtype=np.uint8)).save(d / name)
    return d


@pytest.fixture(scope="module")
def http_base(image_dir):
    """`image_dir` served over HTTP on 127.0.0.1 (stdlib server in a thread)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(image_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def memory_images(image_dir, request):
    """The images copied into fsspec's memory filesystem under a folder of this test's own."""
    fs = fsspec.filesystem("memory")
    root = f"/dfj-{request.node.name}"
    for name in NAMES:
        fs.pipe_file(f"{root}/{name}", (image_dir / name).read_bytes())
    yield f"memory:/{root}"
    fs.rm(root, recursive=True)


@pytest.fixture(scope="module")
def disk_rows(tiny_model_dir, image_dir, tmp_path_factory):
    """The pointwise rows for the images on disk: what every URL run must reproduce."""
    d = tmp_path_factory.mktemp("disk")
    for name in NAMES:
        shutil.copy(image_dir / name, d / name)
    data = write_data(d / "data.jsonl", list(NAMES))
    assert main(pointwise(tiny_model_dir, data, d / "out.jsonl")) == 0
    return rows_by_id(d / "out.jsonl")


def same_judgements(got: dict, want: dict, tol: float = 0.0) -> None:
    """Same ids; the judged rows equal field by field (floats within `tol`); the bad image an error
    row in both."""
    assert got.keys() == want.keys()
    for key, row in want.items():
        if key == "gone":
            assert got[key]["field"] == row["field"] == "image"
            continue
        assert got[key].keys() == row.keys(), key
        for field, value in row.items():
            if isinstance(value, (float, dict)):
                assert got[key][field] == pytest.approx(value, abs=tol), (key, field)
            else:
                assert got[key][field] == value, (key, field)


def test_memory_urls_judge_like_files_on_disk(tiny_model_dir, memory_images, disk_rows, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl", [f"{memory_images}/{name}" for name in NAMES])
    out = tmp_path / "out.jsonl"
    assert main(pointwise(tiny_model_dir, data, out)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["judged"] == 6 and summary["errors"] == 1
    rows = rows_by_id(out)
    same_judgements(rows, disk_rows)
    gone = rows["gone"]
    assert gone["field"] == "image" and gone["where"] == f"{data}:7"
    assert f"not found: {memory_images}/absent.png" in gone["error"]


def test_http_urls_judge_like_files_on_disk(tiny_model_dir, http_base, disk_rows, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl", [f"{http_base}/{name}" for name in NAMES])
    out = tmp_path / "out.jsonl"
    assert main(pointwise(tiny_model_dir, data, out)) == 0
    assert json.loads(capsys.readouterr().out)["judged"] == 6
    rows = rows_by_id(out)
    same_judgements(rows, disk_rows)
    assert rows["gone"]["field"] == "image" and rows["gone"]["where"] == f"{data}:7"
    assert f"{http_base}/absent.png" in rows["gone"]["error"]


def _outputs(tiny_model_dir, data: Path, folder: Path, capsys) -> dict[str, object]:
    """What pointwise and pairwise judging, detection, reason score (with its judge) and meta-eval make of `data`."""
    model = ["--model", str(tiny_model_dir), *SMALL, "--batch-size", "2", "--allow-errors", "--json"]
    assert main(["judge", "pairwise", "--data", str(data), "--out", str(folder / "pair.jsonl"), "--mode", "score-only",
                 *model]) == 0
    assert main(["judge", "pointwise", "--data", str(data), "--out", str(folder / "point.jsonl"), "--mode",
                 "score-only", *model]) == 0
    assert main(["detect", "run", "--data", str(data), "--out", str(folder / "det.jsonl"), "--max-new-tokens", "4",
                 *model]) == 0
    pred = folder / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": f"r{i}", "response": f"<reasoning>Region {i}.</reasoning> "
                                        "<answer>fake</answer>"}) + "\n" for i in range(6)))
    assert main(["reason", "score", "--pred", str(pred), "--gold", str(data), "--judge", str(tiny_model_dir),
                 "--judge-mode", "score-only", "--device", "cpu", "--max-pixels", str(16 * 28 * 28),
                 "--no-reference-check", "--allow-errors", "--json", "--details", str(folder / "reason.jsonl")]) == 0
    capsys.readouterr()
    assert main(["meta-eval", "pointwise", "--pred", str(folder / "point.jsonl"), "--gold", str(data), "--json",
                 "--n-resamples", "20"]) == 1  # 1: the `gone` row's judge error is reported
    meta = json.loads(capsys.readouterr().out)
    out: dict[str, object] = {name: rows_by_id(folder / f"{name}.jsonl") for name in ("point", "pair", "det")}
    out["reason"] = [json.loads(line)["dfj_score"] for line in (folder / "reason.jsonl").read_text().splitlines()]
    out["meta"] = {k: meta[k] for k in ("counts", "figures")}
    return out


def test_pairwise_detect_reason_and_meta_eval_read_memory_urls_like_files(tiny_model_dir, image_dir, memory_images,
                                                                           tmp_path, capsys):
    results = []
    for where, images in (("disk", list(NAMES)), ("url", [f"{memory_images}/{name}" for name in NAMES])):
        folder = tmp_path / where
        for name in NAMES:
            folder.mkdir(exist_ok=True)
            shutil.copy(image_dir / name, folder / name)
        data = write_data(folder / "data.jsonl", images)
        # pairwise fields and a gold score, so that every command finds what it needs
        rows = [dict(json.loads(line), response_a="<reasoning>A</reasoning> <answer>fake</answer>",
                     response_b="<reasoning>B</reasoning> <answer>real</answer>", score=3, rationale="smear")
                for line in data.read_text().splitlines()]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results.append(_outputs(tiny_model_dir, data, folder, capsys))
    disk, url = results
    for name in ("point", "pair", "det"):
        same_judgements(url[name], disk[name])
        assert len(url[name]) == 7 and url[name]["gone"]["field"] == "image"
    assert url["reason"] == disk["reason"] and len(url["reason"]) == 6
    assert url["meta"] == disk["meta"] and url["meta"]["counts"]["joined"] == 6, url["meta"]


def test_bootstrap_reads_memory_urls_and_writes_them_as_urls(tmp_path):
    from test_bootstrap import Scripted, config, make_data, run  # the scripted generator + evaluator

    data = make_data(tmp_path, n=3)
    fs = fsspec.filesystem("memory")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for r in rows:
        fs.pipe_file(f"/dfj-boot/{r['image']}", (tmp_path / r["image"]).read_bytes())
        (tmp_path / r["image"]).unlink()  # only the URL can be read
        r["image"] = f"memory://dfj-boot/{r['image']}"
    urls = tmp_path / "urls.jsonl"
    urls.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        result = run(config(tmp_path, urls), Scripted())
    finally:
        fs.rm("/dfj-boot", recursive=True)
    assert result.summary["complete"] and result.summary["errors"] == 0
    written = {json.loads(line)["image"] for name in ("pointwise-train", "pairwise-test")
               for line in (result.out / f"{name}.jsonl").read_text().splitlines()}
    swift = {json.loads(line)["images"][0]
             for line in (result.out / "msswift" / "pointwise-train.jsonl").read_text().splitlines()}
    assert written == {r["image"] for r in rows} and swift <= written and swift


def test_unreachable_server_is_an_error_for_the_row(tmp_path):
    from deepfakejudge.errors import InputError

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x", "image": "http://127.0.0.1:9/none.png", "label": "fake"}) + "\n")
    (sample,) = load_records(data).samples
    with pytest.raises(InputError, match=r"http://127\.0\.0\.1:9/none\.png \(ClientConnectorError: Cannot connect"):
        open_image(sample)


def _only_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, not one per row
    return err[0]


def test_unknown_protocol_stops_the_run_once_before_the_model(tmp_path, capsys):
    rows = [{"id": f"r{i}", "image": f"nosuchfs://bucket/{i}.png", "label": "fake", "response": "x"} for i in range(50)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A model that does not exist: had it been opened first, this would be a model error.
    code = main(pointwise(tmp_path / "no-model", data, tmp_path / "out.jsonl"))
    assert code == 2
    line = _only_error_line(capsys)
    assert f"{data}:1: field 'image': nosuchfs://bucket/0.png: no filesystem is known for nosuchfs://" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_protocol_without_its_package_names_the_pip_line(tmp_path, capsys, monkeypatch):
    # A protocol registered with fsspec whose package is not installed, as s3:// is without s3fs.
    known = sys.modules["fsspec.registry"].known_implementations  # `fsspec.registry` is the registry's mapping
    monkeypatch.setitem(known, "dfjtestfs",
                        {"class": "dfj_absent_fs.DFJFileSystem", "err": "Install dfj_absent_fs to access dfjtestfs"})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "image": f"dfjtestfs://b/{i}.png", "label": "real",
                                        "response": "x"}) + "\n" for i in range(20)))
    assert main(pointwise(tmp_path / "no-model", data, tmp_path / "out.jsonl")) == 2
    line = _only_error_line(capsys)
    assert f"{data}:1: field 'image': dfjtestfs://b/0.png: fsspec cannot read dfjtestfs:// URLs without " \
           "dfj_absent_fs" in line and line.endswith("pip install dfj_absent_fs")


def test_without_universal_pathlib_the_extra_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "upath", None)  # as if universal-pathlib were not installed
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "https://example.org/a.png", "label": "real"}) + "\n")
    assert main(["data", "stats", str(data)]) == 2
    line = _only_error_line(capsys)
    assert f"{data}:1: field 'image': https://example.org/a.png" in line
    assert line.endswith("pip install 'deepfakejudge[remote-images]'")


def test_a_replaced_object_is_never_served_from_the_decode_cache(tmp_path):
    fs = fsspec.filesystem("memory")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "memory://dfj-cache/x.png", "label": "real"}) + "\n")
    (sample,) = load_records(data).samples
    try:
        for colour in [(255, 0, 0), (0, 0, 255)]:  # same size, same format: only the content changes
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), colour).save(buf, "PNG")
            fs.pipe_file("/dfj-cache/x.png", buf.getvalue())
            assert open_image(sample).image.getpixel((0, 0)) == colour
        assert open_image(sample) is open_image(sample)  # unchanged: decoded once
    finally:
        fs.rm("/dfj-cache", recursive=True)


def test_urls_are_kept_as_urls_and_never_confined(http_base, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "x.png")
    data = tmp_path / "d" / "data.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "u", "image": f"{http_base}/a.png", "label": "fake"},
        # file:// names a local file: confined to the data folder like any path
        {"id": "f", "image": (outside / "x.png").as_uri(), "label": "fake"},
        {"id": "h", "image": "file://otherhost/x.png", "label": "fake"},
    ]))
    dataset = load_records(data, image_roots=[])
    (url,) = dataset.samples
    assert is_url(url.image) and str(url.image) == f"{http_base}/a.png" and url.image.name == "a.png"
    assert [(e.id, e.field) for e in dataset.errors] == [("f", "image"), ("h", "image")]
    assert "resolves outside the data folder" in dataset.errors[0].message
    allowed = load_records(data, image_roots=[outside])
    assert [s.id for s in allowed.samples] == ["u", "f"] and allowed.samples[1].image == outside / "x.png"


def test_validate_and_stats_with_urls(http_base, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "image": f"{http_base}/a.png", "label": "fake"},
        {"id": "b", "image": f"{http_base}/a.png", "label": "real"},
        {"id": "c", "image": f"{http_base}/missing.png", "label": "real"},
    ]))
    for extra in ([], ["--no-images"]):  # --no-images still asks each URL for its metadata
        assert main(["data", "validate", str(data), "--json", *extra]) == 1
        out = capsys.readouterr()
        assert json.loads(out.out)["problems"] == 1
        assert out.err.strip() == f"{data}:3: field 'image': not found: {http_base}/missing.png"
    assert main(["data", "stats", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 2


def test_msswift_export_keeps_urls_and_reads_them_back(http_base, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "image": f"{http_base}/a.png", "label": "fake", "score": 4,
                                "response": "<reasoning>r</reasoning> <answer>fake</answer>",
                                "rationale": "The hand has six fingers."}) + "\n")
    out = tmp_path / "swift.jsonl"
    assert main(["data", "convert", str(data), "--to", "msswift", "--out", str(out), "--kind", "pointwise"]) == 0
    capsys.readouterr()
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["images"] == [f"{http_base}/a.png"]
    (back,) = load_records(out).samples  # the ms-swift row read back: the URL is still a URL
    assert is_url(back.image) and str(back.image) == f"{http_base}/a.png"


def test_train_refuses_url_images_with_one_clear_error(tiny_model_dir, http_base, tmp_path):
    from deepfakejudge.backends.processor import ImageTextProcessor
    from deepfakejudge.errors import InputError
    from deepfakejudge.prompts import default_template
    from deepfakejudge.train.prepare import prepare_examples

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "image": f"{http_base}/a.png", "label": "fake", "score": 4,
                                "response": "<reasoning>r</reasoning> <answer>fake</answer>"}) + "\n")
    processor = ImageTextProcessor.from_pretrained(str(tiny_model_dir), 3136, 16 * 28 * 28)
    with pytest.raises(InputError, match=rf"{data}:1: field 'image': {http_base}/a.png: dfj train reads images "
                                         "from local files only"):
        prepare_examples(data, default_template("pointwise"), processor, 4096)


def test_annotation_app_refuses_url_images_and_loads_the_rest(http_base, image_dir, tmp_path):
    from deepfakejudge.annotate.db import Store
    from deepfakejudge.annotate.store import load_dataset

    shutil.copy(image_dir / "a.png", tmp_path / "a.png")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "local", "image": "a.png", "label": "fake"},
        {"id": "url", "image": f"{http_base}/a.png", "label": "fake"},
    ]))
    store = Store(str(tmp_path / "app.sqlite"))
    try:
        with store.write() as session:
            report = load_dataset(session, data)
    finally:
        store.close()
    assert report.added == 1
    assert report.problems == (f"{data}:2: field 'image': {http_base}/a.png is a URL; the app serves images from the "
                               "data folder only: download the image into it and name it by its path",)


@pytest.fixture(scope="module")
def ray_address():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_replica_reads_http_images(ray_address, tiny_model_dir, http_base, disk_rows, tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl", [f"{http_base}/{name}" for name in NAMES])
    out = tmp_path / "out.jsonl"
    argv = pointwise(tiny_model_dir, data, out, "--engine", "ray", "--replicas", "1", "--cpus-per-replica", "1",
                     "--ray-address", ray_address)
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["judged"] == 6 and sum(summary["engine"]["items_per_replica"].values()) == 7
    same_judgements(rows_by_id(out), disk_rows, tol=1e-5)  # a replica runs torch on one thread


def test_a_pool_reads_each_url_once_and_the_distinct_ones_in_parallel(image_dir, tmp_path):
    """Twelve rows over three URLs plus a missing one: each image is fetched once however many rows
    name it, the fetches overlap (the server sees several in flight), and rows keep their order."""
    from deepfakejudge.judge.common import prepare_all

    state = {"now": 0, "most": 0, "gets": {}}
    lock = threading.Lock()
    arrived = threading.Barrier(2, timeout=5)  # a GET waits here until another arrives beside it

    class Counting(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
                state["gets"][self.path] = state["gets"].get(self.path, 0) + 1
            try:
                arrived.wait()
            except threading.BrokenBarrierError:
                pass
            try:
                super().do_GET()
            finally:
                with lock:
                    state["now"] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(image_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        names = [NAMES[i % 3] for i in range(12)] + ["absent.png"]
        data = tmp_path / "d.jsonl"
        data.write_text("".join(json.dumps({"id": f"r{i}", "image": f"{base}/{n}", "label": "fake", "response": "x"}) + "\n"
                                for i, n in enumerate(names)))
        samples = load_records(data).samples
        prepared = prepare_all(samples, ("response",))
    finally:
        server.shutdown()
        server.server_close()
    assert [p.sample.id for p in prepared[:12]] == [f"r{i}" for i in range(12)]
    assert [p.image.size for p in prepared[:3]] == [Image.open(image_dir / n).size for n in NAMES]
    assert prepared[12].field == "image" and "absent.png" in prepared[12].message
    image_gets = {k: v for k, v in state["gets"].items() if k != "/absent.png"}
    assert image_gets == {f"/{n}": 1 for n in NAMES}, state["gets"]
    assert state["most"] >= 2
