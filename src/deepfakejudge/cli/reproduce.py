"""`dfj reproduce`: run the paper's protocols with the released judges over the released data and
print, per table, our figure beside the paper's (markdown report + JSON file under --out).

Every model run goes through the same entry points as `dfj judge` and `dfj detect run` (built
from the same parser, so templates, decoding and backends resolve exactly as there), into results
files under --out: a rerun resumes them, and `--report-only` never calls a model. Layout:

    OUT/meta/<3B|7B>-<pointwise|pairwise>/<dfj-meta|dfj-meta-human>.jsonl
    OUT/detect/<detector>.jsonl               a --detector-model run over DFJ-Detect
    OUT/reason/<detector>.detect.jsonl        its run over DFJ-Reason (the explanations)
    OUT/reason/<detector>.items.jsonl         explanations as judge input
    OUT/reason/<detector>.dfj-<size>.jsonl    the pointwise judge's scores of them
    OUT/runs.json                             which model made which results (a rerun with another refuses)
    OUT/report.md, OUT/report.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..data.jsonl import read_json_file
from ..errors import InputError, UsageError
from .options import REMOTE_OPTIONS, add_data_root_option, add_model_options, emit, model_dest

TABLE_CHOICES = ("meta", "detect", "reason")
PROTOCOL_MODES = ("generate", "score-only")
SETS = ("dfj-meta", "dfj-meta-human")  # meta-evaluation sets; the split of each is its paper table's dataset
# The model options of `dfj judge` / `dfj detect run` that reproduce takes (registered from the same
# table) and passes through unchanged, with the run options below (dest -> flag).
MODEL_NAMES = ("backend", "device", "dtype", "min-pixels", "max-pixels", "vision-cache-mb", *REMOTE_OPTIONS)
FORWARD_FLAGS = ("no_cache", "overwrite", "retry_errors", "allow_errors")
FORWARD = (*(d for d in map(partial(model_dest, ""), MODEL_NAMES) if d not in FORWARD_FLAGS),
           "batch_size", "max_image_pixels")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="run the paper's protocols with the released judges; our figures beside the paper's",
        description="Judge meta-evaluation on DFJ-Meta test and DFJ-Meta-Human (RMSE, Pearson, pairwise "
                    "accuracy; 3B and 7B), DFJ-Detect for detector predictions or a VLM, DFJ-Reason (BLEU-3, "
                    "BERTScore, DFJ score). Resumable; writes OUT/report.md and OUT/report.json.")
    g = p.add_argument_group("what to run")
    g.add_argument("--out", required=True, metavar="DIR", help="folder for results files and the report (resumed)")
    add_data_root_option(g)
    g.add_argument("--tables", nargs="+", choices=TABLE_CHOICES, default=list(TABLE_CHOICES),
                   help="tables to reproduce (default: all; detect and reason need --detect-pred / --reason-pred "
                        "or --detector-model)")
    g.add_argument("--sizes", nargs="+", choices=("3B", "7B"), default=["3B", "7B"], help="judge sizes (default both)")
    g.add_argument("--kinds", nargs="+", choices=("pointwise", "pairwise"), default=["pointwise", "pairwise"],
                   help="judge kinds for the meta-evaluation (default both)")
    g.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS),
                   help="meta-evaluation sets (default both)")
    g.add_argument("--limit", type=int, default=None, help="only the first N items of every set (a quick look)")
    g.add_argument("--report-only", action="store_true", help="call no model: report from the results under --out")

    j = p.add_argument_group("judges (default: the released MBZUAI/Qwen-2.5-VL-Instruct-*-DFJ checkpoints)")
    j.add_argument("--judge-model", default=None, metavar="M",
                   help="use this model for every judge (e.g. the name a server serves it under)")
    j.add_argument("--judge", action="append", default=[], metavar="KEY=M",
                   help="model for one judge, KEY one of 3B-pointwise, 3B-pairwise, 7B-pointwise, 7B-pairwise (repeatable)")
    j.add_argument("--pointwise-template", default=None, metavar="PATH|official",
                   help="pointwise prompt (default: as `dfj judge` resolves it; the authors' for the released judges)")
    j.add_argument("--pairwise-template", default=None, metavar="PATH|official", help="pairwise prompt (likewise)")
    j.add_argument("--pointwise-mode", choices=PROTOCOL_MODES, default="generate",
                   help="generate (default, the published protocol) or score-only")
    j.add_argument("--pairwise-mode", choices=PROTOCOL_MODES, default="score-only",
                   help="score-only (default: the answer token read off one forward pass, as greedy generation "
                        "would pick it) or generate")
    j.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation limit for judges and detectors (default: each command's own)")

    d = p.add_argument_group("detectors (DFJ-Detect, DFJ-Reason)")
    d.add_argument("--detect-pred", action="append", default=[], metavar="NAME=FILE",
                   help="a detector's DFJ-Detect predictions (id + prediction); NAME as in the paper "
                        "(e.g. GPT-4o-mini) puts the paper's row beside it (repeatable)")
    d.add_argument("--reason-pred", action="append", default=[], metavar="NAME=FILE",
                   help="a detector's DFJ-Reason predictions with `response` (repeatable)")
    d.add_argument("--detector-model", default=None, metavar="M", help="a VLM to run as a detector on both sets")
    d.add_argument("--detector-name", default=None, help="its row name (default: --detector-model)")
    d.add_argument("--reason-judge", choices=("3B", "7B"), default="3B",
                   help="pointwise judge of the DFJ score (default 3B, as published)")
    d.add_argument("--bertscore-model", default=None, metavar="PATH",
                   help="local model folder for BERTScore (default: bert-score's roberta-large, needs the hub)")
    d.add_argument("--bertscore-layers", type=int, default=None)
    d.add_argument("--bertscore-baseline", default=None, metavar="NAME|FILE",
                   help="rescale BERTScore of --bertscore-model with this baseline (as in dfj reason score)")
    d.add_argument("--text-device", default="cpu", help="device for BERTScore (default cpu)")

    add_model_options(p, names=MODEL_NAMES)

    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--max-image-pixels", type=int, default=None)
    r.add_argument("--overwrite", action="store_true", help="start every run afresh")
    r.add_argument("--retry-errors", action="store_true", help="judge again the items whose model call failed")
    r.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows could not be judged")
    r.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    r.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    p.set_defaults(run=run)


# -- planning -------------------------------------------------------------------------------------


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise UsageError(f"{option} {value!r}: expected NAME=VALUE")
        out[name.strip()] = rest.strip()
    return out


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def judge_models(args: argparse.Namespace) -> dict[tuple[str, str], str]:
    from ..reproduce.paper import RELEASED

    models = {key: args.judge_model or model for key, model in RELEASED.items()}
    for key, model in _pairs(args.judge, "--judge").items():
        size, _, kind = key.partition("-")
        if (size, kind) not in RELEASED:
            raise UsageError(f"--judge {key}={model}: KEY must be one of "
                             + ", ".join(f"{s}-{k}" for s, k in RELEASED))
        models[(size, kind)] = model
    return models


@dataclass(frozen=True)
class Plan:
    root: Path
    meta: tuple[tuple[str, str, str], ...]  # (size, kind, set)
    detect: dict[str, Path]  # detector -> prediction file (given or to be made)
    reason: dict[str, Path]
    detector: str | None  # name of the --detector-model row
    splits: dict[str, Path | None]  # split name -> data file (None: absent)


def make_plan(args: argparse.Namespace) -> Plan:
    from ..data.splits import data_root, find_split
    from ..reproduce import TABLES

    out = Path(args.out)
    meta = tuple((s, k, t) for t in args.sets for s in args.sizes for k in args.kinds) if "meta" in args.tables else ()
    detector = (args.detector_name or args.detector_model) if args.detector_model else None
    detect = {n: Path(f) for n, f in _pairs(args.detect_pred, "--detect-pred").items()} if "detect" in args.tables else {}
    reason = {n: Path(f) for n, f in _pairs(args.reason_pred, "--reason-pred").items()} if "reason" in args.tables else {}
    if detector and "detect" in args.tables:
        detect[detector] = out / "detect" / f"{slug(detector)}.jsonl"
    if detector and "reason" in args.tables:
        reason[detector] = out / "reason" / f"{slug(detector)}.detect.jsonl"
    for name, path in {**detect, **reason}.items():
        if name != detector and not path.is_file():
            raise InputError(f"--detect-pred/--reason-pred {name}={path}: no such file")
    needed = {TABLES[f"{k}-{t}"].dataset for _, k, t in meta}
    if detect:
        needed.add("dfj-bench/dfj-detect")
    if reason:
        needed.add("dfj-bench/dfj-reason")
    splits = {name: find_split(name, args.data_root) for name in sorted(needed)}
    return Plan(data_root(args.data_root), meta, detect, reason, detector, splits)


def check_data(plan: Plan, args: argparse.Namespace) -> None:
    from ..data.splits import fetch_hint

    missing = [name for name, path in plan.splits.items() if path is None]
    if missing:
        raise InputError(f"the released data is not under {plan.root} (missing {', '.join(missing)}); "
                         + fetch_hint(missing, args.data_root))


def guard_runs(out: Path, runs: dict[str, str], overwrite: bool) -> None:
    """Results under --out were made by the model recorded in runs.json: resuming them with another
    model would mix two judges in one file."""
    path = out / "runs.json"
    recorded = read_json_file(path, f"--out {out}") if path.is_file() else {}
    if not overwrite:
        clash = {k: (recorded[k], v) for k, v in runs.items() if k in recorded and recorded[k] != v}
        if clash:
            k, (old, new) = next(iter(clash.items()))
            raise UsageError(f"--out {out}: the {k} results were made with {old}, not {new}; use another --out, "
                             "or --overwrite to start them afresh")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**recorded, **runs}, indent=2) + "\n", encoding="utf-8")


# -- running --------------------------------------------------------------------------------------


def _forwarded(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for dest in FORWARD:
        value = getattr(args, dest)
        for one in value if isinstance(value, list) else [] if value is None else [value]:  # --base-url repeats
            argv += ["--" + dest.replace("_", "-"), str(one)]
    for dest in FORWARD_FLAGS:
        if getattr(args, dest):
            argv.append("--" + dest.replace("_", "-"))
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    if args.max_new_tokens is not None:
        argv += ["--max-new-tokens", str(args.max_new_tokens)]
    return argv


def _sub_args(argv: list[str]) -> argparse.Namespace:
    from . import detect, judge  # the commands reproduce runs
    from .parser import dfj_parser

    return dfj_parser([judge, detect]).parse_args(argv)


def run_judge(args: argparse.Namespace, kind: str, model: str, data: Path, out: Path,
              image_root: Path | None = None) -> dict[str, Any]:
    """`dfj judge KIND` with the reproduce options; its run summary. `image_root`: a folder the
    rows' images may come from besides the data file's own (the DFJ-Reason images)."""
    from .judge import judge_command

    template = args.pointwise_template if kind == "pointwise" else args.pairwise_template
    mode = args.pointwise_mode if kind == "pointwise" else args.pairwise_mode
    argv = ["judge", kind, "--model", model, "--data", str(data), "--out", str(out), "--mode", mode,
            *(["--template", template] if template else []),
            *(["--image-root", str(image_root)] if image_root else []), *_forwarded(args)]
    print(f"dfj reproduce: {kind} judge {model} on {data}", file=sys.stderr)
    return judge_command(_sub_args(argv)).summary


def run_detector(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    from .detect import run_command

    argv = ["detect", "run", "--model", args.detector_model, "--data", str(data), "--out", str(out),
            *_forwarded(args)]
    print(f"dfj reproduce: detector {args.detector_model} on {data}", file=sys.stderr)
    return run_command(_sub_args(argv)).summary


def reason_items(pred: Path, gold: Path, out: Path) -> Path:
    """The judge's input for the DFJ score: each explanation with its gold image and label, in the
    gold set's order (so --limit takes the same first items everywhere)."""
    from ..detect import read_predictions
    from ..detect.predictions import load_gold

    golds = load_gold(gold)
    by_id = read_predictions(pred).by_id()
    rows = []
    for sid, sample in golds.samples.items():
        p = by_id.get(sid)
        if p is not None and p.response and p.response.strip():
            rows.append({"id": sid, "image": str(sample.image), "label": sample.label, "response": p.response})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def _templates(args: argparse.Namespace, kind: str, model: str) -> tuple:
    """The template the gold ms-swift rows are read with: the one the judge was run with."""
    from ..prompts import resolve_template

    template = args.pointwise_template if kind == "pointwise" else args.pairwise_template
    return (resolve_template(template, kind, model=model),)


