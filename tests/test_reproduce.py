"""`dfj data fetch`, split names, the paper's figures and `dfj reproduce`, end to end on the tiny
model over a fake copy of the released data (written here, in the released layout), locally and
through a real `dfj serve` on 127.0.0.1. No network: the hub is offline for every test."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import pearsonr
from serving import NAME, SMALL_PIXELS, Server, free_port
from sklearn.metrics import f1_score

from deepfakejudge.cli import main
from deepfakejudge.data import load_records
from deepfakejudge.data.splits import SPLITS, resolve_split
from deepfakejudge.reason import default_minilm_path, explanation
from deepfakejudge.reproduce import TABLES, paper_row

# Stand-in templates of the released shape (CRLF line ends, a literal-brace placeholder the
# filler must leave alone); our own words, not the authors'.
POINTWISE = ("Judge the explanation of an image whose true class is {ground_truth_label}.\r\n"
             "Explanation:\r\n{candidate_response}\r\n"
             "Answer <reasoning>why</reasoning> then <score>{integer score from 1 to 5}</score>.\r\n")
PAIRWISE = ("True class: {ground_truth_label}.\r\nFirst:\r\n{response_a}\r\nSecond:\r\n{response_b}\r\n"
            "Answer <answer>{A or B}</answer>.\r\n")
GOOD = "<reasoning>The fence is smeared in the upper left and the shadow points the wrong way.</reasoning> <answer>fake</answer>"
BAD = "<reasoning>Everything looks natural and consistent.</reasoning> <answer>real</answer>"
LIMIT = 20


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def images(folder: Path, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"images/im{i}.png"
        Image.fromarray(rng.integers(0, 256, (30 + 5 * i, 40 + 3 * i, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def fill(template: str, **values) -> str:
    text = template.replace("\r\n", "\n")
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return text


def build_release(root: Path, templates: Path) -> Path:
    """A small copy of the released data: the dataset card's folders, ms-swift rows for DFJ-Meta,
    canonical rows elsewhere; more rows than --limit everywhere."""
    (templates / "pointwise.txt").write_bytes(POINTWISE.encode())
    (templates / "pairwise.txt").write_bytes(PAIRWISE.encode())
    labels = ("fake", "real", "edited")
    # DFJ-Meta pointwise test: 5 images x 5 levels, ms-swift form, the gold score in the target.
    split = root / "dfj-meta" / "dfj-meta-pointwise" / "test"
    ims = images(split, 5, 1)
    rows = []
    for i in range(25):
        label, level = labels[i % 5 % 3], 1 + i % 5
        user = "<image>" + fill(POINTWISE, ground_truth_label=label, candidate_response=f"{GOOD} level {level} #{i}")
        rows.append({"messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": f"<reasoning>ok</reasoning>\n<score>{level}</score>"}],
                     "images": [ims[i // 5]]})
    write_jsonl(split / "data.jsonl", rows)
    # DFJ-Meta pairwise test: ms-swift form, the gold preference in the target.
    split = root / "dfj-meta" / "dfj-meta-pairwise" / "test"
    ims = images(split, 5, 2)
    rows = []
    for i in range(25):
        a, b = (GOOD, BAD) if i % 2 else (BAD, GOOD)
        user = "<image>" + fill(PAIRWISE, ground_truth_label="fake", response_a=f"{a} #{i}", response_b=f"{b} #{i}")
        rows.append({"messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": f"<answer>{'A' if i % 2 else 'B'}</answer>"}],
                     "images": [ims[i % 5]]})
    write_jsonl(split / "data.jsonl", rows)
    # DFJ-Meta-Human: canonical rows with human ratings.
    split = root / "dfj-meta-human" / "pointwise"
    ims = images(split, 4, 3)
    write_jsonl(split / "data.jsonl", [
        {"id": f"hp{i}", "image": ims[i % 4], "label": labels[i % 3], "response": f"{GOOD} #{i}", "score": 1 + i % 5,
         "human_scores": {"ann1": 1 + i % 5, "ann2": 1 + (i + 1) % 5}} for i in range(22)])
    split = root / "dfj-meta-human" / "pairwise"
    ims = images(split, 4, 4)
    write_jsonl(split / "data.jsonl", [
        {"id": f"hq{i}", "image": ims[i % 4], "label": "fake", "response_a": f"{GOOD} #{i}", "response_b": f"{BAD} #{i}",
         "preferred": "AB"[i % 2]} for i in range(22)])
    # DFJ-Detect and DFJ-Reason.
    split = root / "dfj-bench" / "dfj-detect"
    ims = images(split, 6, 5)
    write_jsonl(split / "data.jsonl", [
        {"id": f"d{i}", "image": ims[i % 6], "label": labels[i % 3], "source": ("openimages", "gemini", "qwen-edit")[i % 3]}
        for i in range(24)])
    split = root / "dfj-bench" / "dfj-reason"
    ims = images(split, 6, 6)
    write_jsonl(split / "data.jsonl", [
        {"id": f"r{i}", "image": ims[i % 6], "label": labels[i % 3],
         "rationale": "The fence in the upper left is smeared and the shadow points the wrong way.",
         "artifacts": [{"category": "texture", "bbox": [1, 1, 10, 10], "expression": "the smeared fence"}]}
        for i in range(24)])
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    base = tmp_path_factory.mktemp("release")
    (base / "templates").mkdir()
    return build_release(base / "DeepfakeJudge-Dataset", base / "templates"), base / "templates"


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """Other detectors' outputs: DFJ-Detect predictions (some unparsable) and DFJ-Reason explanations."""
    base = tmp_path_factory.mktemp("preds")
    detect = write_jsonl(base / "gpt.jsonl", [
        {"id": f"d{i}", "prediction": (None if i % 7 == 3 else ("fake", "real")[(i // 2) % 2])} for i in range(24)])
    reason = write_jsonl(base / "sida.jsonl", [
        {"id": f"r{i}", "response": (GOOD if i % 2 else BAD).replace("fence", f"fence {i}")} for i in range(24)])
    return detect, reason


def reproduce_argv(out, root, templates, *extra):
    return ["reproduce", "--out", str(out), "--data-root", str(root), "--sizes", "3B",
            "--pointwise-template", str(templates / "pointwise.txt"), "--pairwise-template", str(templates / "pairwise.txt"),
            "--pointwise-mode", "score-only", "--limit", str(LIMIT), "--max-pixels", SMALL_PIXELS, "--device", "cpu",
            "--max-new-tokens", "8", "--n-resamples", "50", *extra]


@pytest.fixture(scope="module")
def local_run(release, predictions, tiny_model_dir, tmp_path_factory):
    root, templates = release
    detect, reason = predictions
    out = tmp_path_factory.mktemp("reproduce-local")
    rc = main(reproduce_argv(out, root, templates, "--judge-model", str(tiny_model_dir),
                             "--detect-pred", f"gpt-4o-mini={detect}", "--reason-pred", f"SIDA={reason}",
                             "--detector-model", str(tiny_model_dir), "--detector-name", "tiny-detector",
                             "--bertscore-model", str(default_minilm_path())))
    return rc, out


def table(report, key):
    return next(t for t in report["tables"] if t["table"] == key)


def gold_by_id(split):
    return {s.id: s for s in load_records(split).samples}


# -- the released data by name ----------------------------------------------------------------------


def test_split_names_resolve_under_the_root(release, tmp_path, monkeypatch, capsys):
    root, _ = release
    assert resolve_split("dfj-meta/pointwise/test", root) == root / "dfj-meta/dfj-meta-pointwise/test/data.jsonl"
    monkeypatch.setenv("DFJ_DATA", str(root))
    assert len(load_records("dfj-meta/pairwise/test", templates=_templates(release, "pairwise"))) == 25
    assert len(load_records("dfj-meta-human/pointwise")) == 22
    # Tolerant layouts: the short folder name, a folder with one .jsonl, a <name>.jsonl file.
    alt = tmp_path / "alt"
    write_jsonl(alt / "dfj-meta" / "pointwise" / "test" / "rows.jsonl", [{"id": "x", "image": "a.png", "label": "real"}])
    write_jsonl(alt / "dfj-bench" / "dfj-detect.jsonl", [{"id": "y", "image": "a.png", "label": "fake"}])
    assert resolve_split("dfj-meta/pointwise/test", alt).name == "rows.jsonl"
    assert resolve_split("dfj-bench/dfj-detect", alt) == alt / "dfj-bench" / "dfj-detect.jsonl"
    with pytest.raises(ValueError, match="names several splits; use one of dfj-meta-human/pointwise"):
        resolve_split("dfj-meta-human", root)
    with pytest.raises(ValueError, match=r"not under .*dfj data fetch"):
        resolve_split("dfj-bench/dfj-reason", alt)
    # Every command's --data takes a name; --data-root wins over DFJ_DATA; a real path wins over a name.
    monkeypatch.setenv("DFJ_DATA", str(tmp_path / "nowhere"))
    assert main(["data", "stats", "dfj-bench/dfj-detect", "--data-root", str(root), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 24 and stats["data"] == str(root / "dfj-bench/dfj-detect/data.jsonl")
    assert main(["data", "stats", "dfj-bench/dfj-detect", "--json"]) == 2
    assert "dfj data fetch" in capsys.readouterr().err


def test_fetch_offline_is_one_clear_line(tmp_path, capsys):
    # conftest forces HF_HUB_OFFLINE=1: nothing leaves the machine.
    assert main(["data", "fetch", "--out", str(tmp_path / "d"), "--split", "dfj-meta-human"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "offline" in err and "MBZUAI/DeepfakeJudge-Dataset" in err


def test_fetch_gated_and_layout(tmp_path, monkeypatch, capsys, release):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    calls = []

    def gated(repo_id, **kw):
        calls.append((repo_id, kw))
        import httpx

        url = "https://huggingface.co/api/datasets/MBZUAI/DeepfakeJudge-Dataset"
        raise GatedRepoError("403 Client Error: access to this repo is restricted",
                             response=httpx.Response(403, request=httpx.Request("GET", url)))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    assert main(["data", "fetch", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "gated" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert calls[0][0] == "MBZUAI/DeepfakeJudge-Dataset" and calls[0][1]["repo_type"] == "dataset"
    assert calls[0][1]["allow_patterns"] is None  # everything

    # A download that lands the card's layout: the splits are then found by name.
    source, _ = release

    def copy(repo_id, *, local_dir, allow_patterns, **kw):
        import fnmatch
        import shutil

        calls.append((repo_id, allow_patterns))
        for f in source.rglob("*"):
            rel = f.relative_to(source).as_posix()
            if f.is_file() and (allow_patterns is None or any(fnmatch.fnmatch(rel, p) for p in allow_patterns)):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, Path(local_dir) / rel)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", copy)
    out = tmp_path / "d"
    assert main(["data", "fetch", "--out", str(out), "--split", "dfj-meta-human", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert sorted(got["splits"]) == ["dfj-meta-human/pairwise", "dfj-meta-human/pointwise"]
    assert "dfj-bench/dfj-detect" in got["absent"] and len(got["absent"]) == len(SPLITS) - 2
    assert len(load_records(resolve_split("dfj-meta-human/pairwise", out))) == 22


# -- the paper's figures --------------------------------------------------------------------------


def test_paper_figures_are_data_with_their_table():
    # Pinned: a changed figure is a reviewed change.
    assert paper_row("pointwise-dfj-meta", "DeepfakeJudge-7B") == {"rmse": 0.61, "pearson": 0.93}
    assert paper_row("pairwise-dfj-meta-human", "deepfakejudge 7b") == {"accuracy": 0.989}
    assert paper_row("dfj-detect", "Qwen-3-VL-235B-Thinking") == {"real_f1": 0.766, "fake_f1": 0.798, "accuracy": 0.637}
    assert paper_row("dfj-reason", "GPT-4o-mini") == {"bleu3": 0.01, "bertscore": 0.35, "dfj_score": 2.83}
    assert paper_row("pointwise-dfj-meta-human", "DeepfakeJudge-3B") is None  # not published
    for t in TABLES.values():
        assert "Pixels Don't Lie" in t.source and t.title in t.source and t.dataset in SPLITS
        for figures in t.rows.values():
            assert set(figures) == set(t.metrics)


# -- dfj reproduce --------------------------------------------------------------------------------


def test_missing_data_says_what_to_fetch(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "--out", str(out), "--data-root", str(tmp_path / "empty"), "--judge-model", "x"]) == 2
    err = capsys.readouterr().err
    assert "dfj data fetch" in err and "dfj-meta/pointwise/test" in err and "dfj-meta-human/pairwise" in err
    assert not out.exists()  # nothing run, nothing written


def test_reproduce_locally_end_to_end(local_run, release, predictions):
    rc, out = local_run
    assert rc == 0
    root, _ = release
    report = json.loads((out / "report.json").read_text())
    markdown = (out / "report.md").read_text()

    # Pointwise meta-evaluation: the paper's figure beside ours, ours recomputed here from the rows.
    for key, split in (("pointwise-dfj-meta", "dfj-meta/pointwise/test"), ("pointwise-dfj-meta-human", "dfj-meta-human/pointwise")):
        t = table(report, key)
        assert len(t["rows"]) == 1
        row = t["rows"][0]
        assert row["paper"] == paper_row(key, "DeepfakeJudge-3B") and row["n"] == LIMIT
        assert row["run"]["template"].endswith("pointwise.txt") and row["run"]["mode"] == "score-only"
        name = "dfj-meta" if key == "pointwise-dfj-meta" else "dfj-meta-human"
        results = rows_of(out / "meta" / "3B-pointwise" / f"{name}.jsonl")
        assert len(results) == LIMIT
        gold = {s.id: s.score for s in load_records(resolve_split(split, root), templates=_templates(release, "pointwise")).samples}
        pairs = [(gold[r["id"]], r["score"]) for r in results if r.get("score") is not None]
        g, p = np.array(pairs, dtype=float).T
        assert row["ours"]["rmse"] == pytest.approx(math.sqrt(np.mean((g - p) ** 2)))
        expected_r = None if np.std(p) == 0 else pearsonr(g, p).statistic
        assert (row["ours"]["pearson"] is None) == (expected_r is None)
        if expected_r is not None:
            assert row["ours"]["pearson"] == pytest.approx(expected_r)
    assert paper_row("pointwise-dfj-meta-human", "DeepfakeJudge-3B") is None

    # Pairwise: one order as published (the A, B pass), our both-orders figure beside it.
    for key, name, split in (("pairwise-dfj-meta", "dfj-meta", "dfj-meta/pairwise/test"),
                             ("pairwise-dfj-meta-human", "dfj-meta-human", "dfj-meta-human/pairwise")):
        row = table(report, key)["rows"][0]
        assert row["paper"] == paper_row(key, "DeepfakeJudge-3B") and row["n"] == LIMIT
        gold = {s.id: s.preferred for s in load_records(resolve_split(split, root), templates=_templates(release, "pairwise")).samples}
        results = rows_of(out / "meta" / "3B-pairwise" / f"{name}.jsonl")
        assert len(results) == LIMIT and all(len(r["orders"]) == 2 for r in results)
        first = [next(o["choice"] for o in r["orders"] if not o["swapped"]) for r in results]
        assert row["ours"]["accuracy"] == pytest.approx(np.mean([c == gold[r["id"]] for c, r in zip(first, results)]))
        assert row["accuracy_both_orders"] == pytest.approx(np.mean([r["choice"] == gold[r["id"]] for r in results]))
        assert row["consistency"] == pytest.approx(np.mean([r["agree"] for r in results]))

    # DFJ-Detect: given predictions compared under the paper's policy (F1 over parsed answers),
    # the headline F1s beside; a VLM detector run on the first LIMIT images.
    t = table(report, "dfj-detect")
    gpt = next(r for r in t["rows"] if r["model"] == "gpt-4o-mini")
    assert gpt["paper_model"] == "GPT-4o-mini" and gpt["paper"] == {"real_f1": 0.702, "fake_f1": 0.358, "accuracy": 0.593}
    gold = gold_by_id(root / "dfj-bench/dfj-detect")
    ids = list(gold)[:LIMIT]
    pred = {r["id"]: r["prediction"] for r in rows_of(predictions[0])}
    y = ["real" if gold[i].label == "real" else "fake" for i in ids]
    p = [pred[i] or "none" for i in ids]
    parsed = [(a, b) for a, b in zip(y, p) if b != "none"]
    real, fake = f1_score([a for a, _ in parsed], [b for _, b in parsed], labels=["real", "fake"], average=None)
    assert gpt["n"] == LIMIT and gpt["unparsable"] == sum(b == "none" for b in p)
    assert gpt["ours"]["real_f1"] == pytest.approx(real) and gpt["ours"]["fake_f1"] == pytest.approx(fake)
    assert gpt["ours"]["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(y, p)]))
    hreal, hfake = f1_score(y, p, labels=["real", "fake"], average=None)
    assert gpt["headline_real_f1"] == pytest.approx(hreal) and gpt["headline_fake_f1"] == pytest.approx(hfake)
    tiny = next(r for r in t["rows"] if r["model"] == "tiny-detector")
    assert tiny["paper"] is None and tiny["n"] == LIMIT
    assert len(rows_of(out / "detect" / "tiny-detector.jsonl")) == LIMIT

    # DFJ-Reason: BLEU-3 against the gold rationale, BERTScore, and the DFJ score of the judge run.
    t = table(report, "dfj-reason")
    sida = next(r for r in t["rows"] if r["model"] == "SIDA")
    assert sida["paper"] == paper_row("dfj-reason", "SIDA") and sida["n"] == LIMIT
    from sacrebleu.metrics import BLEU

    gold = gold_by_id(root / "dfj-bench/dfj-reason")
    ids = list(gold)[:LIMIT]
    resp = {r["id"]: r["response"] for r in rows_of(predictions[1])}
    bleu = BLEU(max_ngram_order=3).corpus_score([explanation(resp[i]) for i in ids], [[gold[i].rationale for i in ids]])
    assert sida["ours"]["bleu3"] == pytest.approx(bleu.score / 100)
    assert 0 < sida["ours"]["bertscore"] <= 1
    # The offline MiniLM has no bert-score baseline: raw, and the report says so.
    assert sida["bertscore_rescaled"] is False and sida["ours"]["bertscore"] == pytest.approx(sida["bertscore_raw"])
    assert "raw (not rescaled" in sida["bertscore_setting"] and sida["bleu3_signature"].startswith("nrefs:1")
    judged = rows_of(out / "reason" / "SIDA.dfj-3B.jsonl")
    assert len(judged) == LIMIT
    scores = [r["score"] for r in judged if r.get("score") is not None]
    assert sida["ours"]["dfj_score"] == (pytest.approx(np.mean(scores)) if scores else None)
    tiny = next(r for r in t["rows"] if r["model"] == "tiny-detector")
    assert tiny["n"] > 0 and len(rows_of(out / "reason" / "tiny-detector.detect.jsonl")) == LIMIT

    # The markdown puts the paper's figure and ours in one row.
    line = next(x for x in markdown.splitlines() if x.startswith("| gpt-4o-mini"))
    assert "| 70.2 |" in line and "| 35.8 |" in line and "| 59.3 |" in line
    assert "## Pointwise Evaluation: DFJ-Meta" in markdown and "| 0.69 |" in markdown


def _templates(release, kind):
    from deepfakejudge.prompts import load_template

    return (load_template(release[1] / f"{kind}.txt", kind),)


def test_reproduce_resumes_and_guards_its_results(local_run, release, tiny_model_dir, tmp_path, capsys):
    _, done = local_run
    root, templates = release
    out = tmp_path / "out"
    out.mkdir()
    # A partial run: the first 12 of 20 rows of the pointwise results, as a kill would leave them.
    src = done / "meta" / "3B-pointwise" / "dfj-meta.jsonl"
    dst = out / "meta" / "3B-pointwise" / "dfj-meta.jsonl"
    dst.parent.mkdir(parents=True)
    head = src.read_text().splitlines(keepends=True)[:12]
    dst.write_text("".join(head) + '{"id": "torn')  # a torn last line
    (out / "runs.json").write_text(json.dumps({"3B-pointwise": str(tiny_model_dir)}))
    argv = reproduce_argv(out, root, templates, "--judge-model", str(tiny_model_dir), "--tables", "meta",
                          "--kinds", "pointwise", "--sets", "dfj-meta", "--json")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "meta" / "3B-pointwise" / "dfj-meta.summary.json").read_text())
    assert summary["this_run"]["judged"] == LIMIT - 12 and summary["rows"] == LIMIT
    assert dst.read_text().splitlines(keepends=True)[:12] == head  # kept, not redone
    # Same figures as the uninterrupted run.
    full = json.loads((done / "report.json").read_text())
    assert table(report, "pointwise-dfj-meta")["rows"][0]["ours"] == table(full, "pointwise-dfj-meta")["rows"][0]["ours"]
    # --report-only calls no model: the same report from the files.
    assert main(argv + ["--report-only"]) == 0
    assert table(json.loads(capsys.readouterr().out), "pointwise-dfj-meta")["rows"][0]["ours"] == \
        table(report, "pointwise-dfj-meta")["rows"][0]["ours"]
    # Another judge into the same folder would mix two models in one results file: refused.
    assert main(argv[:-1] + ["--judge-model", str(tmp_path)]) == 2
    assert "were made with" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("reproduce-serve") / "server.log"
    s = Server(tiny_model_dir, free_port(), log, "--max-logprobs", "2000", "--max-batch", "16")
    yield s
    s.stop()


def test_reproduce_through_dfj_serve(server, local_run, release, predictions, tmp_path, capsys):
    """The same protocols against an OpenAI-compatible server (as with vLLM), judges and the VLM
    detector alike: the same figures as the local run, table by table."""
    _, done = local_run
    root, templates = release
    detect, reason = predictions
    out = tmp_path / "remote"
    argv = reproduce_argv(out, root, templates, "--judge-model", NAME, "--backend", "openai",
                          "--base-url", server.url + "/v1", "--top-logprobs", "2000",
                          "--cache", str(tmp_path / "requests.sqlite"), "--json",
                          "--detect-pred", f"gpt-4o-mini={detect}", "--reason-pred", f"SIDA={reason}",
                          "--detector-model", NAME, "--detector-name", "tiny-detector",
                          "--bertscore-model", str(default_minilm_path()))
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    local = json.loads((done / "report.json").read_text())
    assert report["settings"]["backend"] == "openai" and report["settings"]["judges"]["3B-pointwise"] == NAME
    assert [t["table"] for t in report["tables"]] == [t["table"] for t in local["tables"]]
    for remote_table, local_table in zip(report["tables"], local["tables"]):
        assert len(remote_table["rows"]) == len(local_table["rows"]) > 0
        for ours, theirs in zip(remote_table["rows"], local_table["rows"]):
            assert ours["model"] == theirs["model"] and ours["n"] == theirs["n"] and ours["paper"] == theirs["paper"]
            for metric, value in theirs["ours"].items():
                assert ours["ours"][metric] == (None if value is None else pytest.approx(value, abs=1e-6)), \
                    (remote_table["table"], ours["model"], metric)
    assert len(rows_of(out / "meta" / "3B-pairwise" / "dfj-meta.jsonl")) == LIMIT
    assert len(rows_of(out / "detect" / "tiny-detector.jsonl")) == LIMIT


def test_released_judges_without_the_authors_prompt_stop_before_any_run(release, tmp_path, monkeypatch, capsys):
    """The default judges are the released ones; offline with no copy of the authors' prompt the
    run is one clear error (exit 2) before any model or results file."""
    root, _ = release
    monkeypatch.delenv("DFJ_OFFICIAL_PROMPTS", raising=False)
    monkeypatch.setenv("DFJ_OFFICIAL_PROMPTS_URL", "http://127.0.0.1:9")  # refused at once: no network
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["reproduce", "--out", str(out), "--data-root", str(root), "--tables", "meta", "--sizes", "7B"]) == 2
    err = capsys.readouterr().err
    assert "prompt" in err and "DFJ_OFFICIAL_PROMPTS" in err and err.strip().count("\n") == 0
    assert not out.exists()
