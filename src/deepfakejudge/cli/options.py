"""Options shared by every command that calls a model, and the one place that builds a backend
and a progress bar from them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm import tqdm

from ..backends import BACKENDS, Backend, LoadOptions, PixelBudget, load_backend
from ..backends.base import MAX_PIXELS, MIN_PIXELS
from ..data.images import MAX_IMAGE_PIXELS


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="local checkpoint folder or Hugging Face model id")
    g.add_argument("--backend", default="hf", choices=sorted(BACKENDS), help="how the model is run (default: hf)")
    g.add_argument("--adapter", default=None, help="LoRA adapter folder to apply on top of --model")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    g.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help=f"image pixel budget, lower end (default {MIN_PIXELS}, as in training)")
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help=f"image pixel budget, upper end (default {MAX_PIXELS}, as in training)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--data", required=True, help="dataset: canonical or ms-swift JSONL, or a split folder with data.jsonl")
    g.add_argument("--out", required=True, help="results JSONL (resumed if it exists; summary written beside it)")
    g.add_argument("--batch-size", type=int, default=8, help="items per model call (default 8)")
    g.add_argument("--limit", type=int, default=None, help="judge at most N items (smoke runs)")
    g.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming --out")
    g.add_argument("--allow-errors", action="store_true", help="exit 0 even when some rows could not be judged")
    g.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="refuse larger images (decompression-bomb guard)")
    g.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")


def backend_from_args(args: argparse.Namespace) -> Backend:
    options = LoadOptions(
        model=args.model,
        adapter=args.adapter,
        device=args.device,
        dtype=args.dtype,
        budget=PixelBudget(args.min_pixels, args.max_pixels),
    )
    return load_backend(args.backend, options)


def progress(total: int, desc: str) -> tqdm:
    # stderr only: stdout is reserved for results (--json).
    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True, disable=None)


def emit(summary: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print("\n".join(lines))
