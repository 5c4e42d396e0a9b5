"""`dfj data validate|stats|convert|fetch`: check a dataset row by row, describe it, write it for
another trainer (ms-swift, LLaMA-Factory), or download the released DeepfakeJudge data."""

from __future__ import annotations

import argparse
import sys

from ..data import InputError, load_records, open_image
from ..data.images import MAX_IMAGE_PIXELS, remote_version
from ..data.stats import dataset_stats
from ..data.urls import is_url
from ..errors import UsageError
from ..prompts import load_template
from .options import add_data_root_option, add_image_root_option, emit, progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="validate or describe a dataset")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    v = verbs.add_parser("validate", help="check every row and image; list each problem with file, line and field")
    s = verbs.add_parser("stats", help="counts per label, source, score, preference and artifact category")
    for q in (v, s):
        q.add_argument("data", help="canonical or ms-swift JSONL, a split folder with data.jsonl, or a split name")
        add_data_root_option(q)
        add_image_root_option(q)
        q.add_argument("--template", action="append", default=[], metavar="PATH|official",
                       help="template the ms-swift rows were built with (repeatable; 'official': the authors' "
                            "prompts, which the released DFJ-Meta rows were built with)")
        q.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    v.add_argument("--no-images", action="store_true",
                   help="check rows only, do not open images (URL images are still checked to exist: one cheap "
                        "metadata request each)")
    v.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS)
    v.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="report rows whose texts exceed this many tokens (default: the --tokenizer model's context "
                        "length, else 128000)")
    v.add_argument("--tokenizer", default=None, metavar="MODEL_DIR",
                   help="count tokens with this local model's tokenizer (default: report only rows certainly over, "
                        "more than 8 characters per token of the limit)")
    v.set_defaults(run=validate)
    s.set_defaults(run=stats)
    add_convert(verbs)
    add_fetch(verbs)


def _templates(paths: list[str]):
    out = []
    for path in paths:
        if path == "official":  # the authors' prompts of the released judges (prompts/official.py)
            from ..prompts.official import official_template

            out += [official_template("pointwise"), official_template("pairwise")]
            continue
        for kind in ("pointwise", "pairwise"):
            try:
                out.append(load_template(path, kind))
                break
            except ValueError:
                continue
        else:
            raise UsageError(f"--template {path}: contains neither the pointwise nor the pairwise placeholders")
    return tuple(out)


def validate(args: argparse.Namespace) -> int:
    dataset = load_records(args.data, templates=_templates(args.template), image_roots=args.image_root)
    problems = [str(e) for e in dataset.errors]
    problems += _over_budget(dataset.samples, args.max_prompt_tokens, args.tokenizer)
    # A URL can be mistyped in ways a row check cannot see (bucket, prefix): with --no-images it is
    # still asked for its metadata, without downloading the image.
    to_check = dataset.samples if not args.no_images else [s for s in dataset.samples if is_url(s.image)]
    if to_check:
        with progress(len(to_check), "validate images") as bar:
            for sample in to_check:
                try:
                    if args.no_images:
                        remote_version(sample.image)
                    else:
                        open_image(sample, args.max_image_pixels)
                except InputError as exc:
                    problems.append(f"{sample.where}: field '{exc.field}': {exc.message}")
                bar.update(1)
    for line in problems:
        print(line, file=sys.stderr)
    summary = {"data": str(dataset.path), "rows": len(dataset.samples) + len(dataset.errors),
               "valid": len(dataset.samples) + len(dataset.errors) - len(problems), "problems": len(problems)}
    verdict = "ok" if not problems else f"{len(problems)} problem(s), listed above"
    emit(summary, args.json, [f"{dataset.path}: {summary['rows']} rows, {verdict}"])
    return 1 if problems else 0


def _over_budget(samples, limit: int | None, tokenizer: str | None) -> list[str]:
    """Rows whose text fields alone are over the prompt budget (judging them would be refused)."""
    from ..backends.base import ChatRequest
    from ..backends.budget import REMOTE_DEFAULT_LIMIT, PromptBudget, context_length, longest_field, tokenizer_budget

    if tokenizer is not None:
        from transformers import AutoConfig, AutoTokenizer

        limit = limit or context_length(AutoConfig.from_pretrained(tokenizer)) or REMOTE_DEFAULT_LIMIT
        budget = tokenizer_budget(AutoTokenizer.from_pretrained(tokenizer), limit, 0)
    else:
        budget = PromptBudget(limit or REMOTE_DEFAULT_LIMIT)
    out = []
    for sample in samples:
        texts = [getattr(sample, name) or "" for name in ("response", "response_a", "response_b")]
        over = budget.check(ChatRequest(text="\n".join(texts)))
        if over is not None:
            name, length = longest_field(sample)
            out.append(f"{sample.where}: field '{name}': is {length} characters: {over}")
    return out


