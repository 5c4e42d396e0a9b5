"""What a `dfj serve` instance accepts: its limits, its key, where local images may come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    """Limits are checked before any model work; each refusal names the limit and its flag."""

    model_name: str
    api_key: str | None = None
    allowed_root: Path | None = None  # local image paths are refused unless under it
    max_body_bytes: int = 32 * 2**20
    max_image_pixels: int = 40_000_000
    max_text_chars: int = 32_000
    max_new_tokens: int = 2048
    max_logprobs: int = 20  # top_logprobs above this is refused (vLLM's --max-logprobs)
    batch_window_ms: float = 10.0  # how long the first request of a batch waits for company
    max_batch: int = 16
    template: str | None = None  # judge endpoints' template: a file, "official" or "default" (None: the project's own)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_text_chars", "max_new_tokens", "max_logprobs", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise ValueError(f"--batch-window-ms must be >= 0, got {self.batch_window_ms}")
        if self.allowed_root is not None and not self.allowed_root.is_dir():
            raise ValueError(f"--allowed-root {self.allowed_root}: not a directory")


class ApiError(Exception):
    """A client error with its HTTP status, shown to the client as an OpenAI-style error."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
