"""The ``mix_pairs`` block of a :class:`~metric_sim.training.config.TrainConfig`: other pair sets mixed into every batch.

Light on purpose, like the config: no torch, transformers or datasets (``metric_sim.data``
is imported only when an entry names a preset). The sampler that draws the batches is in
:mod:`metric_sim.training.mixing`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from metric_sim.errors import ConfigError

__all__ = ["MIX_KEYS", "MixSource", "check_mix_pairs", "mix_source_name", "pairs_per_batch"]

# preset + split, or file + the column options the main train_file takes (each defaults to the config's own)
MIX_KEYS = ("preset", "split", "file", "share", "text_a", "text_b", "label", "items")
_COLUMN_KEYS = ("text_a", "text_b", "label", "items")
_ITEM_KINDS = ("text", "image")  # as TrainConfig.items


class _MainData(Protocol):
    """What the checks read of the config: the batch size and where the main train and dev pairs come from."""

    batch_size: int
    preset: str | None
    train_file: str | None
    dev_file: str | None
    train_split: str | None
    dev_split: str | None


@dataclass(frozen=True)
class MixSource:
    """One mixed set in the prepared training pairs: rows ``start .. start + pairs - 1``, ``share`` of each batch."""

    name: str
    start: int
    pairs: int
    share: float

    @property
    def rows(self) -> range:
        return range(self.start, self.start + self.pairs)


def pairs_per_batch(share: float, batch_size: int) -> int:
    """``share * batch_size`` rounded to the nearest integer, halves up (Python's ``round`` takes 2.5 to 2)."""
    return int(math.floor(share * batch_size + 0.5))


def mix_source_name(entry: Mapping[str, Any]) -> str:
    """How logs and the run record name an entry: ``PRESET:SPLIT``, or the file as given."""
    return f"{entry['preset']}:{entry['split']}" if entry.get("preset") is not None else str(entry["file"])


def check_mix_pairs(entries: Any, config: _MainData) -> list[dict[str, Any]]:
    """The ``mix_pairs`` entries checked (``ConfigError`` naming ``mix_pairs[i].<key>`` and the value).

    Returns them with ``share`` as a float; ``None`` is an empty list (no mixing). Each set
    must give at least one pair of every batch of ``config.batch_size`` and leave at least
    one for the main data, and no set may be the run's dev split or its training data.
    """
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError("mix_pairs must be a list of {preset: NAME, split: SPLIT, share: S} or "
                          f"{{file: PATH, share: S}} entries, got {entries!r}")
    checked = [_check_entry(i, entry, config) for i, entry in enumerate(entries)]
    if not checked:
        return checked
    shares = [entry["share"] for entry in checked]
    if math.fsum(shares) >= 1:
        raise ConfigError(f"mix_pairs: the shares must sum to less than 1 (the rest of each batch is the main data), "
                          f"got {shares} (sum {math.fsum(shares):g})")
    size = config.batch_size
    counts = [pairs_per_batch(share, size) for share in shares]
    for i, (share, count) in enumerate(zip(shares, counts, strict=True)):
        if count < 1:
            raise ConfigError(f"mix_pairs[{i}].share={share!r} is {share * size:g} pairs of a batch of batch_size={size}, "
                              f"which rounds to none: give a share of at least {0.5 / size:g} or a larger batch_size")
    if size - sum(counts) < 1:
        raise ConfigError(f"mix_pairs: with batch_size={size} the shares {shares} take {counts} pairs of each batch "
                          "(rounded), leaving none for the main data: lower the shares or raise batch_size")
    seen: dict[tuple[str, ...], int] = {}
    for i, entry in enumerate(checked):
        key = _identity(entry)
        if key in seen:
            raise ConfigError(f"mix_pairs[{i}] repeats mix_pairs[{seen[key]}] ({mix_source_name(entry)}): give each "
                              "set once, with the sum of the shares")
        seen[key] = i
    return checked


def _check_entry(i: int, entry: Any, config: _MainData) -> dict[str, Any]:
    where = f"mix_pairs[{i}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a mapping ({{preset: NAME, split: SPLIT, share: S}} or "
                          f"{{file: PATH, share: S}}), got {entry!r}")
    unknown = sorted((key for key in entry if key not in MIX_KEYS), key=repr)
    if unknown:
        raise ConfigError(f"unknown key(s) {[f'{where}.{key}' for key in unknown]}; valid keys: {list(MIX_KEYS)}")
    preset, path = entry.get("preset"), entry.get("file")
    if (preset is None) == (path is None):
        raise ConfigError(f"{where} needs exactly one of preset (with split) or file, got preset={preset!r} "
                          f"and file={path!r}")
    share = _share(where, entry.get("share"))
    checked = _check_preset(where, preset, entry, config) if preset is not None else _check_file(where, path, entry,
                                                                                                 config)
    return {**checked, "share": share}


