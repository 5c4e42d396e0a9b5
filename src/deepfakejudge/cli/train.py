"""`dfj train pointwise|pairwise`: LoRA fine-tuning of a Qwen2.5-VL judge (TRL SFTTrainer + PEFT).

Settings: command line > `--config YAML` > the released recipe's defaults. Multi-GPU:
`accelerate launch --config_file configs/accelerate/<zero2|zero3|fsdp>.yaml -m deepfakejudge.cli train …`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..train.config import FIELD_TYPES, config_fields, help_text, load_config, parse_set
from .options import emit


def add_config_options(parser: argparse.ArgumentParser, kind: str) -> dict[str, argparse._ArgumentGroup]:
    """One option per setting that declares a flag (`train.config.setting`), its type, choices and
    the default shown in its help taken from the dataclass; every option's default is None, so
    only what the user gave overrides YAML and the defaults. The rest is listed under --set."""
    groups = {"run": parser.add_argument_group("run"),
              "recipe": parser.add_argument_group("recipe (defaults: the released judges')")}
    for f in config_fields():
        flag = f.metadata["flag"]
        if flag is None:
            continue
        kwargs = {"dest": f.name, "default": None, "help": help_text(f, kind)}
        if FIELD_TYPES[f.name].base is bool:
            kwargs["action"] = "store_true"
        elif FIELD_TYPES[f.name].base is tuple:  # repeatable; None when never given
            kwargs.update(action="append", metavar="DIR")
        else:
            kwargs["type"] = FIELD_TYPES[f.name].base
            kwargs["metavar"] = flag.removeprefix("--").replace("-", "_").upper()
            if f.metadata["choices"]:
                kwargs.update(choices=f.metadata["choices"], metavar=None)
        groups[f.metadata["group"]].add_argument(flag, **kwargs)
    return groups


def set_help(kind: str) -> str:
    """--set's help: the settings without a flag of their own, each with its default."""
    others = [f for f in config_fields() if f.metadata["flag"] is None]
    return ("any other setting, e.g. --set lora_dropout=0 --set lr_scheduler_type=linear; settings without a flag: "
            + "; ".join(f"{f.name}: {help_text(f, kind)}" for f in others))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="LoRA-train a pointwise or pairwise judge (TRL + PEFT)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind in ("pointwise", "pairwise"):
        k = kinds.add_parser(
            kind, help=f"train a {kind} judge",
            description=f"Train a {kind} judge with LoRA. Defaults are the released DeepfakeJudge recipe; "
                        "precedence: command line > --config YAML > defaults.",
        )
        groups = add_config_options(k, kind)
        g = groups["run"]
        g.add_argument("--config", help="YAML file of settings: any field of deepfakejudge.train.config.TrainConfig; unknown keys are errors")
        g.add_argument("--resume", action="store_true", help="continue from the last checkpoint-N in --out")
        g.add_argument("--dry-run", action="store_true",
                       help="resolve the settings and check the data, print them, do not train")
        g.add_argument("--json", action="store_true", help="print the outcome as one JSON object on stdout")
        groups["recipe"].add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help(kind))
        k.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    cli = parse_set(args.set)
    for f in config_fields():
        value = getattr(args, f.name, None) if f.metadata["flag"] else None
        if value is not None:
            cli[f.name] = value
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
