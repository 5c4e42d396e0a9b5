"""Where a model runs and in what precision: one rule for judging, training and export.

Devices: `auto` (the first CUDA device when there is one, else the CPU), `cpu`, `cuda` and `cuda:N`,
checked against this machine. Precision: `auto` is bfloat16 on a GPU, float16 on a GPU without
bfloat16 support, float32 on the CPU; `float32`, `bfloat16` and `float16` are used as given.
torch is imported inside the functions, so checking a setting's spelling needs no torch.
Where the project keeps what it downloads or caches on this machine: `user_cache_dir`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import UsageError

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def check_device(device: str) -> str:
    """`device` if it is spelt as a device this project accepts (no hardware query)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise UsageError(f"device: unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def resolve_device(device: str) -> Any:
    """The torch.device for `device`: 'auto' -> cuda if available else cpu; 'cuda' and 'cuda:N'
    must exist on this machine."""
    import torch

    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device: '{device}' requested but no CUDA device is available; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UsageError(f"device: '{device}' does not exist ({torch.cuda.device_count()} CUDA devices)")
    return resolved


def bf16_supported(device: Any) -> bool:
    """Whether `device` (a torch.device) computes in bfloat16 natively: any CPU; a GPU that says so."""
    import torch

    if device.type != "cuda":
        return True
    return bool(torch.cuda.is_bf16_supported())


def resolve_dtype(dtype: str, device: Any) -> Any:
    """The torch dtype for `dtype` on `device` (a torch.device): 'auto' -> bfloat16 on GPU (float16
    where bf16 is unsupported), float32 on CPU; the others as given."""
    import torch

    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    if dtype not in DTYPES:
        raise UsageError(f"dtype: unknown dtype '{dtype}'; use auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def user_cache_dir() -> Path:
    """The project's folder in the user cache, `$XDG_CACHE_HOME/deepfakejudge` (`~/.cache` when
    the variable is unset or empty): the request cache, the official prompts and the fetched data
    live under it unless their own variable ($DFJ_CACHE, $DFJ_DATA) says otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfakejudge"
