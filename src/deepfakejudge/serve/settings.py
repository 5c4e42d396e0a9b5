"""What a `dfj serve` instance accepts: its limits, its key, where local images may come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


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
    # Memory under load: decoded image pixels held at once across all requests (a request over
    # it waits up to `admission_wait_s`, then gets 503 with Retry-After), images decoded by at
    # most `decode_workers` threads off the event loop, request bodies read within `body_timeout_s`.
    max_pixels_in_flight: int = 160_000_000
    admission_wait_s: float = 10.0
    decode_workers: int = 4
    body_timeout_s: float = 30.0
    template: str | None = None  # judge endpoints' template: a file, "official" or "default" (None: the project's own)

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_text_chars", "max_new_tokens", "max_logprobs", "max_batch",
                     "max_pixels_in_flight", "decode_workers"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise UsageError(f"--batch-window-ms must be >= 0, got {self.batch_window_ms}")
        if self.admission_wait_s < 0:
            raise UsageError(f"--admission-wait must be >= 0 seconds, got {self.admission_wait_s}")
        if not self.body_timeout_s > 0:
            raise UsageError(f"--body-timeout must be > 0 seconds, got {self.body_timeout_s}")
        if self.max_pixels_in_flight < self.max_image_pixels:
            raise UsageError(f"--max-pixels-in-flight ({self.max_pixels_in_flight}) must be at least --max-image-pixels "
                             f"({self.max_image_pixels}), else the largest allowed image could never be admitted")
        if self.allowed_root is not None and not self.allowed_root.is_dir():
            raise UsageError(f"--allowed-root {self.allowed_root}: not a directory")


class ApiError(Exception):
    """A client error with its HTTP status, shown to the client as an OpenAI-style error."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.headers = headers  # e.g. Retry-After on a 503

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
