"""Validated labelled pairs: :class:`PairDataset` (columns, unique texts, clusters, splits).

Everything downstream (training, calibration, the index) consumes a ``PairDataset``:
six columns on top of a ``datasets.Dataset`` (``text_a``, ``text_b``, ``label`` 0/1,
``id_a``, ``id_b``, ``pair_id``) plus a :class:`~metric_sim.data.report.LoadReport`
that says what was read, kept and rejected.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from metric_sim.clusters import UnionFind, cluster_ids
from metric_sim.data.readers import DelimitedReader, refuse_duplicate_columns, strip_gz
from metric_sim.data.report import LoadReport
from metric_sim.errors import (
    DataError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.validation import require_non_negative_int, require_positive_float

if TYPE_CHECKING:
    import datasets

__all__ = ["COLUMNS", "PairDataset", "read_split_file", "validate_fractions"]

COLUMNS = ("text_a", "text_b", "label", "id_a", "id_b", "pair_id")


class PairDataset:
    """Validated labelled pairs on top of a ``datasets.Dataset``.

    Columns: ``text_a`` (str), ``text_b`` (str), ``label`` (int 0/1), ``id_a``, ``id_b``,
    ``pair_id`` (str). Treat ``dataset`` as read-only: column lists and clusters are cached.
    """

    def __init__(self, dataset: datasets.Dataset, report: LoadReport | None = None) -> None:
        import datasets  # here, not at module level: naming PairDataset must stay a light import

        if not isinstance(dataset, datasets.Dataset):
            raise InvalidArgumentTypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
        missing = [c for c in COLUMNS if c not in dataset.column_names]
        if missing:
            raise InvalidArgumentError(
                f"dataset is missing columns {missing}; need {list(COLUMNS)}, got {dataset.column_names}"
            )
        self._dataset = dataset
        self._cache: dict[str, list] | None = None
        self._clusters: dict[str, int] | None = None
        labels = self._column("label")
        bad = [v for v in labels if v not in (0, 1)]
        if bad:
            raise InvalidArgumentError(f"label column must hold 0/1, got {bad[:5]}")
        if report is None:
            report = LoadReport(source="<in-memory>", rows_read=len(labels), pairs=len(labels))
        self.report = report

    # -- columns
    @property
    def dataset(self) -> datasets.Dataset:
        return self._dataset

    def _column(self, name: str) -> list:
        if self._cache is None:
            # One slice for all columns: iterating a datasets Column is ~5x slower.
            self._cache = self._dataset.with_format(None).select_columns(list(COLUMNS))[:]
        return self._cache[name]

    def __len__(self) -> int:
        return self._dataset.num_rows

    def __repr__(self) -> str:
        return f"PairDataset(pairs={len(self)}, source={self.report.source!r})"

    @property
    def texts_a(self) -> list[str]:
        return list(self._column("text_a"))

    @property
    def texts_b(self) -> list[str]:
        return list(self._column("text_b"))

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._column("label"), dtype=np.int64)

    @property
    def ids_a(self) -> list[str]:
        return list(self._column("id_a"))

    @property
    def ids_b(self) -> list[str]:
        return list(self._column("id_b"))

    @property
    def pair_ids(self) -> list[str]:
        return list(self._column("pair_id"))

    # -- texts and clusters
    def unique_texts(self) -> tuple[list[str], list[str]]:
        """``(ids, texts)`` of distinct text ids in order of first appearance (a then b, row by row)."""
        seen: dict[str, str] = {}
        for ia, ta, ib, tb in zip(
            self._column("id_a"),
            self._column("text_a"),
            self._column("id_b"),
            self._column("text_b"),
            strict=True,
        ):
            seen.setdefault(ia, ta)
            seen.setdefault(ib, tb)
        return list(seen), list(seen.values())

    def cluster_labels(self) -> dict[str, int]:
        """Text id -> cluster id under the one cluster rule (:func:`metric_sim.clusters.cluster_ids`).

        Union-find over *positive* pairs, and ids that carry the identical text are
        joined too (QQP has identical questions under different qids), the same
        grouping training uses. Every text gets a cluster (singletons their own). Ids
        are ``0..n_clusters-1``, numbered in order of each cluster's first appearance
        (``id_a`` then ``id_b``, row by row), so they are deterministic.
        """
        if self._clusters is None:
            self._clusters = cluster_ids(
                self._column("id_a"),
                self._column("id_b"),
                self._column("label"),
                self._column("text_a"),
                self._column("text_b"),
            )
        return dict(self._clusters)

    def pair_cluster_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Cluster id of ``text_a`` and of ``text_b`` for every pair (int64 arrays)."""
        clusters = self.cluster_labels()
        a = np.fromiter(
            (clusters[i] for i in self._column("id_a")), dtype=np.int64, count=len(self)
        )
        b = np.fromiter(
            (clusters[i] for i in self._column("id_b")), dtype=np.int64, count=len(self)
        )
        return a, b

    # -- subsets
    def select(self, indices: Sequence[int] | np.ndarray) -> PairDataset:
        """The pairs at ``indices`` (in that order); the report is copied along."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise InvalidArgumentTypeError(
                f"indices must be a 1-D sequence of integers, got dtype {idx.dtype} shape {idx.shape}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(
                f"indices must be in [0, {len(self)}), got min {idx.min()} max {idx.max()}"
            )
        return PairDataset(self._dataset.select(idx.tolist()), report=copy.deepcopy(self.report))

    def summary(self) -> dict:
        labels = self.labels
        sizes: dict[int, int] = {}
        for c in self.cluster_labels().values():
            sizes[c] = sizes.get(c, 0) + 1
        return {
            "source": self.report.source,
            "pairs": len(self),
            "positives": int(labels.sum()),
            "negatives": int(len(labels) - labels.sum()),
            "rows_read": self.report.rows_read,
            "bad_rows": dict(self.report.bad_rows),
            "unique_texts": sum(sizes.values()),
            "clusters": sum(1 for s in sizes.values() if s >= 2),
            "singletons": sum(1 for s in sizes.values() if s == 1),
            "largest_cluster": max(sizes.values(), default=0),
            "self_pairs": self.report.self_pairs,
            "duplicate_pairs": self.report.duplicate_pairs,
            "middle_band": self.report.middle_band,
            "multiline_records": self.report.multiline_records,
        }

    def group_split(
        self, fractions: Mapping[str, float] | None = None, seed: int = 0
    ) -> dict[str, PairDataset]:
        """Leakage-free split: no text ends up in two splits.

        Texts are joined into connected components over *all* pairs (positive and
        negative), and ids that carry the exact same text are joined too (QQP has
        identical questions under different qids). This is not the cluster rule of
        :meth:`cluster_labels` on purpose: a negative pair joins too, since a split must
        share no text at all. Components are shuffled with
        ``seed`` and each goes whole to the split that is least full relative to its
        target, so split sizes (in pairs) approach ``fractions`` (default 0.7/0.15/0.15).
        Rows keep their original order inside each split.
        """
        fractions = validate_fractions(
            {"train": 0.7, "dev": 0.15, "test": 0.15} if fractions is None else fractions
        )
        seed = require_non_negative_int("seed", seed)
        ids_a, ids_b = self._column("id_a"), self._column("id_b")
        uf = UnionFind()
        for ia, ib in zip(ids_a, ids_b, strict=True):
            uf.union(ia, ib)
        first_id_of_text: dict[str, str] = {}
        for i, text in zip(*self.unique_texts(), strict=True):
            uf.union(first_id_of_text.setdefault(text, i), i)

        components: dict[Hashable, list[int]] = {}  # insertion-ordered -> deterministic
        for row, ia in enumerate(ids_a):
            components.setdefault(uf.find(ia), []).append(row)
        comps = list(components.values())

        names = list(fractions)
        targets = np.array([fractions[n] * len(self) for n in names], dtype=np.float64)
        filled = np.zeros(len(names), dtype=np.float64)
        chosen: list[list[int]] = [[] for _ in names]
        for c in np.random.default_rng(seed).permutation(len(comps)):
            rows = comps[c]
            k = int(np.argmin(filled / targets))  # ignores the size: no big-component bias
            filled[k] += len(rows)
            chosen[k].extend(rows)
        return {name: self.select(sorted(rows)) for name, rows in zip(names, chosen, strict=True)}

    def split_from_file(
        self,
        path: str | os.PathLike,
        split: str,
        *,
        id_column: str = "id",
        split_column: str = "split",
    ) -> PairDataset:
        """Pairs whose ``pair_id`` the file assigns to ``split``.

        The file is delimited text with a header (tab, or comma for ``.csv``). Every
        pair of this dataset must be listed: a missing one raises instead of being
        silently dropped. Ids in the file that are not in the dataset are fine.
        """
        assignment = read_split_file(Path(path), id_column=id_column, split_column=split_column)
        names = list(dict.fromkeys(assignment.values()))
        if split not in names:
            raise DataError(
                f"split must be one of {names} (the split names in this file), got {split!r}",
                source=path,
            )
        pair_ids = self._column("pair_id")
        missing = [p for p in pair_ids if p not in assignment]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(pair_ids)} pairs have no entry in the split file, "
                f"e.g. pair ids {missing[:5]}",
                source=path,
            )
        return self.select([i for i, p in enumerate(pair_ids) if assignment[p] == split])


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Split name -> positive fraction, summing to 1."""
    if not isinstance(fractions, Mapping) or not fractions:
        raise InvalidArgumentTypeError(
            f"fractions must be a non-empty mapping of split name -> fraction, got {fractions!r}"
        )
    out = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"split names must be non-empty strings, got {name!r}")
        out[name] = require_positive_float(f"fractions[{name!r}]", value)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise InvalidArgumentError(f"fractions must sum to 1, got {total!r} from {out}")
    return out