def _share(where: str, value: Any) -> float:
    if value is None:
        raise ConfigError(f"{where}.share is required: the fraction of each batch drawn from this set, in (0, 1)")
    number = value
    if isinstance(value, str):  # YAML reads some numbers as strings (2e-1)
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
            or not 0 < number < 1:
        raise ConfigError(f"{where}.share must be a number in (0, 1) (the fraction of each batch drawn from this "
                          f"set), got {value!r}")
    return float(number)


def _check_preset(where: str, preset: Any, entry: Mapping[str, Any], config: _MainData) -> dict[str, Any]:
    from metric_sim.data import PRESETS, list_presets  # loads datasets: only when a preset is named

    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"{where}.preset={preset!r} is not a preset; valid: {list_presets()}")
    splits = PRESETS[preset].splits
    if not splits:
        raise ConfigError(f"{where}.preset={preset!r} has no named splits to mix from: give its file with "
                          "file: PATH (and text_a, text_b, label: its column names)")
    split = entry.get("split")
    if split not in splits:
        # required: a preset without a split can be the whole file, dev and test pairs included (qqp)
        raise ConfigError(f"{where}.split must be one of the splits of preset {preset!r}: {list(splits)}, "
                          f"got {split!r}")
    given = [key for key in _COLUMN_KEYS if key in entry]
    if given:
        raise ConfigError(f"{where}.{given[0]} applies only with file, not with a preset (it knows its columns), "
                          f"got {entry[given[0]]!r}")
    if preset == config.preset and config.dev_file is None and split == config.dev_split:
        raise ConfigError(f"{where}: preset {preset!r} split {split!r} is this run's dev split "
                          f"(dev_split={config.dev_split!r}): dev pairs must never be trained on; mix another split")
    if preset == config.preset and config.train_file is None and split == config.train_split:
        raise ConfigError(f"{where}: preset {preset!r} split {split!r} is this run's training data already "
                          f"(train_split={config.train_split!r}): mix another data set")
    return {"preset": preset, "split": split}


def _check_file(where: str, path: Any, entry: Mapping[str, Any], config: _MainData) -> dict[str, Any]:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}.file must be the path of a pairs file, got {path!r}")
    if entry.get("split") is not None:
        raise ConfigError(f"{where}.split applies only with preset, not with file, got {entry['split']!r}")
    for key in ("text_a", "text_b", "label"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key]):
            raise ConfigError(f"{where}.{key} must be a column name (a non-empty string), got {entry[key]!r}")
    if "items" in entry and entry["items"] not in _ITEM_KINDS:
        raise ConfigError(f"{where}.items must be one of {list(_ITEM_KINDS)}, got {entry['items']!r}")
    resolved = Path(path).expanduser().resolve()
    for name in ("dev_file", "train_file"):
        other = getattr(config, name)
        if other is not None and Path(other).expanduser().resolve() == resolved:
            raise ConfigError(f"{where}.file={path!r} is this run's {name}: "
                              + ("dev pairs must never be trained on" if name == "dev_file"
                                 else "it is the training data already") + "; mix another data set")
    return {"file": path, **{key: entry[key] for key in _COLUMN_KEYS if key in entry}}


def _identity(entry: Mapping[str, Any]) -> tuple[str, ...]:
    if entry.get("preset") is not None:
        return ("preset", entry["preset"], entry["split"])
    return ("file", str(Path(entry["file"]).expanduser().resolve()))
