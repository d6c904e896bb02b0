"""What a load saw: :class:`LoadReport` and the kinds of bad rows it counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["BAD_ROW_KINDS", "MAX_BAD_ROW_EXAMPLES", "ON_BAD_ROW", "LoadReport", "multiline_summary"]

BAD_ROW_KINDS = ("malformed", "bad_label", "empty_text")
ON_BAD_ROW = ("error", "skip")
MAX_BAD_ROW_EXAMPLES = 20


@dataclass
class LoadReport:
    """What a load saw: rows read, kept, rejected (by kind, with examples) and counted oddities.

    ``rows_read == pairs + sum(bad_rows.values()) + middle_band`` always holds for a fresh load.
    ``multiline_records`` counts the records (kept or not) whose quoted fields hold line
    breaks, so they span several physical lines; ``multiline_spans`` lists the first
    ``MAX_BAD_ROW_EXAMPLES`` of them as ``[first_line, last_line]``.
    """

    source: str
    rows_read: int = 0
    pairs: int = 0
    bad_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_ROW_KINDS, 0))
    bad_row_examples: list[dict] = field(default_factory=list)
    self_pairs: int = 0
    duplicate_pairs: int = 0
    middle_band: int = 0
    multiline_records: int = 0
    multiline_spans: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def multiline_summary(spans: list[list[int]], total: int) -> str:
    """``"lines 3-4, 9-12 (and 5 more)"`` for a warning about records that span lines."""
    shown = ", ".join(f"lines {a}-{b}" for a, b in spans[:5])
    return shown + (f" (and {total - min(len(spans), 5)} more)" if total > 5 else "")