def read_split_file(path: Path, *, id_column: str, split_column: str) -> dict[str, str]:
    """Pair id -> split name from a delimited file with a header (comma for ``.csv``, else tab)."""
    if not path.is_file():
        raise MissingFileError(f"split file not found: {path}")
    delimiter = "," if strip_gz(path).suffix.lower() == ".csv" else "\t"
    header: list[str] | None = None
    assignment: dict[str, str] = {}
    where: dict[str, int] = {}
    rows = DelimitedReader(
        path, source=str(path), delimiter=delimiter, quoting="csv", encoding="utf-8"
    )
    for raw in rows:
        line, row = raw.start, raw.fields
        if row is None:
            named = header is not None and raw.field_index is not None and raw.field_index < len(header)
            raise DataError(
                f"line cannot be parsed: {raw.problem}",
                source=path,
                line=line,
                column=header[raw.field_index] if named else raw.field_index,  # type: ignore[index]
            )
        if not row:
            continue
        if raw.end > raw.start:  # ids and split names never hold line breaks
            raise DataError(
                f"a quoted field runs over {raw.span}; a split file has one record per line",
                source=path,
                line=line,
            )
        if header is None:
            header = row
            refuse_duplicate_columns(header, source=str(path), line=line)
            missing = [c for c in (id_column, split_column) if c not in header]
            if missing:
                raise DataError(
                    f"missing column(s) {missing}; columns found: {header}", source=path, line=line
                )
            i_id, i_split = header.index(id_column), header.index(split_column)
            continue
        if len(row) != len(header):
            raise DataError(
                f"expected {len(header)} fields, got {len(row)}", source=path, line=line
            )
        key, name = row[i_id], row[i_split]
        if not key or not name:
            raise DataError("empty id or split name", source=path, line=line)
        if key in assignment and assignment[key] != name:
            raise DataError(
                f"id {key!r} is assigned to {assignment[key]!r} on line {where[key]} and to {name!r} here",
                source=path,
                line=line,
            )
        assignment[key] = name
        where.setdefault(key, line)
    if not assignment:
        raise DataError("split file has no data rows", source=path)
    return assignment
