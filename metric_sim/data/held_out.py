"""Held-out pair sets named ``PRESET[:SPLIT]`` or a pairs file: the guard sets of WiSE-FT's alpha choice.

One rule for ``metric-sim interpolate --select-on/--guard`` and a recipe's ``interpolate.guard``:
a name that is a preset wins over a file of that name; a preset's default split is ``dev``
and a preset without one must name a split; a set is recorded by its file name only (a
saved model may be shared: no local paths); a set of one class is refused (AP needs both).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from metric_sim.errors import DataError, MetricSimError

__all__ = ["DEFAULT_HELD_OUT_SPLIT", "load_held_out_pairs"]

DEFAULT_HELD_OUT_SPLIT = "dev"


def load_held_out_pairs(where: str, value: str, *, data_dir: str | os.PathLike[str] | None = None,
                        error: type[MetricSimError] = DataError) -> tuple[str, Any, str]:
    """(name, pairs, description) of ``value``: ``PRESET[:SPLIT]`` (files under ``data_dir``) or a pairs file.

    ``where`` starts every message (the flag or config key the value came from); every
    refusal, a loading error included, is an ``error`` (the CLI's ``UsageError``, a recipe's
    ``ConfigError``). ``name`` is ``PRESET:SPLIT`` or the file's name.
    """
    from metric_sim.data import list_presets, load_pairs, load_preset
    from metric_sim.data.presets import PRESETS

    preset, _, split = value.partition(":")
    if preset in PRESETS:
        splits = PRESETS[preset].splits
        if not split and DEFAULT_HELD_OUT_SPLIT not in splits:
            shown = f"its splits: {list(splits)}" if splits else "it has no splits"
            raise error(f"{where} {value}: preset {preset!r} has no {DEFAULT_HELD_OUT_SPLIT!r} split ({shown}); "
                        "name a held-out split as PRESET:SPLIT (never the one you will score on), or a pairs file")
        split = split or DEFAULT_HELD_OUT_SPLIT
        # Without data_dir the call is the one the CLI has always made (the preset's default location).
        options = {"split": split, **({"data_dir": data_dir} if data_dir is not None else {})}
        name, source = f"{preset}:{split}", f"split {split!r} of preset {preset!r}"
        load: Callable[[], Any] = partial(load_preset, preset, **options)
    elif Path(value).expanduser().is_file():
        name = Path(value).name
        source = f"file {name!r}"
        load = partial(load_pairs, Path(value).expanduser())
    else:
        raise error(f"{where} {value!r} is neither a preset ({', '.join(list_presets())}; PRESET:SPLIT picks a "
                    f"split, default {DEFAULT_HELD_OUT_SPLIT}) nor an existing pairs file")
    try:
        pairs = load()
    except (MetricSimError, OSError, UnicodeError) as exc:
        raise error(f"{where} {value!r}: {exc}") from exc
    classes = sorted({int(y) for y in pairs.labels})
    if len(classes) < 2:
        raise error(f"{where} {value!r} ({len(pairs):,} pairs) holds only class {classes or 'none'}: AP needs both "
                    "similar (1) and dissimilar (0) pairs")
    return name, pairs, f"{source} ({len(pairs):,} pairs)"
