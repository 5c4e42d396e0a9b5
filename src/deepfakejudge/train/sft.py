"""LoRA fine-tuning of a Qwen2-VL / Qwen2.5-VL judge with TRL's `SFTTrainer` and PEFT.

The trainer is TRL's; this module adds only what is judge specific: the examples and the
collator (built with the inference processor, see `collate`), the LoRA targets (every linear
layer of the language model; vision tower and merger stay frozen), the settings of the released
recipe (`config`), checkpoints with resume, and the run record `dfj judge --adapter` reads.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingExtra, UsageError
from ..prompts import resolve_template
from ..prompts.official import released_judge
from ..runtime import resolve_device, resolve_dtype
from .config import TrainConfig, batch_plan, config_fields, with_batch_plan
from .prepare import PreparedData, prepare_examples
from .record import RUN_FILE, read_record, write_record
from .visual import VisualStore, encode_images

# Settings that may change between a run and its resumption (they do not change what is learnt
# per step, or extending a run is the point of resuming; `out` changes when a run folder is
# moved or copied to another machine).
RESUMABLE_CHANGES = frozenset({"max_steps", "num_train_epochs", "save_steps", "save_total_limit", "logging_steps",
                               "dataloader_num_workers", "allow_errors", "device", "visual_cache_gb", "out",
                               "image_root"})


@dataclass(frozen=True)
class TrainOutcome:
    out: Path
    global_step: int
    train_loss: float | None
    samples_per_second: float | None
    examples: int
    skipped: int
    record: dict[str, Any]
    model: Any = field(default=None, repr=False, compare=False)  # the trained PeftModel, still in memory
    main_process: bool = True  # False on the other ranks of a multi-GPU run


def _log(message: str) -> None:
    # Every rank of a multi-GPU run logs the same lines: rank 0 speaks for all (torchrun and
    # accelerate set RANK).
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _import_training():
    try:
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(
            f"dfj train needs packages that are not installed ({exc.name}); install them with: "
            "pip install 'deepfakejudge[train]'"
        ) from exc


def language_model_targets(model: Any) -> str:
    """PEFT `target_modules` regex for every linear layer under the language model (attention and
    MLP projections); the vision tower, its merger and lm_head do not match."""
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".language_model." in f".{n}."]
    if not names:
        raise UsageError("base: the model has no linear layers under a 'language_model' module; "
                         "only Qwen2-VL / Qwen2.5-VL checkpoints are supported")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return r"(.*\.)?language_model\..*\.(" + "|".join(leaves) + ")"


def vision_without_grad(model: Any) -> None:
    """Run the frozen vision tower (and merger) without autograd.

    Workaround: transformers' `enable_input_require_grads` (transformers 5.23; called by TRL for
    PEFT + gradient checkpointing and again by `activation_checkpointing_enable`) hooks the input
    embedding of every sub-model, the vision tower's patch embedding included. The frozen tower's
    output then requires grad and backward runs through all of its blocks for nothing: no vision
    weight trains, so the adapter's gradients are the same without it (tests/test_train.py checks
    this). Drop when transformers hooks only the text embedding.
    """
    import torch

    towers = [m for name, m in model.named_modules() if name.split(".")[-1] == "visual"]
    if len(towers) != 1:
        raise UsageError(f"base: expected one 'visual' module (Qwen2-VL / Qwen2.5-VL), found {len(towers)}")
    grad_was: list[bool] = []

    def before(module: Any, args: Any) -> None:
        grad_was.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def after(module: Any, args: Any, output: Any) -> None:
        torch.set_grad_enabled(grad_was.pop())

    towers[0].register_forward_pre_hook(before)
    towers[0].register_forward_hook(after, always_call=True)


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def _check_out(config: TrainConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: fresh run); refuses to overwrite a previous run."""
    out = Path(config.out)
    checkpoints = _checkpoints(out) if out.is_dir() else []
    previous = read_record(out) if out.is_dir() else None
    if not resume:
        # A run that died before its first checkpoint left nothing to continue: start afresh.
        if checkpoints or (previous is not None and previous.get("status") == "done"):
            raise UsageError(
                f"--out {out}: already holds a training run ({RUN_FILE}"
                + (f", {checkpoints[-1].name}" if checkpoints else "")
                + "); pass --resume to continue it, or choose a new --out"
            )
        return None
    if not checkpoints:
        raise UsageError(f"--resume: no checkpoint-N folder in {out}; run without --resume to start training")
    if previous is not None:
        before, now = previous.get("config", {}), config.to_dict()
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            raise UsageError(
                "--resume: settings differ from the run being resumed: "
                + ", ".join(f"{k} {before.get(k)!r} -> {now[k]!r}" for k in changed)
                + "; resume with the same settings, or start a new run in another --out"
            )
    return checkpoints[-1]


