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
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from ..backends.base import MAX_PIXELS, MIN_PIXELS, PixelBudget

Kind = Literal["pointwise", "pairwise"]
KINDS: tuple[str, ...] = ("pointwise", "pairwise")
DEFAULT_MAX_LENGTH: dict[str, int] = {"pointwise": 4096, "pairwise": 2048}
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
# What of the end of the assistant turn the loss covers: `<|im_end|>` and the newline the chat
# template puts after it (ms-swift >= 3.11), or `<|im_end|>` alone (ms-swift before 3.11, and this
# project before it matched current ms-swift).
END_OF_TURN: tuple[str, ...] = ("im_end_newline", "im_end")
SCHEDULERS: tuple[str, ...] = ("cosine", "linear", "constant", "constant_with_warmup")
_DEVICE = re.compile(r"auto|cpu|cuda")

# The paper's learning rate. It is unusually low for LoRA (1e-4..2e-4 is common): kept as the
# default for parity with the released judges.
PAPER_LEARNING_RATE = 1e-6


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. `max_length=None` means the recipe's value for `kind`;
    `load_config` resolves it, so a loaded config always carries the number."""

    kind: Kind
    base: str  # base model: local folder or Hugging Face id
    data: str  # canonical or ms-swift JSONL, or a split folder with data.jsonl
    out: str  # adapter folder (checkpoints inside)
    template: str | None = None  # a file, "official" or "default"; None: official for a released base, else default
    # LoRA
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    # optimisation
    learning_rate: float = PAPER_LEARNING_RATE
    num_train_epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides the epochs (smoke runs)
    per_device_train_batch_size: int = 16
    # The released run: 16 per device x 2 GPUs. With gradient_accumulation_steps None it is derived
    # from the device count so that every optimizer step sees effective_batch_size examples.
    effective_batch_size: int = 32
    gradient_accumulation_steps: int | None = None
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    # sequence and image
    max_length: int | None = None
    end_of_turn: str = "im_end_newline"  # END_OF_TURN
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    # runtime
    device: str = "auto"  # auto | cpu | cuda (pick GPUs with CUDA_VISIBLE_DEVICES or accelerate)
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = True
    logging_steps: int = 5
    save_steps: int = 500
    save_total_limit: int | None = 2
    dataloader_num_workers: int = 0
    # CPU memory for the training images' visual embeddings, computed once before training (the
    # vision tower is frozen); 0, or more than this needed: the tower runs in every step.
    visual_cache_gb: float = 32.0
    allow_errors: bool = False  # train on the valid rows when some rows cannot be used

    @property
    def budget(self) -> PixelBudget:
        return PixelBudget(self.min_pixels, self.max_pixels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fields a YAML file may set: everything but the kind, which the command names.
CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig) if f.name != "kind")
REQUIRED: tuple[str, ...] = ("base", "data", "out")

_INT = {"lora_r", "lora_alpha", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
        "effective_batch_size",
        "seed", "max_length", "min_pixels", "max_pixels", "logging_steps", "save_steps", "save_total_limit",
        "dataloader_num_workers"}
_FLOAT = {"lora_dropout", "learning_rate", "num_train_epochs", "warmup_ratio", "weight_decay", "max_grad_norm",
          "visual_cache_gb"}
_BOOL = {"gradient_checkpointing", "allow_errors"}
_STR = {"base", "data", "out", "template", "lr_scheduler_type", "device", "dtype", "end_of_turn"}
_NULLABLE = {"template", "max_length", "save_total_limit", "gradient_accumulation_steps"}


def _coerce(key: str, value: Any, origin: str) -> Any:
    """`value` as the field's type; a wrong type is an error naming the key and where it came from."""
    if value is None:
        if key in _NULLABLE:
            return None
        raise ValueError(f"{origin}: '{key}' must not be null")
    if key in _BOOL:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{origin}: '{key}' must be true or false, got {value!r}")
    if key in _INT:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{origin}: '{key}' must be an integer, got {value!r}")
    if key in _FLOAT:
        # YAML 1.1 reads `1e-6` (no dot) as a string: accept any string Python reads as a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError(f"{origin}: '{key}' must be a number, got {value!r}")
    if isinstance(value, str):
        return value
    raise ValueError(f"{origin}: '{key}' must be a string, got {value!r}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; unknown keys are errors naming the key."""
    try:
        import yaml
    except ImportError as exc:
        raise ImportError("--config needs PyYAML: pip install 'deepfakejudge[train]'") from exc
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--config {path}: cannot read the file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"--config {path}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path}: must be a mapping of setting: value, got {type(loaded).__name__}")
    unknown = [k for k in loaded if k not in CONFIG_KEYS]
    if unknown:
        hint = "'kind' is given by the command (dfj train pointwise|pairwise); " if "kind" in unknown else ""
        raise ValueError(
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
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(read_yaml(yaml_path))
    for key, value in (cli or {}).items():
        if key not in CONFIG_KEYS:
            raise ValueError(f"unknown setting '{key}'; known settings: {', '.join(CONFIG_KEYS)}")
        if value is not None:
            values[key] = _coerce(key, value, "command line")
    missing = [k for k in REQUIRED if values.get(k) is None]
    if missing:
        raise ValueError(
            "missing " + ", ".join(f"--{k}" for k in missing) + ": give them on the command line or in --config"
        )
    config = TrainConfig(kind=kind, **values)  # type: ignore[arg-type]
    if config.max_length is None:
        config = replace(config, max_length=DEFAULT_MAX_LENGTH[kind])
    validate(config)
    return config


def validate(c: TrainConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ValueError(f"'{key}' = {getattr(c, key)!r}: {what}")

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
    need(c.end_of_turn in END_OF_TURN, "end_of_turn", f"must be one of {', '.join(END_OF_TURN)}")
    need(0.0 <= c.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
    need(c.lr_scheduler_type in SCHEDULERS, "lr_scheduler_type", f"must be one of {', '.join(SCHEDULERS)}")
    need(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(c.max_grad_norm > 0, "max_grad_norm", "must be > 0")
    need(c.max_length is not None and c.max_length >= 16, "max_length", "must be >= 16 tokens")
    need(c.device is not None and _DEVICE.fullmatch(c.device) is not None, "device", "use auto, cpu or cuda (choose GPUs with CUDA_VISIBLE_DEVICES or accelerate launch)")
    need(c.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
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
        raise ValueError(f"devices must be >= 1, got {devices}")
    per_device = c.per_device_train_batch_size
    if c.gradient_accumulation_steps is not None:
        return BatchPlan(per_device, devices, c.gradient_accumulation_steps)
    target = c.effective_batch_size
    if per_device * devices > target and target % devices == 0:
        return BatchPlan(target // devices, devices, 1,
                         f"per-device batch lowered from {per_device} to keep the effective batch {target}")
    if target % (per_device * devices) == 0:
        return BatchPlan(per_device, devices, target // (per_device * devices))
    raise ValueError(
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
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-4")
        if key not in CONFIG_KEYS:
            raise ValueError(f"--set {item!r}: unknown key '{key}'; known keys: {', '.join(CONFIG_KEYS)}")
        try:
            import yaml

            value = yaml.safe_load(raw) if raw.strip() else None
            if key in _STR and value is not None:
                value = raw  # paths and names stay text even when they look like numbers
        except ImportError:
            value = raw
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: cannot read the value ({exc})") from exc
        out[key] = _coerce(key, value, f"--set {key}")
    return out
