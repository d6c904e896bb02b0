"""What a server is started with: :class:`ServeConfig` (model, index, data folder, network,
keys, batching) and :class:`Limits` (what one request may hold). Checked on construction:
a bad value raises ``InvalidArgumentError`` naming the setting and the value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metric_sim.errors import InvalidArgumentError

__all__ = ["Limits", "ServeConfig"]

MiB = 1024 * 1024


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Limits:
    """The most one request may hold; each excess is a 413 naming the field and the limit."""

    max_body_bytes: int = 4 * MiB
    max_items: int = 256  # items (or pairs, or queries) per request
    max_text_chars: int = 10_000
    max_image_bytes: int = 8 * MiB
    max_image_pixels: int = 40_000_000
    max_k: int = 1000
    max_id_chars: int = 512

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_items", "max_text_chars", "max_image_bytes", "max_image_pixels",
                     "max_k", "max_id_chars"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``metric-sim serve`` needs. ``data_dir`` None: the index is read-only."""

    model: str
    index: str | None = None
    data_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    write_api_key: str | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0
    batching: bool = True
    snapshot_every: int = 1000
    model_name: str | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        _positive("max_batch", self.max_batch)
        _positive("snapshot_every", self.snapshot_every)
        if isinstance(self.max_wait_ms, bool) or not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise InvalidArgumentError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidArgumentError(f"port must be an integer in 0..65535, got {self.port!r}")
        for name in ("api_key", "write_api_key"):
            key = getattr(self, name)
            if key is not None and (not isinstance(key, str) or not key.strip()):
                raise InvalidArgumentError(f"{name} must be a non-empty string when given")

    @property
    def name(self) -> str:
        """The model name answers report: ``model_name``, else the model folder's name."""
        if self.model_name:
            return self.model_name
        return Path(self.model.rstrip("/\\")).name or self.model
