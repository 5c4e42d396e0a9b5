"""`dfj demo`: judge the bundled examples pointwise and pairwise, end to end.

With the released 3B judges when they can be had (already cached, or downloadable); otherwise
the same path runs on a tiny random model built locally, and the output says its scores are
meaningless. Either way a new user sees every step work on their machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import judge as judge_cli

RELEASED = {
    "pointwise": "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pointwise-DFJ",
    "pairwise": "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pairwise-DFJ",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="judge the bundled examples/ with the released judges (or a tiny stand-in)")
    p.add_argument("--examples", default=None, help="examples folder (default: ./examples or the repository's)")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--tiny", action="store_true", help="skip the released judges; use a tiny random model")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="judge at most N items per task")
    p.add_argument("--mode", default=None, choices=("generate", "score-only"),
                   help="default: generate with the released judges; score-only on the tiny stand-in, "
                        "whose random weights never write a score tag")
    p.set_defaults(run=run)


def find_examples(given: str | None) -> Path:
    candidates = [Path(given)] if given else [Path("examples"), Path(__file__).resolve().parents[3] / "examples"]
    for folder in candidates:
        if (folder / "pointwise.jsonl").is_file() and (folder / "pairwise.jsonl").is_file():
            return folder
    raise ValueError(
        f"--examples: no examples folder with pointwise.jsonl and pairwise.jsonl found (looked in "
        f"{', '.join(str(c) for c in candidates)}); run from a clone of the repository or pass --examples DIR"
    )


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


def run(args: argparse.Namespace) -> int:
    examples = find_examples(args.examples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = dict(RELEASED)
    meaningless = args.tiny
    if not args.tiny:
        # Both judges or neither: one real and one random judge would make a confusing demo.
        checks = [released_available(RELEASED[kind]) for kind in ("pointwise", "pairwise")]
        ok = all(good for good, _ in checks)
        why = next((reason for good, reason in checks if not good), "")
        if not ok:
            print(f"Released judges unavailable: {why}. Running the same path on a tiny random model "
                  "built locally: its scores are MEANINGLESS.", file=sys.stderr)
            meaningless = True
    if meaningless:
        from ..backends.tiny import build_tiny_qwen25vl

        tiny = out / "tiny-random-qwen2.5-vl"
        if not (tiny / "config.json").is_file():
            build_tiny_qwen25vl(tiny)
        models = {kind: str(tiny) for kind in RELEASED}
    mode = args.mode or ("score-only" if meaningless else "generate")
    status = 0
    for kind in ("pointwise", "pairwise"):
        argv = ["judge", kind, "--model", models[kind], "--data", str(examples / f"{kind}.jsonl"),
                "--out", str(out / f"{kind}-{mode}.jsonl"), "--device", args.device, "--mode", mode]
        if args.limit is not None:
            argv += ["--limit", str(args.limit)]
        from . import build_parser

        sub_args = build_parser().parse_args(argv)
        result = judge_cli.judge_command(sub_args)
        status = max(status, 1 if result.errors else 0)
        _report(kind, result.out, examples / f"{kind}.jsonl", meaningless)
    return status


def _report(kind: str, out: Path, data: Path, meaningless: bool) -> None:
    import json

    gold = {}
    for line in data.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        gold[row["id"]] = row.get("score") if kind == "pointwise" else row.get("preferred")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    key = "score" if kind == "pointwise" else "choice"
    judged = [r for r in rows if "error" not in r]
    hits = sum(r.get(key) == gold.get(r["id"]) for r in judged)
    tag = "  [tiny random model: meaningless]" if meaningless else ""
    print(f"{kind}: {len(judged)} judged -> {out}; judge matches the intended "
          f"{'score' if kind == 'pointwise' else 'preference'} on {hits}/{len(judged)}{tag}")
    for r in judged[:5]:
        print(f"  {r['id']}: {key}={r.get(key)} gold={gold.get(r['id'])}")
