"""Training settings: one frozen dataclass, one loader, one precedence (CLI > YAML > defaults).

The defaults are the released DeepfakeJudge recipe (ms-swift): LoRA r 32, alpha 64 on every
linear layer of the language model (vision tower and merger frozen), lr 1e-6, 2 epochs, per-device
batch 16 on 2 GPUs, i.e. an effective batch of 32 per optimizer step (kept on any device count by
deriving the gradient accumulation: `batch_plan`), warmup ratio 0.05, bf16 on GPU, max_length 4096
(pointwise) / 2048 (pairwise), pixel budget 3136..1003520. Settings the recipe leaves to ms-swift
take ms-swift's defaults (cosine schedule, weight decay 0.1, LoRA dropout 0.05, seed 42, and the
loss on the answer, `<|im_end|>` and the newline after it, as ms-swift >= 3.11 trains).

A YAML file holds any subset of the field names below; a key that is not a field is an error
naming the key, never silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .. import runtime
from ..backends.base import MAX_PIXELS, MIN_PIXELS, PixelBudget
from ..errors import InputError, MissingExtra, UsageError

Kind = Literal["pointwise", "pairwise"]
KINDS: tuple[str, ...] = ("pointwise", "pairwise")
DEFAULT_MAX_LENGTH: dict[str, int] = {"pointwise": 4096, "pairwise": 2048}
DTYPES: tuple[str, ...] = ("auto", *runtime.DTYPES)
# What of the end of the assistant turn the loss covers: `<|im_end|>` and the newline the chat
# template puts after it (ms-swift >= 3.11), or `<|im_end|>` alone (ms-swift before 3.11, and this
# project before it matched current ms-swift).
END_OF_TURN: tuple[str, ...] = ("im_end_newline", "im_end")
SCHEDULERS: tuple[str, ...] = ("cosine", "linear", "constant", "constant_with_warmup")

# The paper's learning rate. It is unusually low for LoRA (1e-4..2e-4 is common): kept as the
# default for parity with the released judges.
PAPER_LEARNING_RATE = 1e-6


def setting(default: Any = MISSING, help: str = "", *, flag: str | None = None, group: str = "recipe",
            choices: tuple[str, ...] | None = None, sft: str | None = None, none: str | None = None,
            per_kind: Mapping[str, Any] | None = None) -> Any:
    """A `TrainConfig` field declared once, as TRL's `SFTConfig` declares its fields: the default,
    and in the field's metadata the help text (`{default}` marks where `--help` shows the default,
    else it is appended), the command-line flag (None: only `--set KEY=VALUE` and YAML), the help
    group, the choices, the `trl.SFTConfig` argument it is passed as, what a None default means,
    and a default per kind. The type is the annotation's."""
    meta = {"help": help, "flag": flag, "group": group, "choices": choices, "sft": sft, "none": none,
            "per_kind": per_kind}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. `max_length=None` means the recipe's value for `kind`,
    filled in on construction, so a config always carries the number. Every value is checked on
    construction (types, then ranges): a wrong one is a UsageError (a ValueError) naming the field."""

    kind: Kind = setting(help="pointwise or pairwise (given by the command, never by YAML)", group="")
    base: str = setting(help="base model: local folder or Hugging Face id (e.g. Qwen/Qwen2.5-VL-3B-Instruct)",
                        flag="--base", group="run")
    data: str = setting(help="training data: canonical or ms-swift JSONL, or a split folder with data.jsonl",
                        flag="--data", group="run")
    out: str = setting(help="output folder: the adapter, dfj_train.json and checkpoint-N folders",
                       flag="--out", group="run", sft="output_dir")
    template: str | None = setting(
        None, "prompt: a template FILE, 'official' or 'default' (default: {default}; see dfj judge --help); the same "
        "template is recorded and reused by `dfj judge --adapter`. Official ms-swift rows are trained on with their "
        "own prompt as written", flag="--template", group="run",
        none="the authors' prompt when --base is a released DFJ judge, else the project's own")
    # LoRA
    lora_r: int = setting(32, "default {default}", flag="--lora-r")
    lora_alpha: int = setting(64, "default {default}", flag="--lora-alpha")
    lora_dropout: float = setting(0.05, "LoRA dropout")
    # optimisation
    learning_rate: float = setting(
        PAPER_LEARNING_RATE, "default {default}: the paper's value, kept for parity; it is unusually low for LoRA "
        "(1e-4..2e-4 is common)", flag="--learning-rate", sft="learning_rate")
    num_train_epochs: float = setting(2.0, "default {default}", flag="--epochs", sft="num_train_epochs")
    max_steps: int = setting(-1, "stop after N optimiser steps (smoke runs; overrides epochs; default {default}: "
                                 "train for the epochs)", flag="--max-steps", group="run", sft="max_steps")
    per_device_train_batch_size: int = setting(
        16, "per-device batch, default {default} (the paper: 16 on each of 2 GPUs)", flag="--batch-size",
        sft="per_device_train_batch_size")
    # The released run: 16 per device x 2 GPUs. With gradient_accumulation_steps None it is derived
    # from the device count so that every optimizer step sees effective_batch_size examples.
    effective_batch_size: int = setting(
        32, "examples per optimizer step, default {default} (the paper's 16 x 2 GPUs): the gradient accumulation "
        "is derived from the device count (2 on one GPU, 1 on two; on four the per-device batch drops to 8) and "
        "printed", flag="--effective-batch")
    gradient_accumulation_steps: int | None = setting(
        None, "gradient accumulation steps as given (overrides --effective-batch; default: {default})",
        flag="--grad-accum", sft="gradient_accumulation_steps", none="derived from --effective-batch")
    # transformers 5 reads a float in [0, 1) given as warmup_steps as a ratio of the total steps.
    warmup_ratio: float = setting(0.05, "warmup as a fraction of the steps", sft="warmup_steps")
    lr_scheduler_type: str = setting("cosine", f"learning-rate schedule: {' | '.join(SCHEDULERS)}",
                                     choices=SCHEDULERS, sft="lr_scheduler_type")
    weight_decay: float = setting(0.1, "AdamW weight decay", sft="weight_decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm", sft="max_grad_norm")
    seed: int = setting(42, "default {default}", flag="--seed", sft="seed")
    # sequence and image
    max_length: int | None = setting(None, "default {default}; longer rows are refused, never cut",
                                     flag="--max-length", per_kind=DEFAULT_MAX_LENGTH)
    end_of_turn: str = setting(
        "im_end_newline", "what the loss covers after the answer: im_end_newline, '<|im_end|>' and the newline after "
        "it as ms-swift >= 3.11 trains; im_end, '<|im_end|>' only (ms-swift < 3.11); default {default}",
        flag="--end-of-turn", choices=END_OF_TURN)
    min_pixels: int = setting(MIN_PIXELS, "image budget, default {default}", flag="--min-pixels")
    max_pixels: int = setting(MAX_PIXELS, "image budget, default {default}", flag="--max-pixels")
    # runtime
    device: str = setting("auto", f"{runtime.DEVICE_HELP} (default {{default}}; cuda:N trains on GPU N alone; "
                                  "several GPUs: accelerate launch, choose them with CUDA_VISIBLE_DEVICES)",
                          flag="--device")
    dtype: str = setting("auto", "auto (bf16 on GPU, fp16 on a GPU without bf16, fp32 on CPU) | float32 | bfloat16 "
                                 "| float16 (default {default})", flag="--dtype", choices=DTYPES)
    # transformers 5's name for gradient checkpointing.
    gradient_checkpointing: bool = setting(True, "recompute activations in backward to save memory",
                                           sft="activation_checkpointing")
    logging_steps: int = setting(5, "log the loss every N steps", sft="logging_steps")
    save_steps: int = setting(500, "checkpoint every N steps, default {default}", flag="--save-steps",
                              sft="save_steps")
    save_total_limit: int | None = setting(2, "checkpoints kept (null: all)", sft="save_total_limit")
    dataloader_num_workers: int = setting(0, "data loader worker processes", sft="dataloader_num_workers")
    # CPU memory for the training images' visual embeddings, computed once before training (the
    # vision tower is frozen); 0, or more than this needed: the tower runs in every step.
    visual_cache_gb: float = setting(
        32.0, "CPU memory for the images' visual embeddings, computed once before training (the vision tower is "
        "frozen), default {default}; 0: run the tower in every step", flag="--visual-cache-gb")
    allow_errors: bool = setting(
        False, "train on the usable rows when some cannot be used, rows over --max-length included (ms-swift drops "
        "those silently; here they are counted, listed and recorded; default {default})", flag="--allow-errors",
        group="run")
    image_root: tuple[str, ...] = setting(
        (), "also read images from under DIR (repeatable; YAML: a list); by default images are read only from inside "
        "the data file's folder (symlinks resolved), anything else is a row that cannot be trained on",
        flag="--image-root", group="run")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for f in fields(self):
            if f.name != "kind":
                object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), "TrainConfig"))
        if self.max_length is None:
            object.__setattr__(self, "max_length", DEFAULT_MAX_LENGTH[self.kind])
        validate(self)

    @property
    def budget(self) -> PixelBudget:
        return PixelBudget(self.min_pixels, self.max_pixels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FieldType:
    """A setting's type, read from its annotation: the base type (`tuple`: a list of strings) and
    whether null is allowed."""

    base: type
    nullable: bool


def _field_types() -> dict[str, FieldType]:
    out = {}
    for name, hint in get_type_hints(TrainConfig).items():
        if name == "kind":
            continue
        if get_origin(hint) is tuple:  # tuple[str, ...]: a list of strings
            out[name] = FieldType(tuple, False)
            continue
        args = get_args(hint)
        nullable = type(None) in args
        base = next(a for a in args if a is not type(None)) if args else hint
        out[name] = FieldType(base, nullable)
    return out


FIELD_TYPES: dict[str, FieldType] = _field_types()
# Fields a YAML file may set: everything but the kind, which the command names.
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.name != "kind")
REQUIRED: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.default is MISSING and f.name != "kind")


def config_fields() -> tuple[Field, ...]:
    """The settings (every field but the kind), in declaration order, with their metadata."""
    return tuple(f for f in fields(TrainConfig) if f.name != "kind")


def shown_default(f: Field, kind: str) -> str | None:
    """How `--help` shows the default of `f` for `kind`; None for a required setting."""
    if f.default is MISSING:
        return None
    value = f.default
    if value is None and f.metadata["per_kind"] is not None:
        value = f.metadata["per_kind"][kind]
    if value is None:
        return f.metadata["none"] or "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value) or "none"
    return format(value, "g") if isinstance(value, float) else str(value)


def help_text(f: Field, kind: str) -> str:
    """The help line of `f`, its default shown where the text marks it (or at the end)."""
    text, shown = f.metadata["help"], shown_default(f, kind)
    if shown is None:
        return text
    return text.format(default=shown) if "{default}" in text else f"{text} (default {shown})"


def _coerce(key: str, value: Any, origin: str) -> Any:
    """`value` as the field's type; a wrong type is an error naming the key and where it came from."""
    kind = FIELD_TYPES[key]
    if value is None:
        if kind.nullable:
            return None
        raise UsageError(f"{origin}: '{key}' must not be null")
    if kind.base is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{origin}: '{key}' must be true or false, got {value!r}")
    if kind.base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"{origin}: '{key}' must be an integer, got {value!r}")
    if kind.base is float:
        # YAML 1.1 reads `1e-6` (no dot) as a string: accept any string Python reads as a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise UsageError(f"{origin}: '{key}' must be a number, got {value!r}")
    if kind.base is tuple:
        # One string is a list of one (`--set image_root=DIR`); numbers are not read as paths.
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(items)
        raise UsageError(f"{origin}: '{key}' must be a list of strings, got {value!r}")
    if isinstance(value, str):
        return value
    raise UsageError(f"{origin}: '{key}' must be a string, got {value!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; unknown keys are errors naming the key."""
    try:
        import yaml
    except ImportError as exc:
        raise MissingExtra("--config needs PyYAML: pip install 'deepfakejudge[train]'") from exc
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--config {path}: cannot read the file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"--config {path}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"--config {path}: must be a mapping of setting: value, got {type(loaded).__name__}")
    unknown = [k for k in loaded if k not in CONFIG_KEYS]
    if unknown:
        hint = "'kind' is given by the command (dfj train pointwise|pairwise); " if "kind" in unknown else ""
        raise InputError(
            f"--config {path}: unknown key(s) {', '.join(repr(k) for k in unknown)}; {hint}"
            f"known keys: {', '.join(CONFIG_KEYS)}"
        )
    return {k: _coerce(k, v, f"--config {path}") for k, v in loaded.items()}


def load_config(
    kind: str,
    cli: Mapping[str, Any] | None = None,
    yaml_path: str | Path | None = None,
) -> TrainConfig:
    """Defaults, overridden by the YAML file, overridden by `cli` (only the options the user gave:
    None values are treated as not given). Validates every value."""
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    for key, value in (cli or {}).items():
        if key not in CONFIG_KEYS:
            raise UsageError(f"unknown setting '{key}'; known settings: {', '.join(CONFIG_KEYS)}")
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    missing = [k for k in REQUIRED if values.get(k) is None]
    if missing:
        raise UsageError(
            "missing " + ", ".join(f"--{k}" for k in missing) + ": give them on the command line or in --config"
        )
    return TrainConfig(kind=kind, **values)  # type: ignore[arg-type]  # validates, fills max_length


def validate(c: TrainConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise UsageError(f"'{key}' = {getattr(c, key)!r}: {what}")

    for f in config_fields():  # the declared choices: YAML and --set as the flags (argparse offers them)
        allowed = f.metadata["choices"]
        if allowed is not None:
            need(getattr(c, f.name) in allowed, f.name, f"must be one of {', '.join(allowed)}")
    need(c.lora_r >= 1, "lora_r", "must be >= 1")
    need(c.lora_alpha >= 1, "lora_alpha", "must be >= 1")
    need(0.0 <= c.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
    need(c.learning_rate > 0, "learning_rate", "must be > 0")
    need(c.num_train_epochs > 0, "num_train_epochs", "must be > 0")
    need(c.max_steps == -1 or c.max_steps >= 1, "max_steps", "must be >= 1 (or -1: train for num_train_epochs)")
    need(c.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be >= 1")
    need(c.gradient_accumulation_steps is None or c.gradient_accumulation_steps >= 1, "gradient_accumulation_steps",
         "must be >= 1, or null (derived from effective_batch_size and the device count)")
    need(c.effective_batch_size >= 1, "effective_batch_size", "must be >= 1")
    need(0.0 <= c.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
    need(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(c.max_grad_norm > 0, "max_grad_norm", "must be > 0")
    need(c.max_length is not None and c.max_length >= 16, "max_length", "must be >= 16 tokens")
    need(runtime.DEVICE_PATTERN.fullmatch(c.device) is not None, "device",
         "use auto, cpu, cuda or cuda:N (several GPUs: accelerate launch; choose them with CUDA_VISIBLE_DEVICES)")
    need(c.logging_steps >= 1, "logging_steps", "must be >= 1")
    need(c.save_steps >= 1, "save_steps", "must be >= 1")
    need(c.save_total_limit is None or c.save_total_limit >= 1, "save_total_limit", "must be >= 1 or null (keep all)")
    need(c.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")
    need(c.visual_cache_gb >= 0, "visual_cache_gb", "must be >= 0 (0: encode the images in every step)")
    c.budget  # noqa: B018 - PixelBudget validates min_pixels <= max_pixels


@dataclass(frozen=True)
class BatchPlan:
    """How the effective batch is made: per-device batch x devices x accumulation steps."""

    per_device: int
    devices: int
    accumulation: int
    note: str | None = None  # why the plan departs from the settings as given

    @property
    def effective(self) -> int:
        return self.per_device * self.devices * self.accumulation

    def describe(self) -> str:
        return (f"effective batch {self.effective} = {self.per_device} per device x {self.devices} device(s) x "
                f"{self.accumulation} gradient accumulation step(s)" + (f" ({self.note})" if self.note else ""))


def batch_plan(c: TrainConfig, devices: int) -> BatchPlan:
    """Per-device batch and accumulation for `devices` data-parallel devices (processes, or GPUs
    of one process). An explicit `gradient_accumulation_steps` is used as given; otherwise the
    accumulation is derived so that the effective batch is `effective_batch_size` (the released
    32: 2 steps on one GPU, 1 on two). When the per-device batch alone overshoots it (four GPUs
    at 16), the per-device batch is lowered to keep it. A target no split can meet is an error
    naming the settings to change."""
    if devices < 1:
        raise UsageError(f"devices must be >= 1, got {devices}")
    per_device = c.per_device_train_batch_size
    if c.gradient_accumulation_steps is not None:
        return BatchPlan(per_device, devices, c.gradient_accumulation_steps)
    target = c.effective_batch_size
    if per_device * devices > target and target % devices == 0:
        return BatchPlan(target // devices, devices, 1,
                         f"per-device batch lowered from {per_device} to keep the effective batch {target}")
    if target % (per_device * devices) == 0:
        return BatchPlan(per_device, devices, target // (per_device * devices))
    raise UsageError(
        f"effective_batch_size {target} is not a multiple of per_device_train_batch_size {per_device} x {devices} "
        "device(s): change one of them (--batch-size, --set effective_batch_size=N), or give --grad-accum N"
    )


def with_batch_plan(c: TrainConfig, plan: BatchPlan) -> TrainConfig:
    """`c` with the plan's per-device batch and accumulation, as recorded and resumed."""
    return replace(c, per_device_train_batch_size=plan.per_device, gradient_accumulation_steps=plan.accumulation)


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are read as YAML scalars (`1e-4`, `true`, `null`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-4")
        if key not in CONFIG_KEYS:
            raise UsageError(f"--set {item!r}: unknown key '{key}'; known keys: {', '.join(CONFIG_KEYS)}")
        try:
            import yaml

            value = yaml.safe_load(raw) if raw.strip() else None
            if FIELD_TYPES[key].base is str and value is not None:
                value = raw  # paths and names stay text even when they look like numbers
            elif FIELD_TYPES[key].base is tuple and not isinstance(value, list) and value is not None:
                value = raw
        except ImportError:
            value = raw
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item!r}: cannot read the value ({exc})") from exc
        out[key] = _coerce(key, value, f"--set {key}")
    return out
