"""`dfj train pointwise|pairwise`: LoRA fine-tuning of a Qwen2.5-VL judge (TRL SFTTrainer + PEFT).

Settings: command line > `--config YAML` > the released recipe's defaults. Multi-GPU:
`accelerate launch --config_file configs/accelerate/<zero2|zero3|fsdp>.yaml -m deepfakejudge.cli train …`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..train.config import (
    DEFAULT_MAX_LENGTH,
    PAPER_LEARNING_RATE,
    load_config,
    parse_set,
)
from .options import emit

# Command-line flag -> config key. Every key can also be given with --set KEY=VALUE or in YAML.
FLAGS: dict[str, str] = {
    "base": "base", "data": "data", "out": "out", "template": "template", "max_steps": "max_steps",
    "learning_rate": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps", "effective_batch": "effective_batch_size",
    "end_of_turn": "end_of_turn", "lora_r": "lora_r", "lora_alpha": "lora_alpha",
    "max_length": "max_length", "min_pixels": "min_pixels", "max_pixels": "max_pixels", "device": "device",
    "dtype": "dtype", "save_steps": "save_steps", "seed": "seed", "visual_cache_gb": "visual_cache_gb",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="LoRA-train a pointwise or pairwise judge (TRL + PEFT)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind in ("pointwise", "pairwise"):
        k = kinds.add_parser(
            kind, help=f"train a {kind} judge",
            description=f"Train a {kind} judge with LoRA. Defaults are the released DeepfakeJudge recipe; "
                        "precedence: command line > --config YAML > defaults.",
        )
        g = k.add_argument_group("run")
        g.add_argument("--base", help="base model: local folder or Hugging Face id (e.g. Qwen/Qwen2.5-VL-3B-Instruct)")
        g.add_argument("--data", help="training data: canonical or ms-swift JSONL, or a split folder with data.jsonl")
        g.add_argument("--out", help="output folder: the adapter, dfj_train.json and checkpoint-N folders")
        g.add_argument("--config", help="YAML file of settings: any field of deepfakejudge.train.config.TrainConfig; unknown keys are errors")
        g.add_argument("--template", help="prompt: a template FILE, 'official' or 'default' (default: the authors' "
                                          "prompt when --base is a released DFJ judge, else the project's own; see "
                                          "dfj judge --help); the same template is recorded and reused by "
                                          "`dfj judge --adapter`. Official ms-swift rows are trained on with their own "
                                          "prompt as written")
        g.add_argument("--max-steps", type=int, help="stop after N optimiser steps (smoke runs; overrides epochs)")
        g.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N in --out")
        g.add_argument("--allow-errors", action="store_true", default=None,
                       help="train on the usable rows when some cannot be used, rows over --max-length included "
                            "(ms-swift drops those silently; here they are counted, listed and recorded)")
        g.add_argument("--dry-run", action="store_true",
                       help="resolve the settings and check the data, print them, do not train")
        g.add_argument("--json", action="store_true", help="print the outcome as one JSON object on stdout")
        h = k.add_argument_group("recipe (defaults: the released judges')")
        h.add_argument("--learning-rate", type=float,
                       help=f"default {PAPER_LEARNING_RATE:g}: the paper's value, kept for parity; it is unusually "
                            "low for LoRA (1e-4..2e-4 is common)")
        h.add_argument("--epochs", type=float, help="default 2")
        h.add_argument("--batch-size", type=int, help="per-device batch, default 16 (the paper: 16 on each of 2 GPUs)")
        h.add_argument("--effective-batch", type=int,
                       help="examples per optimizer step, default 32 (the paper's 16 x 2 GPUs): the gradient "
                            "accumulation is derived from the device count (2 on one GPU, 1 on two; on four the "
                            "per-device batch drops to 8) and printed")
        h.add_argument("--grad-accum", type=int,
                       help="gradient accumulation steps as given (overrides --effective-batch)")
        h.add_argument("--end-of-turn", choices=("im_end_newline", "im_end"),
                       help="what the loss covers after the answer: im_end_newline, '<|im_end|>' and the newline after "
                            "it as ms-swift >= 3.11 trains (default); im_end, '<|im_end|>' only (ms-swift < 3.11)")
        h.add_argument("--lora-r", type=int, help="default 32")
        h.add_argument("--lora-alpha", type=int, help="default 64")
        h.add_argument("--max-length", type=int,
                       help=f"default {DEFAULT_MAX_LENGTH[kind]}; longer rows are refused, never cut")
        h.add_argument("--min-pixels", type=int, help="image budget, default 3136")
        h.add_argument("--max-pixels", type=int, help="image budget, default 1003520")
        h.add_argument("--device", help="auto | cpu | cuda (default auto)")
        h.add_argument("--dtype", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
        h.add_argument("--save-steps", type=int, help="checkpoint every N steps, default 500")
        h.add_argument("--visual-cache-gb", type=float,
                       help="CPU memory for the images' visual embeddings, computed once before training (the "
                            "vision tower is frozen), default 32; 0: run the tower in every step")
        h.add_argument("--seed", type=int, help="default 42")
        h.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other setting, e.g. --set lora_dropout=0 --set lr_scheduler_type=linear")
        k.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    cli = parse_set(args.set)
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            cli[key] = value
    if args.allow_errors:
        cli["allow_errors"] = True
    return load_config(args.kind, cli, args.config)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.dry_run:
        from ..train.sft import check_data

        summary = check_data(config)
        emit(summary, args.json, [f"{k}: {v}" for k, v in summary["config"].items()]
             + [f"batch: {summary['batch']['effective']} per optimizer step = {summary['batch']['per_device']} per "
                f"device x {summary['batch']['devices']} device(s) x {summary['batch']['gradient_accumulation_steps']} "
                "accumulation step(s)",
                f"data: {summary['data']['examples']} usable of {summary['data']['rows']} rows "
                f"({summary['data']['too_long']} over max_length), "
                f"longest sequence {summary['data']['longest_sequence']} tokens"])
        return 0
    from ..train.sft import run_training

    # transformers prints its log lines to stdout; stdout is for the result (--json) only.
    with contextlib.redirect_stdout(sys.stderr):
        outcome = run_training(config, resume=args.resume)
    if not outcome.main_process:
        return 0  # under accelerate launch only rank 0 reports
    summary = {
        "kind": config.kind, "out": str(outcome.out), "examples": outcome.examples, "skipped": outcome.skipped,
        "global_step": outcome.global_step, "train_loss": outcome.train_loss,
        "train_samples_per_second": outcome.samples_per_second,
    }
    loss = "n/a" if outcome.train_loss is None else f"{outcome.train_loss:.4f}"
    emit(summary, args.json, [
        f"trained {config.kind} judge on {outcome.examples} examples ({outcome.skipped} skipped): step "
        f"{outcome.global_step}, mean loss {loss}, {outcome.samples_per_second} samples/s -> {outcome.out}",
        f"use it: dfj judge {config.kind} --model {config.base} --adapter {outcome.out} --data D --out O",
    ])
    print(f"run record: {outcome.out}/dfj_train.json", file=sys.stderr)
    return 0
