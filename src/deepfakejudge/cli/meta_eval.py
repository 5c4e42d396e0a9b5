"""`dfj meta-eval pointwise|pairwise`: agreement of a judge's results with gold (and human) labels."""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError, UsageError
from .options import emit

UNPARSABLE_SHOWN = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("meta-eval", help="how well a judge agrees with gold scores / preferences (with 95%% CIs)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, what in (("pointwise", "RMSE, MAE, Pearson, Spearman, Kendall, exact / within-one, confusion"),
                       ("pairwise", "accuracy, both-order consistency, accuracy of pointwise-derived preferences")):
        k = kinds.add_parser(kind, help=what, description=f"{kind}: {what}; Cohen's kappa and Krippendorff's "
                             "alpha when gold rows carry human_scores / human_preferences {annotator: rating}.")
        k.add_argument("--pred", required=True, help=f"results JSONL of `dfj judge {kind}`")
        k.add_argument("--gold", required=True, help="the judged dataset with gold score / preferred (canonical or ms-swift)")
        k.add_argument("--template", default=None, metavar="PATH|official",
                       help="template the ms-swift gold rows were built with ('official': the authors' prompt, "
                            "which the released DFJ-Meta rows were built with)")
        if kind == "pairwise":
            k.add_argument("--pointwise-pred", default=None,
                           help="results of a pointwise judge on the same responses: adds the accuracy of the "
                                "preferences its scores imply")
            k.add_argument("--pointwise-gold", default=None, help="the rows --pointwise-pred scored")
        k.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
        k.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
        k.add_argument("--allow-errors", action="store_true",
                       help="exit 0 even when rows do not join (missing, duplicate, error or malformed rows)")
        k.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        k.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Here, not at the top: scipy.stats (~0.6 s) stays off every other command's start (and off
    # each Ray replica's, which imports the CLI package to run its batch function).
    from ..metaeval import Bootstrap, evaluate_pairwise, evaluate_pointwise, markdown
    from ..prompts import resolve_template

    if args.n_resamples < 1:
        raise UsageError(f"--n-resamples must be >= 1, got {args.n_resamples}")
    templates = (resolve_template(args.template, args.kind),) if args.template else ()  # a file or "official"
    boot = Bootstrap(resamples=args.n_resamples, seed=args.seed)
    if args.kind == "pointwise":
        result = evaluate_pointwise(args.pred, args.gold, templates, boot)
    else:
        result = evaluate_pairwise(args.pred, args.gold, templates, boot, args.pointwise_pred, args.pointwise_gold)
    for line in result.problems:
        print(line, file=sys.stderr)
    # Unparsable predictions are the judge's failures, counted in every figure; listed, not errors.
    for line in result.unparsable[:UNPARSABLE_SHOWN]:
        print(f"{line} (counted as unparsable)", file=sys.stderr)
    if len(result.unparsable) > UNPARSABLE_SHOWN:
        print(f"... and {len(result.unparsable) - UNPARSABLE_SHOWN} more unparsable predictions "
              "(all in the --json output's unparsable_rows)", file=sys.stderr)
    if not result.counts["joined"]:
        raise InputError(f"--pred {args.pred}: no prediction joins a gold row of --gold {args.gold} by id "
                         "(problems listed above); check that both files describe the same items")
    emit(result.to_dict(), args.json, [markdown(result)])
    return 1 if result.problems and not args.allow_errors else 0