def stats(args: argparse.Namespace) -> int:
    dataset = load_records(args.data, templates=_templates(args.template), image_roots=args.image_root)
    summary = dataset_stats(dataset).to_dict()
    lines = [f"{dataset.path}: {summary['rows']} rows ({summary['errors']} unreadable), {summary['images']} images"]
    for key in ("label", "source", "score", "preferred", "artifact_category"):
        if summary[key]:
            lines.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in summary[key].items()))
    emit(summary, args.json, lines)
    return 0


def add_convert(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("convert", help="write judge training rows for ms-swift or LLaMA-Factory")
    c.add_argument("data", help="canonical or ms-swift JSONL, a split folder with data.jsonl, or a split name")
    add_data_root_option(c)
    add_image_root_option(c)
    c.add_argument("--to", required=True, choices=("msswift", "llamafactory"), help="target trainer's format")
    c.add_argument("--out", required=True, help="output JSONL (LLaMA-Factory: dataset_info.json is written beside it)")
    c.add_argument("--kind", choices=("pointwise", "pairwise"), default=None,
                   help="judge kind (default: pairwise if the first row has response_a, else pointwise)")
    c.add_argument("--template", default=None, help="prompt template (default: the project's own); also reads ms-swift rows")
    c.add_argument("--name", default=None, help="LLaMA-Factory dataset name (default: the output file's stem)")
    c.add_argument("--relative-to", default=None, metavar="DIR",
                   help="ms-swift: write image paths relative to DIR, then train with ROOT_IMAGE_DIR=DIR or from DIR "
                        "(default: absolute paths, which ms-swift opens from any working directory)")
    c.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows could not be converted")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    c.set_defaults(run=convert)


def convert(args: argparse.Namespace) -> int:
    from ..prompts import resolve_template
    from ..train.formats import convert as convert_rows

    if args.kind:
        readers = (resolve_template(args.template, args.kind),)
    else:
        readers = _templates([args.template] if args.template else [])
    # Confined as the other batch commands: the written rows would make a trainer read any file.
    dataset = load_records(args.data, templates=readers, image_roots=args.image_root)
    kind = args.kind or ("pairwise" if dataset.samples and dataset.samples[0].response_a is not None else "pointwise")
    template = resolve_template(args.template, kind)
    written, errors, info = convert_rows(dataset.samples, template, args.out, args.to, args.name, args.relative_to)
    problems = [str(e) for e in (*dataset.errors, *errors)]
    for line in problems:
        print(line, file=sys.stderr)
    summary = {"data": str(dataset.path), "out": args.out, "to": args.to, "kind": kind, "rows": written,
               "problems": len(problems), "dataset_info": None if info is None else str(info),
               "template_sha256": template.sha256, "image_paths": _image_paths(args)}
    emit(summary, args.json, [f"{dataset.path} -> {args.out} ({args.to}, {kind}): {written} rows, "
                              f"{len(problems)} problem(s)" + (f"; registered in {info}" if info else "")
                              + f"; image paths {summary['image_paths']}"])
    return 1 if problems and not args.allow_errors else 0


def _image_paths(args: argparse.Namespace) -> str:
    """How the written rows name their images, and what the trainer needs to find them."""
    from pathlib import Path

    if args.to == "llamafactory":
        return f"relative to {Path(args.out).resolve().parent} (LLaMA-Factory's dataset folder)"
    if args.relative_to is None:
        return "absolute"
    root = Path(args.relative_to).resolve()
    return f"relative to {root}: train with ROOT_IMAGE_DIR={root} (or from that folder)"


def add_fetch(verbs: argparse._SubParsersAction) -> None:
    from ..data.splits import DATASET_ID, GROUPS, SPLITS

    f = verbs.add_parser("fetch", help=f"download the released data ({DATASET_ID}, gated) so splits work by name",
                         description=f"Download {DATASET_ID} with huggingface_hub (token: $HF_TOKEN or your "
                                     "`hf auth login`). Afterwards every --data accepts a split name: "
                                     + ", ".join(SPLITS) + ".")
    f.add_argument("--out", default=None, metavar="DIR",
                   help="folder to download into (default: $DFJ_DATA, else ~/.cache/deepfakejudge/DeepfakeJudge-Dataset)")
    f.add_argument("--split", action="append", default=[], metavar="NAME", choices=[*SPLITS, *GROUPS],
                   help="only this split (repeatable; default: everything)")
    f.add_argument("--revision", default=None, help="dataset revision (branch, tag or commit; default: main)")
    f.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    f.set_defaults(run=fetch)


def fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import fetch_dataset

    result = fetch_dataset(args.out, args.split, args.revision)
    present = {name: str(path) for name, path in result.splits.items() if path is not None}
    summary = {"root": str(result.root), "revision": result.revision, "splits": present,
               "absent": [name for name, path in result.splits.items() if path is None]}
    lines = [f"{result.root}: {len(present)} of {len(result.splits)} splits present"]
    lines += [f"  {name}: {path}" for name, path in present.items()]
    if summary["absent"]:
        lines.append("  absent: " + ", ".join(summary["absent"]))
    emit(summary, args.json, lines)
    return 0
