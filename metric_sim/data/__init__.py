"""Load, validate, cluster and split labelled pairs; read corpora and named datasets.

The subpackage, one responsibility per module:

* :mod:`~metric_sim.data.report` - :class:`LoadReport`, the kinds of bad rows;
* :mod:`~metric_sim.data.lines` - physical lines, decoded one by one; the encoding check;
* :mod:`~metric_sim.data.delimited` - the strict TSV/CSV record splitter;
* :mod:`~metric_sim.data.readers` - files and tables -> records (and which suffix means
  which format, for pairs and for corpora); its docstring states every format's rules;
* :mod:`~metric_sim.data.labels` - raw label -> 0/1 (binary, mapped, thresholded score);
* :mod:`~metric_sim.data.pairs` - :class:`PairDataset` (columns, clusters, splits);
* :mod:`~metric_sim.data.loader` - records -> validated pairs, :func:`load_pairs`;
* :mod:`~metric_sim.data.presets` - named datasets, :func:`load_preset`;
* :mod:`~metric_sim.data.corpus` - single texts with ids, :func:`load_corpus`;
* :mod:`~metric_sim.data.collections` - labelled image collections (:class:`LabelledItems`:
  folders, zips, list files; identity splits; genuine / impostor pairs);
* :mod:`~metric_sim.data.image_presets` - ORL, Omniglot, Grocery (catalogue and photo pairs).

Names are resolved lazily and ``datasets`` is imported only when pairs are built or
wrapped (``load_pairs``, ``load_preset``, ``PairDataset(...)``), so importing any name
from here - ``load_corpus``, ``PairDataset`` for a type hint, ``list_presets`` - stays
light. ``DataError`` lives in :mod:`metric_sim.errors`, ``text_id`` in
:mod:`metric_sim.items` and ``UnionFind`` in :mod:`metric_sim.clusters`; they stay
importable from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metric_sim.lazy import lazy_attributes

__all__ = [
    "BAD_ROW_KINDS",
    "CORPUS_FORMATS",
    "FORMATS",
    "PRESETS",
    "Corpus",
    "DataError",
    "ItemsReport",
    "LabelledItems",
    "LoadReport",
    "PairDataset",
    "Preset",
    "UnionFind",
    "catalogue_pairs",
    "default_data_dir",
    "grocery_catalogue",
    "grocery_photos",
    "grocery_product_pairs",
    "image_splits",
    "list_presets",
    "load_corpus",
    "load_pairs",
    "load_preset",
    "omniglot_items",
    "orl_items",
    "read_image_folder",
    "read_image_list",
    "read_image_zip",
    "text_id",
]

# name -> defining module; the last four were module-level names of the old data.py.
_LAZY = {
    "BAD_ROW_KINDS": "metric_sim.data.report",
    "CORPUS_FORMATS": "metric_sim.data.readers",
    "FORMATS": "metric_sim.data.readers",
    "PRESETS": "metric_sim.data.presets",
    "Corpus": "metric_sim.data.corpus",
    "DataError": "metric_sim.errors",
    "LoadReport": "metric_sim.data.report",
    "PairDataset": "metric_sim.data.pairs",
    "Preset": "metric_sim.data.presets",
    "UnionFind": "metric_sim.clusters",
    "default_data_dir": "metric_sim.data.presets",
    "list_presets": "metric_sim.data.presets",
    "load_corpus": "metric_sim.data.corpus",
    "load_pairs": "metric_sim.data.loader",
    "load_preset": "metric_sim.data.presets",
    "text_id": "metric_sim.items",
    "ItemsReport": "metric_sim.data.collections",
    "LabelledItems": "metric_sim.data.collections",
    "read_image_folder": "metric_sim.data.collections",
    "read_image_list": "metric_sim.data.collections",
    "read_image_zip": "metric_sim.data.collections",
    "catalogue_pairs": "metric_sim.data.image_presets",
    "grocery_catalogue": "metric_sim.data.image_presets",
    "grocery_photos": "metric_sim.data.image_presets",
    "grocery_product_pairs": "metric_sim.data.image_presets",
    "image_splits": "metric_sim.data.image_presets",
    "omniglot_items": "metric_sim.data.image_presets",
    "orl_items": "metric_sim.data.image_presets",
    "COLUMNS": "metric_sim.data.pairs",
    "MAX_BAD_ROW_EXAMPLES": "metric_sim.data.report",
    "ON_BAD_ROW": "metric_sim.data.report",
    "QUOTING": "metric_sim.data.readers",
}

if TYPE_CHECKING:
    from metric_sim.clusters import UnionFind
    from metric_sim.data.collections import (
        ItemsReport,
        LabelledItems,
        read_image_folder,
        read_image_list,
        read_image_zip,
    )
    from metric_sim.data.corpus import Corpus, load_corpus
    from metric_sim.data.image_presets import (
        catalogue_pairs,
        grocery_catalogue,
        grocery_photos,
        grocery_product_pairs,
        image_splits,
        omniglot_items,
        orl_items,
    )
    from metric_sim.data.loader import load_pairs
    from metric_sim.data.pairs import PairDataset
    from metric_sim.data.presets import PRESETS, Preset, default_data_dir, list_presets, load_preset
    from metric_sim.data.readers import CORPUS_FORMATS, FORMATS
    from metric_sim.data.report import BAD_ROW_KINDS, LoadReport
    from metric_sim.errors import DataError
    from metric_sim.items import text_id


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