# -- the command ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ..metaeval import Bootstrap
    from ..reproduce import TABLES, render_markdown, to_json
    from ..reproduce.compare import MetaRun, detect_comparison, meta_comparisons, reason_comparison

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.n_resamples < 1:
        raise UsageError(f"--n-resamples must be >= 1, got {args.n_resamples}")
    if args.detector_name and not args.detector_model:
        raise UsageError("--detector-name names the --detector-model row; give --detector-model too")
    models = judge_models(args)
    plan = make_plan(args)
    check_data(plan, args)
    out = Path(args.out)
    runs = {f"{s}-{k}": models[(s, k)] for s, k, _ in plan.meta}
    if plan.reason:
        runs[f"{args.reason_judge}-pointwise"] = models[(args.reason_judge, "pointwise")]
    if plan.detector:
        runs[f"detector {plan.detector}"] = args.detector_model
    # Every judge's prompt resolves before anything runs: the authors' prompt for a released judge
    # may be missing offline, and that is one clear error, not a half-done run.
    for size, kind, _ in plan.meta:
        _templates(args, kind, models[(size, kind)])
    if plan.reason:
        _templates(args, "pointwise", models[(args.reason_judge, "pointwise")])
    guard_runs(out, runs, args.overwrite)

    errors = 0
    meta_files: dict[tuple[str, str, str], Path] = {}
    for size, kind, which in plan.meta:
        path = out / "meta" / f"{size}-{kind}" / f"{which}.jsonl"
        meta_files[(size, kind, which)] = path
        if not args.report_only:
            data = plan.splits[TABLES[f"{kind}-{which}"].dataset]
            errors += run_judge(args, kind, models[(size, kind)], data, path)["errors"]
    if plan.detector and not args.report_only:
        if plan.detector in plan.detect:
            errors += run_detector(args, plan.splits["dfj-bench/dfj-detect"], plan.detect[plan.detector])["errors"]
        if plan.detector in plan.reason:
            errors += run_detector(args, plan.splits["dfj-bench/dfj-reason"], plan.reason[plan.detector])["errors"]
    judged: dict[str, Path | None] = {}
    for name, pred in plan.reason.items():
        results = out / "reason" / f"{slug(name)}.dfj-{args.reason_judge}.jsonl"
        judged[name] = results
        if args.report_only or not pred.is_file():
            continue
        items = reason_items(pred, plan.splits["dfj-bench/dfj-reason"], out / "reason" / f"{slug(name)}.items.jsonl")
        errors += run_judge(args, "pointwise", models[(args.reason_judge, "pointwise")], items, results,
                            image_root=plan.splits["dfj-bench/dfj-reason"].parent)["errors"]

    boot = Bootstrap(resamples=args.n_resamples, seed=args.seed)
    meta = [MetaRun(size, kind, which, models[(size, kind)], path, plan.splits[TABLES[f"{kind}-{which}"].dataset],
                    partial(_templates, args, kind, models[(size, kind)]))
            for (size, kind, which), path in meta_files.items()]
    comparisons = meta_comparisons(meta, boot, args.limit)
    if "detect" in args.tables:
        comparisons.append(detect_comparison(plan.detect, plan.splits.get("dfj-bench/dfj-detect"), boot, args.limit))
    if "reason" in args.tables:
        text_models = {"bertscore_model": args.bertscore_model, "bertscore_layers": args.bertscore_layers,
                       "bertscore_baseline": args.bertscore_baseline, "device": args.text_device}
        comparisons.append(reason_comparison(plan.reason, plan.splits.get("dfj-bench/dfj-reason"), judged,
                                             f"{args.reason_judge} ({models[(args.reason_judge, 'pointwise')]})",
                                             args.limit, text_models))

    settings = {"out": str(out), "data_root": str(plan.root), "limit": args.limit, "backend": args.backend,
                "base_url": args.base_url, "judges": {k: m for k, m in runs.items() if not k.startswith("detector ")},
                "pointwise_mode": args.pointwise_mode, "pairwise_mode": args.pairwise_mode,
                "pointwise_template": args.pointwise_template, "pairwise_template": args.pairwise_template,
                "detector_model": args.detector_model, "bootstrap": {"resamples": args.n_resamples, "seed": args.seed}}
    header = [f"Judges: {', '.join(f'{k} = {m}' for k, m in settings['judges'].items())}; backend {args.backend}"
              + (f" at {', '.join(args.base_url)}" if args.base_url else "") + f"; pointwise {args.pointwise_mode}, "
              f"pairwise {args.pairwise_mode}." + (f" First {args.limit} items of every set." if args.limit else "")]
    markdown = render_markdown(comparisons, header)
    report = to_json(comparisons, settings)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    emit(report, args.json, [markdown, f"report: {out / 'report.md'} and {out / 'report.json'}"])
    return 1 if errors and not args.allow_errors else 0
