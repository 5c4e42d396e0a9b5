"""`dfj bootstrap`: build judge training data (DFJ-Meta style) from annotated images with a
generator -> evaluator -> refine -> paraphrase loop. See docs/bootstrap.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..backends import Backend, GenerationConfig
from ..data.images import MAX_IMAGE_PIXELS
from ..errors import UsageError
from ..prompts import Template
from .options import (
    MODEL_OPTIONS,
    add_image_root_option,
    add_model_options,
    backend_from_args,
    emit,
    model_option,
    progress,
    replica_lines,
)

if TYPE_CHECKING:
    from ..bootstrap import DryRunPlan

ROLE_SIDES = ("generator", "evaluator")
# Each role's own model options; the rest (device, pixel budget, server settings, cache) are shared.
ROLE_OWN = ("model", "backend", "adapter")
ROLE_OPTIONS = (*ROLE_OWN, "base-url", "api-key-env")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bootstrap", help="build judge training data: generate graded explanations, rate, refine, paraphrase",
        description="For each annotated image and each quality level 1..5: a generator writes an explanation at that "
                    "level, an evaluator rates it, misaligned ones are refined with the feedback, accepted ones are "
                    "paraphrased. Writes pointwise and pairwise records (canonical and ms-swift), split by image, and "
                    "a report. Resumable: rerun the same command after a kill.",
    )
    for side in ROLE_SIDES:
        # Each role's model as --{side}-model (or --{side}), --{side}-backend, ...; the server
        # settings not given per role are the shared ones below.
        g = add_model_options(p, f"{side}-", names=ROLE_OPTIONS, aliases={"model": f"--{side}"},
                              fallback=("base-url", "api-key-env"), title=f"{side}: ")["model"]
        g.add_argument(f"--{side}-max-new-tokens", type=int, default=384 if side == "generator" else 256,
                       help="generation length limit")
    e = p.add_argument_group("evaluator prompt")
    e.add_argument("--evaluator-template", default=None, metavar="PATH|official|default",
                   help="evaluate with a DFJ pointwise judge template (a file with {ground_truth_label} and "
                        "{candidate_response}, 'official' for the authors' prompt of the released judges, or 'default' "
                        "for the project's own): the judge sees only the label and the explanation, and its "
                        "<reasoning> is the feedback. Default: the reference-guided evaluator prompt (image, label, "
                        "annotated boxes and the gold rationale). A trained judge given as --evaluator-adapter (or an "
                        "exported --evaluator folder) uses its training template; a released DFJ judge as --evaluator "
                        "uses 'official'.")
    e.add_argument("--evaluator-mode", choices=("generate", "score-only"), default="generate",
                   help="generate: score with a justification, the feedback for refinement (default); score-only: one "
                        "forward pass reading the 1..5 distribution, no justification (the refiner gets the score only)")
    # An evaluator answer without a score would cost the whole unit (rejected): two seeded re-asks
    # are cheap next to that. Judging keeps 0, so that its results stay greedy.
    add_model_options(p, names=[n for n in MODEL_OPTIONS if n not in ROLE_OWN], reasks=2, title="both roles: ")
    loop = p.add_argument_group("the loop")
    loop.add_argument("--tolerance", type=int, default=0,
                      help="accept when |evaluator score - intended level| <= N (default 0: exact; the paper says "
                           "'within a threshold' without the number, see docs/bootstrap.md)")
    loop.add_argument("--level5", choices=("gold", "generated"), default="gold",
                      help="gold: level 5 is the annotated rationale with the annotated verdict, rated and "
                           "paraphrased but never generated, as in the paper (default); generated: written by the "
                           "generator like the other levels")
    loop.add_argument("--rounds", type=int, default=3, help="refinement rounds before a unit is rejected (default 3)")
    loop.add_argument("--paraphrases", type=int, default=4, help="paraphrases per accepted explanation (default 4)")
    loop.add_argument("--no-recheck", action="store_true", help="keep paraphrases without asking the evaluator again")
    loop.add_argument("--paraphrase-retries", type=int, default=1,
                      help="further tries of a paraphrase that is malformed or re-rated off level (default 1)")
    loop.add_argument("--keep-truncated", action="store_true",
                      help="keep generator outputs cut off at --generator-max-new-tokens (default: such an output is "
                           "malformed and asked again, as a truncated explanation is no valid training target)")
    loop.add_argument("--temperature", type=float, default=0.7,
                      help="generator sampling temperature, seeded (default 0.7; the evaluator is greedy)")
    loop.add_argument("--seed", type=int, default=0, help="seed of every sampled call, the split and the pairing (default 0)")
    loop.add_argument("--prompt", action="append", default=[], metavar="ROLE=PATH",
                      help="replace a role's prompt template: generate, refine, paraphrase, evaluate or levels (repeatable)")
    o = p.add_argument_group("run and outputs")
    o.add_argument("--data", required=True, help="annotated images: canonical JSONL with label, artifacts and rationale")
    o.add_argument("--out", required=True, help="run folder: journal, outputs, report (resumed if it exists)")
    o.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of images in the test split (default 0.2, about a fifth as in the released data)")
    o.add_argument("--test-layout", choices=("released", "like-train"), default="released",
                   help="released: per test image one pointwise row per level (no paraphrases) and all ten level "
                        "pairs, as the released DFJ-Meta test set (default); like-train: built as the train split")
    o.add_argument("--pairs-per-image", type=int, default=None,
                   help="pairwise records per image (default: as many as its pointwise records, the paper's 1:1)")
    o.add_argument("--batch-size", type=int, default=64,
                   help="model calls sent per step, across items (default 64; raise with --concurrency)")
    o.add_argument("--limit", type=int, default=None, help="bootstrap only the first N images")
    o.add_argument("--dry-run", action="store_true", help="print the prompts that would be sent; call nothing")
    o.add_argument("--retry-failed", action="store_true", help="ask again the calls that failed in earlier runs")
    o.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows or calls failed")
    o.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="refuse larger images")
    add_image_root_option(o)
    o.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.set_defaults(run=run)


def identity(args: argparse.Namespace, side: str) -> dict[str, str | None]:
    """What names one role's model (part of the run's fingerprint); not the server's address, which
    may change between a run and its resumption."""
    return {k: model_option(args, k, f"{side}-") for k in ("backend", "model", "adapter")}


def evaluator_template(args: argparse.Namespace) -> str | Template | None:
    if args.evaluator_template is not None:
        return args.evaluator_template
    from ..train.record import find_trained_judge

    trained = find_trained_judge(args.evaluator_adapter, args.evaluator_model)
    if trained is None:
        from ..prompts.official import released_kind

        # A released judge is asked with the prompt it was trained on, never the reference prompt.
        return "official" if released_kind(args.evaluator_adapter) or released_kind(args.evaluator_model) else None
    if trained.kind != "pointwise":
        raise UsageError(f"--evaluator: {trained.path} is a {trained.kind} judge; the evaluator must rate 1..5 (pointwise)")
    return trained.template


def build(args: argparse.Namespace):
    from ..bootstrap import (
        BootstrapConfig,
        CallSettings,
        RolePrompts,
        Settings,
        parse_prompt_overrides,
    )

    prompts = RolePrompts.load(parse_prompt_overrides(args.prompt), evaluator_template(args))
    for name in ("generator_max_new_tokens", "evaluator_max_new_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    calls = CallSettings(
        generator=GenerationConfig(max_new_tokens=args.generator_max_new_tokens, temperature=args.temperature,
                                   seed=args.seed, top_logprobs=1),
        evaluator=GenerationConfig(max_new_tokens=args.evaluator_max_new_tokens, temperature=0.0, seed=args.seed,
                                   reasks=args.reasks),
        evaluator_mode=args.evaluator_mode,
        batch_size=args.batch_size,
    )
    settings = Settings(rounds=args.rounds, tolerance=args.tolerance, paraphrases=args.paraphrases,
                        recheck=not args.no_recheck, paraphrase_retries=args.paraphrase_retries,
                        keep_truncated=args.keep_truncated, level5=args.level5)
    config = BootstrapConfig(
        data=Path(args.data), out=Path(args.out), settings=settings, calls=calls, seed=args.seed,
        test_fraction=args.test_fraction, test_layout=args.test_layout, pairs_per_image=args.pairs_per_image,
        limit=args.limit,
        retry_failed=args.retry_failed, max_image_pixels=args.max_image_pixels,
        image_roots=tuple(args.image_root),
    )
    return config, prompts


def run(args: argparse.Namespace) -> int:
    from ..bootstrap import plan_dry_run, run_bootstrap
    from ..data import resolve_data_path

    config, prompts = build(args)
    resolve_data_path(config.data)  # a wrong --data fails before a model loads
    if args.dry_run:
        plan = plan_dry_run(config, prompts)
        print_dry_run(plan)
        return 1 if plan.errors and not args.allow_errors else 0

    def open_backends() -> tuple[Backend, Backend]:
        generator = backend_from_args(args, "generator-")
        if identity(args, "evaluator") == identity(args, "generator") and args.generator_backend != "openai":
            # One local model plays both roles: load it once. (A server gets a client per role, so
            # that both roles' calls of a step are in flight together.)
            return generator, generator
        try:
            return generator, backend_from_args(args, "evaluator-")
        except BaseException:
            generator.close()
            raise

    result = run_bootstrap(
        config, prompts, open_backends,
        identity={side: identity(args, side) for side in ROLE_SIDES},
        progress=lambda n: progress(n, "bootstrap"),
    )
    s, st = result.summary, result.stats
    rows = s["outputs"]["rows"]
    usage = s["usage"]
    lines = [
        f"bootstrap: {s['images']} images, acceptance {_pct(st['acceptance_rate'])}, mean rounds {st['mean_rounds']}, "
        f"{s['errors']} errors -> {result.out}",
        "  per level (accepted/units): " + ", ".join(
            f"L{k} {v['accepted']}/{v['units']}" for k, v in sorted(st["per_level"].items(), reverse=True)),
        f"  pointwise {rows['pointwise-train']} train / {rows['pointwise-test']} test; pairwise "
        f"{rows['pairwise-train']} train / {rows['pairwise-test']} test; rejected {rows['rejected']}; images "
        f"{s['outputs']['images']['train']} train / {s['outputs']['images']['test']} test "
        f"(test layout {s['outputs']['test_layout']})",
        f"  calls {usage['calls_total']} in all ({s['this_run']['calls_total']} this run, "
        f"{s['this_run']['calls_from_cache']} of them from the request cache, {s['this_run']['seconds']} s); "
        f"prompt tokens {usage['prompt_tokens_total']}, generated tokens {usage['generated_tokens_total']}"
        + _uncounted(usage),
        f"  report: {result.out / 'stats.json'}; train: dfj train pointwise --data {result.out / 'pointwise-train.jsonl'} …",
    ]
    for side in ROLE_SIDES:
        lines.extend(replica_lines((s.get("backends") or {}).get(side), f"  {side} "))
    if not s["complete"]:
        lines.append("  not complete: rerun the same command to resume")
    emit(s, args.json, lines)
    if s["errors"] and not args.allow_errors:
        print(f"dfj bootstrap: {s['errors']} error(s), listed in {result.out / 'errors.jsonl'}", file=sys.stderr)
        return 1
    return 0


def print_dry_run(plan: DryRunPlan) -> None:
    """The prompts a run would send, on stdout; input errors on stderr; then the call bounds."""
    for shown in plan.prompts:
        print(f"===== {shown.title} =====")
        print(shown.text.rstrip("\n"))
        print()
    for error in plan.errors:
        print(str(error), file=sys.stderr)
    low, high = plan.calls
    print(f"# dry run: {plan.images} images ({plan.test_images} test), {plan.units} units; {low} to {high} "
          f"model calls ({len(plan.errors)} input error(s)); nothing was sent")


def _uncounted(usage: dict) -> str:
    """Which calls the token totals leave out (servers without `usage`, score-only calls)."""
    prompt, generated = (sum(usage[f"calls_without_{k}_tokens"].values()) for k in ("prompt", "generated"))
    if not prompt and not generated:
        return ""
    return f" (not counted: prompt tokens of {prompt} calls, generated tokens of {generated}; see stats.json)"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"
