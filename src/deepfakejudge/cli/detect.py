"""`dfj detect run|score|compare`: run a VLM detector; score and compare prediction files."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

from ..backends import GenerationConfig
from ..data import load_records
from ..errors import UsageError
from ..judge.compare import agreement, agreement_lines, compare_judges
from ..judge.protocol import protocol as task_protocol
from ..judge.runner import RunResult, run_judge
from ..prompts import SCORE_PREFIX, resolve_template
from ..tasks import MAX_NEW_TOKENS, MODES
from .options import (
    add_engine_options,
    add_model_options,
    add_run_options,
    backend_from_args,
    emit,
    engine_from_args,
    engine_lines,
    pixel_budget,
    progress,
    replica_lines,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="DFJ-Detect: run a VLM detector, score and compare prediction files")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    r = verbs.add_parser("run", help="ask a VLM 'real or fake, and why' for every image",
                         description="Ask a VLM whether each image is real or fake, with its reasoning. "
                                     "Rows: id, prediction, p_fake, response (resumable).")
    add_model_options(r)
    add_run_options(r)
    add_engine_options(r)
    g = r.add_argument_group("detection")
    g.add_argument("--mode", choices=(*MODES, "compare"), default="generate",
                   help="generate: reasoning + answer, each output stopped at its answer tag, p_fake read at the "
                        "answer token (default; the paper's protocol); score-only: one forward pass reading "
                        "p(real)/p(fake) after an empty reasoning, no text (an approximation: the detector reasons "
                        "first); compare: both on the same images, with their verdict agreement in the summary")
    g.add_argument("--no-stop-at-answer", action="store_true",
                   help="generate mode: write each output to its end instead of stopping at the answer tag")
    g.add_argument("--template", default=None, help="detection prompt file (default: the project's own)")
    g.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS["detect"],
                   help=f"generation length limit (generate mode; default {MAX_NEW_TOKENS['detect']})")
    r.set_defaults(run=run)

    s = verbs.add_parser("score", help="Real/Fake F1, accuracy, CIs, per source and kind, p_fake metrics")
    s.add_argument("--pred", required=True, help="prediction JSONL: id + prediction [+ p_fake, response]")
    _gold_options(s)
    s.add_argument("--png", default=None, metavar="PATH",
                   help="also draw confusion matrix, per-source accuracy and reliability diagram (needs [plots])")
    s.set_defaults(run=score)

    c = verbs.add_parser("compare", help="one row per detector, laid out like the paper's DFJ-Detect table")
    c.add_argument("--pred", required=True, action="append", help="prediction JSONL (repeat for each detector)")
    c.add_argument("--name", action="append", default=[], help="detector name per --pred, in order (default: file stem)")
    _gold_options(c)
    c.add_argument("--csv", default=None, metavar="PATH", help="also write the table as CSV")
    c.set_defaults(run=compare)


def _gold_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="gold set (default: the data named in the run summary beside --pred, else `label` in the rows)")
    p.add_argument("--missing-as-unparsable", action="store_true",
                   help="score gold ids without a usable prediction as unparsable (default: leave them out, and say so)")
    p.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows had problems")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


# -- run ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    result = run_command(args)
    s = result.summary
    lines = [
        f"detect: {s['judged']} images, {s['unparsable']} unparsable, {s['errors']} errors "
        f"-> {result.out} (summary: {result.summary_path})",
        f"predicted real {s['predicted']['real']}, fake {s['predicted']['fake']}; "
        f"p_fake on {s['with_p_fake']} rows. Score with: dfj detect score --pred {result.out}",
    ]
    if "agreement" in s:
        lines.extend(agreement_lines("detect", s["agreement"]))
    elif s["protocol"] is not None and not s["protocol"]["exact"]:
        lines.append(f"protocol {s['protocol']['name']}: {s['protocol']['meaning']}")
    lines.extend(replica_lines(s["backend"]))
    lines.extend(engine_lines(s))
    emit(s, args.json, lines)
    return 1 if s["errors"] and not args.allow_errors else 0


def run_command(args: argparse.Namespace) -> RunResult:
    from ..detect import detect_counts
    from ..engine import Work

    template = resolve_template(args.template, "detect")
    budget = pixel_budget(args)
    args.min_pixels, args.max_pixels = budget.min_pixels, budget.max_pixels  # what the backend loads with
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    # The model is opened where the engine runs it: here (local) or in each Ray replica.
    engine = engine_from_args(args, Work(partial(backend_from_args, args), partial(detect_batches_of, args, template)),
                              backend=args.backend, device=args.device)
    dataset = load_records(args.data, image_roots=args.image_root)

    protocol = "compare" if args.mode == "compare" else task_protocol("detect", args.mode, template.text,
                                                                       SCORE_PREFIX["detect"])
    counts = detect_counts
    if args.mode == "compare":
        def counts(ok):
            return {**detect_counts(ok), "agreement": agreement("detect", ok)}
    settings = {"mode": args.mode, "stop_at_answer": not args.no_stop_at_answer,
                "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                "reasks": args.reasks,
                "pixel_budget": asdict(budget), **template.provenance()}
    try:
        return run_judge("detect", engine.batches, dataset, args.out, settings=settings,
                         backend_info=engine.describe, engine=engine.info, limit=args.limit,
                         overwrite=args.overwrite, retry_errors=args.retry_errors, progress=lambda n: progress(n, "detect"),
                         counts=counts, protocol=protocol,
                         compared_protocol=task_protocol("detect", "score-only", template.text, SCORE_PREFIX["detect"])
                         if args.mode == "compare" else None)
    finally:
        engine.close()


def detect_batches_of(args: argparse.Namespace, template, backend, samples):
    """The batches of `dfj detect run` on `backend` (engine.Work's batch function, local or on a replica)."""
    from ..detect import Detector

    common = dict(template=template, max_image_pixels=args.max_image_pixels,
                  generation=GenerationConfig(max_new_tokens=args.max_new_tokens, reasks=args.reasks),
                  stop_at_answer=not args.no_stop_at_answer)
    if args.mode == "compare":
        return compare_judges(Detector(backend, mode="generate", **common),
                              Detector(backend, mode="score-only", **common), samples, args.batch_size)
    return Detector(backend, mode=args.mode, **common).iter_batches(samples, args.batch_size)


# -- score / compare ------------------------------------------------------------------------------


def _score_one(path: str, args: argparse.Namespace, name: str | None = None):
    from ..detect import read_predictions, resolve_gold, score_predictions

    if args.n_resamples < 1:
        raise UsageError(f"--n-resamples must be >= 1, got {args.n_resamples}")
    pred = read_predictions(path)
    gold = resolve_gold(pred, args.data)
    result = score_predictions(pred, gold, name=name, missing_as_unparsable=args.missing_as_unparsable,
                               n_resamples=args.n_resamples, seed=args.seed)
    for problem in result.problems:
        print(str(problem), file=sys.stderr)
    for err in result.run_errors:
        print(f"{err.where}: the run recorded no prediction for id {err.id!r} ({err.field}: {err.message})",
              file=sys.stderr)
    return result


def score(args: argparse.Namespace) -> int:
    from ..detect import score_markdown

    result = _score_one(args.pred, args)
    summary = result.to_dict()
    if args.png:
        from ..detect.plots import save_png

        summary["png"] = str(save_png(result, args.png))
    lines = [score_markdown(result)]
    if args.png:
        lines.append(f"\nplot: {summary['png']}")
    emit(summary, args.json, lines)
    return 1 if result.problems and not args.allow_errors else 0


def compare(args: argparse.Namespace) -> int:
    from ..detect import compare_csv, compare_markdown, compare_rows

    if args.name and len(args.name) != len(args.pred):
        raise UsageError(f"--name: give one name per --pred ({len(args.pred)}), got {len(args.name)}")
    names = args.name or [None] * len(args.pred)
    results = [_score_one(p, args, n) for p, n in zip(args.pred, names)]
    table = compare_markdown(results)
    summary = {"detectors": compare_rows(results),
               "problems": {r.name: len(r.problems) for r in results},
               "missing": {r.name: len(r.missing) for r in results}}
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(args.csv).write_text(compare_csv(results), encoding="utf-8")
        summary["csv"] = args.csv
    emit(summary, args.json, [table] + ([f"\nCSV: {args.csv}"] if args.csv else []))
    return 1 if any(r.problems for r in results) and not args.allow_errors else 0
