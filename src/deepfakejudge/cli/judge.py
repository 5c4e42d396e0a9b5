"""`dfj judge pointwise|pairwise`: judge explanations with a local or remote VLM judge."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from functools import partial

from ..backends import GenerationConfig
from ..data import load_records
from ..engine import Work
from ..errors import UsageError
from ..judge import PairwiseJudge, PointwiseJudge
from ..judge.compare import agreement, agreement_lines, compare_judges
from ..judge.protocol import protocol as task_protocol
from ..judge.runner import RunResult, judge_counts, run_judge
from ..prompts import resolve_template
from ..tasks import MAX_NEW_TOKENS, MODES
from ..train.record import RUN_FILE, TrainedJudge, find_trained_judge
from .options import (
    TEMPLATE_HELP,
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
    p = sub.add_parser("judge", help="judge explanations (pointwise 1-5 or pairwise A/B)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_text in (
        ("pointwise", "score each explanation 1..5 with a justification"),
        ("pairwise", "pick the better of response_a / response_b (both orders by default)"),
    ):
        k = kinds.add_parser(kind, help=help_text, description=help_text)
        add_model_options(k)
        add_run_options(k)
        add_engine_options(k)
        g = k.add_argument_group("judging")
        score_only = ("exact for the answer-only pairwise format" if kind == "pairwise" else
                      "an approximation: the judge answers after an empty reasoning, which it never does in training")
        g.add_argument("--mode", choices=(*MODES, "compare"), default="generate",
                       help="generate: reasoning then answer, each output stopped at its answer tag (default; the "
                            "paper's protocol); score-only: one forward pass reading the answer distribution, no text "
                            f"({score_only}); compare: both on the same items, with their agreement in the summary")
        g.add_argument("--no-stop-at-answer", action="store_true",
                       help="generate mode: write each output to its end instead of stopping at the answer tag "
                            "(the answer read is then the last tag, not the first)")
        g.add_argument("--template", default=None, help=TEMPLATE_HELP)
        g.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS[kind],
                       help="generation length limit in generate mode")
        if kind == "pairwise":
            g.add_argument("--one-order", action="store_true",
                           help="judge (A, B) only, as the paper did; default judges both orders and debiases")
        k.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = judge_command(args)
    s = result.summary
    unparsable = s["unparsable"]
    if s.get("undecided"):
        unparsable = f"{unparsable} unparsable, {s['undecided']} undecided (the two orders disagree)"
    else:
        unparsable = f"{unparsable} unparsable"
    lines = [
        f"{s['kind']}: {s['judged']} judged, {unparsable}, {s['errors']} errors "
        f"-> {result.out} (summary: {result.summary_path})"
    ]
    if s["kind"] == "pointwise" and s["mean_score"] is not None:
        lines.append(f"mean score {s['mean_score']}; histogram {s['score_histogram']}")
    if s["kind"] == "pairwise" and s["prefer_a"] is not None:
        lines.append(f"prefers A in {s['prefer_a']:.0%}; order agreement {s['order_agreement']}")
    lines.extend(engine_lines(s))
    if "agreement" in s:
        lines.extend(agreement_lines(s["kind"], s["agreement"]))
    elif s["protocol"] is not None and not s["protocol"]["exact"]:
        lines.append(f"protocol {s['protocol']['name']}: {s['protocol']['meaning']}")
    lines.extend(replica_lines(s["backend"]))
    emit(s, args.json, lines)
    return 1 if s["errors"] and not args.allow_errors else 0


def judge_command(args: argparse.Namespace) -> RunResult:
    # A trained judge (--adapter DIR, or an exported --model DIR) is used with the template and
    # pixel budget it was trained with, unless --template / --min-pixels / --max-pixels say otherwise.
    trained = trained_judge(args)
    # Otherwise: --template, else the authors' prompt for a released DFJ judge, else our own rubric.
    template = trained.template if trained and args.template is None else resolve_template(
        args.template, args.kind, model=args.model, adapter=args.adapter)
    # Validate cheap arguments before loading a model.
    budget = pixel_budget(args, trained.budget if trained else None)
    args.min_pixels, args.max_pixels = budget.min_pixels, budget.max_pixels  # what the backend loads with
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    # verbatim: official ms-swift rows are judged with their own prompt, recognised or not.
    # The model is opened where the engine runs it: here (local) or in each Ray replica.
    engine = engine_from_args(args, Work(partial(backend_from_args, args), partial(judge_batches_of, args, template)),
                              backend=args.backend, device=args.device)
    dataset = load_records(args.data, templates=(template,), image_roots=args.image_root, verbatim=True)

    protocol = "compare" if args.mode == "compare" else judge_protocol(args.kind, args.mode, template)
    settings = {
        "mode": args.mode,
        "stop_at_answer": not args.no_stop_at_answer,
        "both_orders": None if args.kind == "pointwise" else not args.one_order,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "reasks": args.reasks,
        "pixel_budget": asdict(budget),
        "trained_judge": None if trained is None else str(trained.path),
        "decoding": args.decoding,
        **template.provenance(),
        # ms-swift rows sent with their own prompt rather than the template above.
        "rows_with_own_prompt": sum(s.prompt is not None for s in dataset.samples),
    }
    try:
        return run_judge(
            args.kind,
            engine.batches,
            dataset,
            args.out,
            settings=settings,
            backend_info=engine.describe,
            engine=engine.info,
            limit=args.limit,
            overwrite=args.overwrite, retry_errors=args.retry_errors,
            progress=lambda n: progress(n, f"judge {args.kind}"),
            counts=compare_counts(args.kind) if args.mode == "compare" else None,
            protocol=protocol,
            compared_protocol=judge_protocol(args.kind, "score-only", template) if args.mode == "compare" else None,
        )
    finally:
        engine.close()


def judge_batches_of(args: argparse.Namespace, template, backend, samples):
    """The batches of `dfj judge` on `backend` (engine.Work's batch function, local or on a replica)."""
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, reasks=args.reasks)
    judge = PointwiseJudge if args.kind == "pointwise" else PairwiseJudge
    common = dict(template=template, generation=generation, max_image_pixels=args.max_image_pixels,
                  stop_at_answer=not args.no_stop_at_answer)
    if args.mode == "compare":
        return compare_judges(judge(backend, mode="generate", **common), judge(backend, mode="score-only", **common),
                              samples, args.batch_size, both_orders=not args.one_order if args.kind == "pairwise" else True)
    if args.kind == "pointwise":
        return PointwiseJudge(backend, mode=args.mode, **common).iter_batches(samples, args.batch_size)
    return PairwiseJudge(backend, mode=args.mode, **common).iter_batches(samples, not args.one_order, args.batch_size)


def trained_judge(args: argparse.Namespace) -> TrainedJudge | None:
    trained = find_trained_judge(args.adapter, args.model)
    if trained is None:
        return None
    if trained.kind != args.kind:
        raise UsageError(f"{trained.path}: trained as a {trained.kind} judge (its {RUN_FILE}); "
                         f"use dfj judge {trained.kind}")
    if args.template is not None and resolve_template(args.template, args.kind).sha256 != trained.template.sha256:
        print(f"dfj judge: warning: --template {args.template} is not the template {trained.path} was trained "
              f"with ({trained.template.sha256[:12]}…); scores may suffer", file=sys.stderr)
    return trained


def judge_protocol(kind: str, mode: str, template) -> str:
    """The protocol name of a judge run (judge/protocol.py)."""
    from ..prompts import SCORE_PREFIX

    return task_protocol(kind, mode, template.text, SCORE_PREFIX[kind])


def compare_counts(kind: str):
    """Summary figures of a compare run: the generate side's usual ones and the agreement block."""
    return lambda ok: {**judge_counts(kind, ok), "agreement": agreement(kind, ok)}
