"""`dfj export`: merge a trained LoRA adapter into a standalone checkpoint, with a parity check."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..errors import UsageError
from .options import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="merge a LoRA adapter into a standalone checkpoint (transformers / vLLM)",
        description="Merge --adapter into its base model and save a standalone checkpoint with tokenizer, chat "
                    "template and preprocessor configs; then check that adapter and export give the same score "
                    "distributions on a few rows (max |dp| <= 1e-3 for float32 exports, 5e-2 for bf16/fp16).",
    )
    p.add_argument("--adapter", required=True, help="adapter folder written by `dfj train` (its --out)")
    p.add_argument("--out", required=True, help="folder for the merged checkpoint (must be new or empty)")
    p.add_argument("--base", default=None, help="base model (default: the one the adapter was trained on)")
    p.add_argument("--dtype", default="auto", help="auto (the base checkpoint's dtype) | float32 | bfloat16 | float16")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g = p.add_argument_group("parity check")
    g.add_argument("--no-parity", action="store_true", help="skip the parity check")
    g.add_argument("--parity-data", default=None, help="rows to compare on (default: the adapter's training data)")
    g.add_argument("--parity-samples", type=int, default=8, help="how many rows (default 8)")
    g.add_argument("--tolerance", type=float, default=None,
                   help="max absolute probability difference (default 1e-3 float32, 5e-2 bf16/fp16)")
    g.add_argument("--device", default="auto", help="device for the parity check: auto | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.export import export
    if args.parity_samples < 1:
        raise UsageError(f"--parity-samples must be >= 1, got {args.parity_samples}")
    outcome = export(args.adapter, args.out, base=args.base, dtype=args.dtype, parity_data=args.parity_data,
                     parity_n=args.parity_samples, tolerance=args.tolerance, device=args.device,
                     overwrite=args.overwrite, check=not args.no_parity)
    parity = outcome.parity
    summary = {"out": str(outcome.out), "base": outcome.base, "dtype": outcome.dtype,
               "copied": list(outcome.copied), "parity": None if parity is None else asdict(parity)}
    lines = [f"merged {args.adapter} into {outcome.base} -> {outcome.out} ({outcome.dtype}; copied "
             f"{', '.join(outcome.copied)})"]
    if parity is not None:
        verdict = "PASSED" if parity.passed else "FAILED"
        lines.append(f"parity {verdict}: {parity.n} rows, max |dp| {parity.max_abs_diff:.2e} (tolerance "
                     f"{parity.tolerance:.0e}), mean {parity.mean_abs_diff:.2e}, same top choice "
                     f"{parity.same_argmax:.0%} ({parity.device}, {parity.dtype})")
    emit(summary, args.json, lines)
    return 0 if parity is None or parity.passed else 1
