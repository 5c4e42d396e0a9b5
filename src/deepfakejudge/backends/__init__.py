"""Backends: how a model is called. A new engine is one module plus one line in `BACKENDS`."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MissingExtra, UsageError
from .base import (
    MAX_PIXELS,
    MIN_PIXELS,
    Backend,
    BackendError,
    BackendUnavailable,
    Capabilities,
    ChatRequest,
    Generation,
    GenerationConfig,
    LoadOptions,
    PixelBudget,
    RemoteOptions,
    TokenStep,
)

# name -> (module, class, extra that installs it). Imported on use: heavy engines stay optional.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "hf": ("deepfakejudge.backends.hf", "HFBackend", "hf"),
    "openai": ("deepfakejudge.backends.openai", "OpenAIBackend", "openai"),
}


def load_backend(name: str, options: LoadOptions, **kwargs: Any) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(sorted(BACKENDS))}, got {name!r}")
    module_name, class_name, extra = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingExtra(
            f"backend '{name}' needs packages that are not installed ({exc.name}); "
            f"install them with: pip install 'deepfakejudge[{extra}]'"
        ) from exc
    return getattr(module, class_name)(options, **kwargs)


__all__ = [
    "BACKENDS",
    "MAX_PIXELS",
    "MIN_PIXELS",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "Capabilities",
    "ChatRequest",
    "Generation",
    "GenerationConfig",
    "LoadOptions",
    "PixelBudget",
    "RemoteOptions",
    "TokenStep",
    "load_backend",
]
