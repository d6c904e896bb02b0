"""What a load saw: :class:`LoadReport` and the kinds of bad rows it counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["BAD_ROW_KINDS", "MAX_BAD_ROW_EXAMPLES", "ON_BAD_ROW", "LoadReport"]

BAD_ROW_KINDS = ("malformed", "bad_label", "empty_text")
ON_BAD_ROW = ("error", "skip")
MAX_BAD_ROW_EXAMPLES = 20


@dataclass
class LoadReport:
    """What a load saw: rows read, kept, rejected (by kind, with examples) and counted oddities.

    ``rows_read == pairs + sum(bad_rows.values()) + middle_band`` always holds for a fresh load.
    """

    source: str
    rows_read: int = 0
    pairs: int = 0
    bad_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_ROW_KINDS, 0))
    bad_row_examples: list[dict] = field(default_factory=list)
    self_pairs: int = 0
    duplicate_pairs: int = 0
    middle_band: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