def training_runtime(config: TrainConfig) -> tuple[Any, Any, bool, bool]:
    """(device, model dtype, bf16 mixed precision, fp16 mixed precision), by the rule judging and
    export use (`runtime`): `auto` is bf16 on GPU, fp16 on a GPU without bf16, fp32 on CPU."""
    import torch

    device = resolve_device(config.device)
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if device.index is not None and world > 1:
        raise UsageError(
            f"device: '{config.device}' picks one GPU, but this is one of {world} processes (accelerate launch, "
            "torchrun), each on its own GPU; use --device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    dtype = resolve_dtype(config.dtype, device)
    if dtype in (torch.bfloat16, torch.float16) and device.type != "cuda":
        raise UsageError(f"dtype: {config.dtype} training needs a GPU; use float32 (or auto) on CPU")
    return device, dtype, dtype == torch.bfloat16, dtype == torch.float16


def pin_device(args: Any, device: Any) -> None:
    """Train on GPU N alone for `--device cuda:N`.

    Workaround: transformers' TrainingArguments (5.24) puts a single process on cuda:0 and runs
    DataParallel over every visible GPU. Its device is a cached property: setting the cached value
    (and the current CUDA device, which accelerate's "cuda" follows) moves the run to GPU N.
    """
    if device.type != "cuda" or device.index is None:
        return
    import torch

    torch.cuda.set_device(device)
    args.__dict__["_setup_devices"] = device  # functools.cached_property keeps its value here
    args._n_gpu = 1


def _load_model(config: TrainConfig, device: Any, dtype: Any) -> Any:
    from transformers import AutoConfig

    from ..backends.hf import model_classes
    from ..backends.vision_attention import set_grouped_vision_attention

    model_type = AutoConfig.from_pretrained(config.base).model_type
    classes = model_classes()
    if model_type not in classes:
        raise UsageError(f"base '{config.base}': architecture '{model_type}' is not supported "
                         f"(supported: {', '.join(classes)})")
    model = classes[model_type].from_pretrained(config.base, dtype=dtype, attn_implementation="sdpa")
    # Grouped vision attention on GPU only, as HFBackend's "auto" (backends/vision_attention.py).
    set_grouped_vision_attention(model, device.type == "cuda")
    return model


def _encode_visual(trainer: Any, processor: Any, data: PreparedData, config: TrainConfig,
                   store: VisualStore) -> dict[str, Any]:
    """Fill `store` with the training images' embeddings, or say why the tower runs per step."""
    from tqdm import tqdm

    if config.visual_cache_gb <= 0:
        return {"used": False, "reason": "visual_cache_gb is 0"}
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return {"used": False, "reason": "the weights are sharded (DeepSpeed/FSDP)"}
    paths = list(data.image_tokens)
    with tqdm(total=len(paths), desc="visual embeddings", unit="image", file=sys.stderr, dynamic_ncols=True,
              disable=None if trainer.is_world_process_zero() else True) as bar:
        info = encode_images(trainer.model, processor, store, paths, sum(data.image_tokens.values()),
                             int(config.visual_cache_gb * 2**30), batch_size=config.per_device_train_batch_size,
                             progress=bar.update)
    if info["used"]:
        _log(f"visual embeddings: {info['images']} images encoded once in {info['seconds']:.1f} s "
             f"({info['bytes'] / 2**20:.0f} MiB in CPU memory); training steps run without the vision tower")
    return info


def _sft_config(config: TrainConfig, device: Any, bf16: bool, fp16: bool) -> Any:
    from trl import SFTConfig

    # Each setting that TRL takes as it is names its SFTConfig argument in its declaration (`sft`).
    passed = {f.metadata["sft"]: getattr(config, f.name) for f in config_fields() if f.metadata["sft"]}
    return SFTConfig(
        **passed,
        bf16=bf16,
        fp16=fp16,
        use_cpu=config.device == "cpu",
        logging_first_step=True,
        save_strategy="steps",
        dataloader_pin_memory=device.type == "cuda",
        report_to="none",
        # The collator builds complete sequences and the length check ran before training:
        # nothing for TRL to prepare or truncate, and no columns for it to drop.
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )


def data_parallel_devices(config: TrainConfig) -> int:
    """Devices that each take a per-device batch: the launcher's processes (torchrun and accelerate
    set WORLD_SIZE), or, in one process on several GPUs, the GPUs (the Trainer then runs
    DataParallel); 1 on CPU and for one GPU named by `cuda:N`."""
    import torch

    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world > 1:
        return world
    if config.device in ("auto", "cuda") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def plan_batch(config: TrainConfig) -> tuple[TrainConfig, Any]:
    """`config` with the per-device batch and accumulation that give its effective batch here."""
    plan = batch_plan(config, data_parallel_devices(config))
    return with_batch_plan(config, plan), plan


def _check_trainable(model: Any) -> int:
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    stray = [n for n in trainable if "lora_" not in n or ".language_model." not in n]
    if not trainable or stray:
        raise RuntimeError(f"LoRA setup: expected only language-model LoRA weights to train, found {stray[:5]}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_data(config: TrainConfig) -> dict[str, Any]:
    """The resolved settings and what the data holds, without loading the model (`--dry-run`)."""
    from ..backends.processor import ImageTextProcessor

    template = resolve_template(config.template, config.kind, model=config.base)  # released base: the authors' prompt
    config, plan = plan_batch(config)
    _log(plan.describe())
    processor = ImageTextProcessor.from_pretrained(config.base, config.min_pixels, config.max_pixels)
    data = prepare_examples(config.data, template, processor, config.max_length, config.end_of_turn,
                            config.image_root)
    for line in data.report():
        _log(line)
    return {
        "config": config.to_dict(),
        "batch": {"effective": plan.effective, "per_device": plan.per_device, "devices": plan.devices,
                  "gradient_accumulation_steps": plan.accumulation, "note": plan.note},
        "template": {"name": template.name, "sha256": template.sha256, "official": template.official},
        "data": {"path": str(data.data_path), "rows": data.rows, "examples": len(data.examples),
                 "skipped": len(data.errors), "too_long": data.too_long, "longest_sequence": data.longest},
    }


def run_training(config: TrainConfig, resume: bool = False) -> TrainOutcome:
    """Train a LoRA judge as `config` says; returns what was trained and where it was saved."""
    _import_training()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    from ..backends.processor import ImageTextProcessor
    from .collate import JudgeCollator

    template = resolve_template(config.template, config.kind, model=config.base)  # released base: the authors' prompt
    config, plan = plan_batch(config)
    checkpoint = _check_out(config, resume)
    _log(plan.describe())
    device, dtype, bf16, fp16 = training_runtime(config)
    processor = ImageTextProcessor.from_pretrained(config.base, config.min_pixels, config.max_pixels)
    data = prepare_examples(config.data, template, processor, config.max_length, config.end_of_turn,
                            config.image_root)
    _report_data(data, config)

    # The training arguments first: under DeepSpeed ZeRO-3 they make from_pretrained shard the
    # weights as they load (zero3_init_flag) instead of materialising the model on every rank.
    args = _sft_config(config, device, bf16, fp16)
    pin_device(args, device)
    model = _load_model(config, device, dtype)
    vision_without_grad(model)
    visual = VisualStore()  # filled below, once the model is on its device
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=language_model_targets(model), bias="none", task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        data_collator=JudgeCollator(processor, visual=visual, end_of_turn=config.end_of_turn),
        train_dataset=Dataset.from_list([ex.to_row() for ex in data.examples]),
        processing_class=processor.tokenizer,
        peft_config=lora,
    )
    n_trainable = _check_trainable(trainer.model)
    record = _record(config, template, data, n_trainable, status="running")
    record["runtime"] = {
        "model_dtype": str(dtype).removeprefix("torch."), "bf16": bf16, "fp16": fp16,
        "device": str(trainer.args.device), "world_size": trainer.args.world_size,
        # train_batch_size is per device x the GPUs of one process (DataParallel); world_size the processes.
        "effective_batch": trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
        * trainer.args.world_size,
        "batch_plan": plan.describe(),
    }
    if record["runtime"]["effective_batch"] != plan.effective:  # a device layout we did not foresee
        _log(f"warning: the trainer's effective batch is {record['runtime']['effective_batch']}, "
             f"not the planned {plan.effective}")
    record["runtime"]["visual_cache"] = _encode_visual(trainer, processor, data, config, visual)
    if trainer.is_world_process_zero():
        write_record(config.out, record, template)
    _log(f"train {config.kind}: {len(data.examples)} examples, {n_trainable:,} trainable LoRA parameters, "
         f"lr {config.learning_rate:g}" + (f", resuming from {checkpoint.name}" if checkpoint else ""))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.save_model(config.out)
    metrics = dict(result.metrics)
    losses = [
        {"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
        for h in trainer.state.log_history if "loss" in h
    ]
    record = {**record, "status": "done", "train": {
        "global_step": trainer.state.global_step,
        "train_loss": metrics.get("train_loss"),
        "train_runtime_s": metrics.get("train_runtime"),
        "train_samples_per_second": metrics.get("train_samples_per_second"),
        "losses": losses,
        "resumed_from": checkpoint.name if checkpoint else None,
    }}
    if trainer.is_world_process_zero():
        write_record(config.out, record, template)
    return TrainOutcome(
        out=Path(config.out),
        global_step=trainer.state.global_step,
        train_loss=metrics.get("train_loss"),
        samples_per_second=metrics.get("train_samples_per_second"),
        examples=len(data.examples),
        skipped=len(data.errors),
        record=record,
        model=trainer.model,
        main_process=trainer.is_world_process_zero(),
    )


def _report_data(data: PreparedData, config: TrainConfig) -> None:
    if data.errors:
        for line in data.report():
            _log(line)
        # ms-swift drops over-length rows silently; we refuse unless told, and always say how many.
        long = f", {data.too_long} of them longer than max_length {config.max_length}" if data.too_long else ""
        if not config.allow_errors:
            raise InputError(
                f"--data {data.data_path}: {len(data.errors)} of {data.rows} rows cannot be trained on (listed "
                f"above{long}); fix them (or raise max_length), or pass --allow-errors to train on the "
                f"{len(data.examples)} usable rows"
            )
        _log(f"skipping {len(data.errors)} of {data.rows} rows{long} (--allow-errors); they are listed in {RUN_FILE}")
    if not data.examples:
        raise InputError(f"--data {data.data_path}: no usable {config.kind} rows to train on")


def _record(config: TrainConfig, template: Any, data: PreparedData, n_trainable: int, status: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    from ..results import provenance

    return {
        "status": status,
        "kind": config.kind,
        "base": config.base,
        # The released DFJ judge this one descends from (see prompts/official.py), or None.
        "released_judge": released_judge(config.base),
        "template": {"name": template.name, "sha256": template.sha256, "official": template.official},
        "pixel_budget": asdict(config.budget),
        "config": config.to_dict(),
        "data": {
            "path": str(data.data_path),
            "rows": data.rows,
            "examples": len(data.examples),
            "skipped": len(data.errors),
            "too_long": data.too_long,
            "skipped_rows": [{"where": e.where, "id": e.id, "field": e.field, "error": e.message}
                             for e in data.errors],
            "longest_sequence": data.longest,
        },
        "lora": {"targets": "every linear layer of the language model", "trainable_parameters": n_trainable},
        "provenance": provenance(torch=torch.__version__, transformers=transformers.__version__,
                                 trl=trl.__version__, peft=peft.__version__),
    }
