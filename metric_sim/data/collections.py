"""Labelled image collections: :class:`LabelledItems`, read from folders, zips and list files.

A collection is a list of items (absolute image locations, see :mod:`metric_sim.images`,
or canonical record JSON for catalogue entries), each with an identity label (the person,
the character, the fine product class), an optional coarse class (the alphabet, the
product family: where the hard negatives are) and a content id. Every image is fully
decoded once while reading, so a missing, truncated or non-image file fails here, naming
the file (``on_bad_row="skip"`` drops and counts it instead, and warns once).

Splits are by identity (:meth:`LabelledItems.split_by_identity`,
:meth:`LabelledItems.identity_folds`), so evaluation people or characters are never seen
in training; :meth:`LabelledItems.to_pairs` turns a collection into a
:class:`~metric_sim.data.pairs.PairDataset` of genuine and impostor pairs.
"""

from __future__ import annotations

import copy
import itertools
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from metric_sim.data.delimited import DelimitedReader
from metric_sim.data.loader import check_image, pairs_from_index_pairs, resolve_location
from metric_sim.data.pairs import PairDataset, validate_fractions
from metric_sim.data.report import MAX_BAD_ROW_EXAMPLES, ON_BAD_ROW
from metric_sim.errors import DataError, InvalidArgumentError, MissingFileError
from metric_sim.images import (
    IMAGE_SUFFIXES,
    iter_zip_images,
    split_zip_location,
)
from metric_sim.validation import (
    require_choice,
    require_non_negative_int,
    require_positive_int,
    require_probability,
)

__all__ = [
    "ITEM_PROBLEMS",
    "ItemsReport",
    "LabelledItems",
    "PairSampler",
    "pairs_between",
    "ratio_count",
    "read_image_folder",
    "read_image_list",
    "read_image_zip",
]

#: Kinds of rejected entries: an unusable list row / a file outside any identity folder,
#: and an image that is missing or does not decode.
ITEM_PROBLEMS = ("malformed", "bad_image")


@dataclass
class ItemsReport:
    """What reading a collection saw. ``entries_read == kept + sum(skipped.values())``."""

    source: str
    entries_read: int = 0  # image files (or list rows) looked at
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ITEM_PROBLEMS, 0))
    skipped_examples: list[dict] = field(default_factory=list)
    ignored_files: int = 0  # hidden files and files without an image suffix: not entries at all
    decode_seconds: float = 0.0  # time spent decoding and hashing every image once

    def to_dict(self) -> dict:
        return asdict(self)


class _Collector:
    """Accumulates kept items and rejected entries under ``on_bad_row``."""

    def __init__(self, source: str, on_bad_row: str) -> None:
        require_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
        self.on_bad_row = on_bad_row
        self.report = ItemsReport(source=source)
        self.items: list[str] = []
        self.labels: list[str] = []
        self.coarse: list[str | None] = []
        self.ids: list[str] = []

    def reject(self, kind: str, message: str, **where) -> None:
        if self.on_bad_row == "error":
            raise DataError(message, source=self.report.source, **where)
        self.report.skipped[kind] += 1
        if len(self.report.skipped_examples) < MAX_BAD_ROW_EXAMPLES:
            self.report.skipped_examples.append({"kind": kind, "message": message, **where})

    def add(self, location: str, label: str, coarse: str | None, **at) -> None:
        start = time.perf_counter()
        try:
            content = check_image(location)
        except (DataError, MissingFileError) as exc:
            self.reject("bad_image", str(exc), **at)
            return
        finally:
            self.report.decode_seconds += time.perf_counter() - start
        self.items.append(location)
        self.labels.append(label)
        self.coarse.append(coarse)
        self.ids.append(content)

    def finish(self) -> LabelledItems:
        report = self.report
        report.kept = len(self.items)
        n_bad = sum(report.skipped.values())
        if n_bad:
            first = report.skipped_examples[0]["message"]
            warnings.warn(f"{report.source}: skipped {n_bad} of {report.entries_read} entries "
                          f"{report.skipped}; first: {first}", UserWarning, stacklevel=3)
        if not self.items:
            raise DataError(f"no usable images ({report.entries_read} entries read, skipped {report.skipped})",
                            source=report.source)
        return LabelledItems(self.items, self.labels, self.coarse, self.ids, report.source, report)


@dataclass
class LabelledItems:
    """Items with an identity label, an optional coarse class and a content id each (parallel lists)."""

    items: list[str]
    labels: list[str]
    coarse: list[str | None]
    ids: list[str]
    source: str = "<in-memory>"
    report: ItemsReport | None = None

    def __post_init__(self) -> None:
        n = len(self.items)
        for name in ("labels", "coarse", "ids"):
            if len(getattr(self, name)) != n:
                raise InvalidArgumentError(f"{name} must have one entry per item ({n}), got {len(getattr(self, name))}")
        if self.report is None:
            self.report = ItemsReport(self.source, entries_read=n, kept=n)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"LabelledItems(items={len(self)}, identities={len(self.identities())}, source={self.source!r})"

    def identities(self) -> list[str]:
        """Distinct labels, in order of first appearance."""
        return list(dict.fromkeys(self.labels))

    def select(self, indices: Sequence[int]) -> LabelledItems:
        """The items at ``indices``, in that order (the report is copied along)."""
        idx = [int(i) for i in indices]
        return LabelledItems([self.items[i] for i in idx], [self.labels[i] for i in idx],
                             [self.coarse[i] for i in idx], [self.ids[i] for i in idx], self.source,
                             copy.deepcopy(self.report))

    def with_identities(self, names: Sequence[str] | set[str]) -> LabelledItems:
        """The items whose label is in ``names`` (original order)."""
        keep = set(names)
        return self.select([i for i, label in enumerate(self.labels) if label in keep])

    def _shuffled_identities(self, seed: int) -> list[str]:
        seed = require_non_negative_int("seed", seed)
        names = sorted(self.identities())  # sorted first: the split does not depend on read order
        return [names[i] for i in np.random.default_rng(seed).permutation(len(names))]

    def split_by_identity(self, fractions: Mapping[str, float] | None = None, seed: int = 0
                          ) -> dict[str, LabelledItems]:
        """Identities shuffled with ``seed`` and dealt to splits by ``fractions`` of the identity count.

        Default 0.7/0.15/0.15 train/dev/test. No identity is in two splits; every split gets
        at least one identity; counts are rounded by largest remainder (40 people -> 28/6/6).
        """
        fractions = validate_fractions({"train": 0.7, "dev": 0.15, "test": 0.15} if fractions is None else fractions)
        names = self._shuffled_identities(seed)
        counts = _apportion(len(names), list(fractions.values()), what="identities")
        out, start = {}, 0
        for split, count in zip(fractions, counts, strict=True):
            out[split] = self.with_identities(names[start:start + count])
            start += count
        return out

    def identity_folds(self, n_folds: int, seed: int = 0) -> list[dict[str, LabelledItems]]:
        """``n_folds`` folds ``{"train", "test"}``: each identity is in exactly one fold's test part.

        Report a metric as the mean and spread over folds of unseen identities.
        """
        n_folds = require_positive_int("n_folds", n_folds)
        if n_folds < 2:
            raise InvalidArgumentError(f"n_folds must be at least 2, got {n_folds}")
        names = self._shuffled_identities(seed)
        if len(names) < n_folds:
            raise InvalidArgumentError(f"n_folds={n_folds} needs at least {n_folds} identities, got {len(names)}")
        groups = [names[k::n_folds] for k in range(n_folds)]
        return [{"train": self.with_identities([n for g in groups if g is not held for n in g]),
                 "test": self.with_identities(held)} for held in groups]

    def split_within_identities(self, fractions: Mapping[str, float], seed: int = 0) -> dict[str, LabelledItems]:
        """Each identity's items dealt to splits by ``fractions`` (the first split gets at least one).

        Only for closed-set tasks (matching to a known catalogue), where every class is
        known at test time; faces and characters must be split by identity instead.
        """
        fractions = validate_fractions(fractions)
        rng = np.random.default_rng(require_non_negative_int("seed", seed))
        chosen: list[list[int]] = [[] for _ in fractions]
        by_label = _groups(self.labels)
        for label in sorted(by_label):
            members = [by_label[label][j] for j in rng.permutation(len(by_label[label]))]
            counts = _apportion(len(members), list(fractions.values()), what=None)
            start = 0
            for k, count in enumerate(counts):
                chosen[k].extend(members[start:start + count])
                start += count
        return {name: self.select(sorted(rows)) for name, rows in zip(fractions, chosen, strict=True)}

    def to_pairs(self, *, seed: int = 0, impostors_per_genuine: float = 1.0, hard_impostor_share: float = 0.5,
                 max_genuine_per_identity: int | None = None) -> PairDataset:
        """Genuine and impostor pairs as a :class:`PairDataset` (locations as texts, content ids as ids).

        Genuine: every unordered pair of items of one identity, ``n * (n - 1) / 2`` for an
        identity of ``n`` items (a seeded sample of ``max_genuine_per_identity`` when given).
        Impostors: ``round(impostors_per_genuine * genuine)`` distinct pairs of different
        identities, ``round(hard_impostor_share * impostors)`` of them hard (same coarse
        class) where such pairs exist; two items of identical content are never impostors.
        Rows are shuffled with ``seed``; ``pair_id`` says the kind: ``g<n>`` genuine,
        ``h<n>`` hard impostor, ``i<n>`` other impostor.
        """
        rng = np.random.default_rng(require_non_negative_int("seed", seed))
        cap = None
        if max_genuine_per_identity is not None:
            cap = require_positive_int("max_genuine_per_identity", max_genuine_per_identity)
        hard_impostor_share = require_probability("hard_impostor_share", hard_impostor_share)
        genuine: list[tuple[int, int]] = []
        for members in _groups(self.labels).values():
            combos = list(itertools.combinations(members, 2))
            if cap is not None and len(combos) > cap:
                combos = [combos[k] for k in sorted(rng.choice(len(combos), cap, replace=False).tolist())]
            genuine.extend(combos)
        wanted = ratio_count("impostors_per_genuine", impostors_per_genuine, len(genuine))
        hard, easy = PairSampler(self, self, rng).impostors(wanted, hard_impostor_share)
        return pairs_between(self, self, {"g": (1, genuine), "h": (0, hard), "i": (0, easy)},
                             rng=rng, source=f"{self.source} (pairs, seed {seed})")


def _groups(labels: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return groups


def ratio_count(name: str, ratio: float, n: int) -> int:
    """``round(ratio * n)`` for a finite ``ratio >= 0`` (named in the error otherwise)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.number)) or not 0 <= ratio < np.inf:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {ratio!r}")
    return int(round(float(ratio) * n))


class PairSampler:
    """Draws distinct impostor pairs ``(i in left, j in right)``: different identity, different content.

    A *hard* impostor shares the coarse class. Pairs are drawn at random and rejected when
    unfit or already drawn; when that stalls (few candidates left) the remaining candidates
    are listed and sampled, so small collections get every impostor there is.
    """

    _MAX_ROUNDS = 30

    def __init__(self, left: LabelledItems, right: LabelledItems, rng: np.random.Generator) -> None:
        self.same = left is right
        self.rng = rng
        codes: dict[str | None, int] = {None: -1}
        self.la = np.array([codes.setdefault(x, len(codes)) for x in left.labels], dtype=np.int64)
        self.lb = np.array([codes.setdefault(x, len(codes)) for x in right.labels], dtype=np.int64)
        coarse: dict[str | None, int] = {None: -1}
        self.ca = np.array([coarse.setdefault(x, len(coarse)) for x in left.coarse], dtype=np.int64)
        cb = np.array([coarse.setdefault(x, len(coarse)) for x in right.coarse], dtype=np.int64)
        self.ida, self.idb = left.ids, right.ids
        self.by_coarse = {c: np.flatnonzero(cb == c) for c in set(cb.tolist()) if c >= 0}
        self.hard_left = np.array(
            [i for i, c in enumerate(self.ca.tolist())
             if c in self.by_coarse and bool((self.lb[self.by_coarse[c]] != self.la[i]).any())], dtype=np.int64)
        self.taken: set[tuple[int, int]] = set()

    def _accept(self, i: int, j: int, out: list[tuple[int, int]]) -> None:
        key = (min(i, j), max(i, j)) if self.same else (i, j)
        if self.la[i] != self.lb[j] and self.ida[i] != self.idb[j] and key not in self.taken:
            self.taken.add(key)
            out.append(key)

    def _draw(self, n: int, hard: bool) -> list[tuple[int, int]]:
        if hard:
            lefts = self.rng.choice(self.hard_left, n).tolist()
            groups = [self.by_coarse[self.ca[i]] for i in lefts]
            return [(i, int(g[self.rng.integers(len(g))])) for i, g in zip(lefts, groups, strict=True)]
        return list(zip(self.rng.integers(len(self.la), size=n).tolist(),
                        self.rng.integers(len(self.lb), size=n).tolist(), strict=True))

    def sample(self, want: int, *, hard: bool) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        if want <= 0 or len(self.la) == 0 or (hard and len(self.hard_left) == 0):
            return out
        for _ in range(self._MAX_ROUNDS):
            for i, j in self._draw(2 * (want - len(out)) + 8, hard):
                self._accept(i, j, out)
                if len(out) == want:
                    return out
        lefts = self.hard_left.tolist() if hard else range(len(self.la))
        rest = [(i, int(j)) for i in lefts
                for j in (self.by_coarse[self.ca[i]] if hard else range(len(self.lb)))]
        for k in self.rng.permutation(len(rest)).tolist():
            if len(out) == want:
                break
            self._accept(*rest[k], out)
        return out

    def impostors(self, want: int, hard_share: float) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """``(hard, other)``: ``want`` impostors in all, ``round(hard_share * want)`` hard where possible."""
        hard = self.sample(int(round(hard_share * want)), hard=True)
        easy = self.sample(want - len(hard), hard=False)
        if len(hard) + len(easy) < want:
            warnings.warn(f"only {len(hard) + len(easy)} impostor pairs exist, {want} were asked for",
                          UserWarning, stacklevel=3)
        return hard, easy


def pairs_between(left: LabelledItems, right: LabelledItems,
                  kinds: Mapping[str, tuple[int, Sequence[tuple[int, int]]]], *,
                  rng: np.random.Generator, source: str) -> PairDataset:
    """``(left[i], right[j])`` pairs as a :class:`PairDataset` (:func:`~metric_sim.data.loader.pairs_from_index_pairs`)."""
    return pairs_from_index_pairs(left.items, left.ids, right.items, right.ids, kinds, rng=rng, source=source)


def _apportion(total: int, fractions: list[float], *, what: str | None) -> list[int]:
    """Largest-remainder counts summing to ``total``; every part gets at least one when ``what``
    names the things counted (else only the first part does)."""
    if what is not None and total < len(fractions):
        raise InvalidArgumentError(f"{len(fractions)} splits need at least {len(fractions)} {what}, got {total}")
    raw = [f * total for f in fractions]
    counts = [int(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: (counts[k] - raw[k], k))[: total - sum(counts)]:
        counts[k] += 1
    minimum = [1] * len(counts) if what is not None else [min(total, 1)] + [0] * (len(counts) - 1)
    for k in range(len(counts)):
        while counts[k] < minimum[k]:  # take one from the part with the most to spare
            donor = max(range(len(counts)), key=lambda d: (counts[d] - minimum[d], -d))
            counts[donor] -= 1
            counts[k] += 1
    return counts


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _identity(parts: Sequence[str], depth: int | None) -> tuple[str, str | None] | None:
    """(identity, coarse) from the folder parts of a file; ``None`` for a file outside any folder."""
    folders = list(parts[:-1])[:depth]
    return ("/".join(folders), "/".join(folders[:-1]) or None) if folders else None


def _add_tree_file(out: _Collector, location: str, parts: Sequence[str], depth: int | None) -> None:
    out.report.entries_read += 1
    ident = _identity(parts, depth)
    if ident is None:
        out.reject("malformed", f"{location}: an image outside any identity folder")
        return
    out.add(location, ident[0], ident[1])


def read_image_folder(root: str | os.PathLike[str], *, on_bad_row: str = "error", depth: int | None = None
                      ) -> LabelledItems:
    """``ROOT/IDENTITY/x.png``: the identity is the file's folder relative to ``root``.

    ``ROOT/alphabet/character/x.png`` gives identity ``alphabet/character`` and coarse
    class ``alphabet`` (the identity's parent folder; ``None`` for one-level identities).
    ``depth`` keeps only the first ``depth`` folder levels as the identity. Hidden files
    and files without an image suffix are ignored (counted in ``ignored_files``); a file
    with an image suffix that does not decode is an error naming it, or with
    ``on_bad_row="skip"`` dropped and counted. Files are read in sorted path order.
    """
    if depth is not None:
        depth = require_positive_int("depth", depth)
    base = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not base.is_dir():
        raise MissingFileError(f"image folder not found: {base}")
    out = _Collector(str(base), on_bad_row)
    for path in sorted(p for p in base.rglob("*") if not p.is_dir()):
        parts = path.relative_to(base).parts
        if _is_hidden(parts) or not path.name.lower().endswith(IMAGE_SUFFIXES):
            out.report.ignored_files += 1
            continue
        _add_tree_file(out, str(path), parts, depth)
    return out.finish()


def read_image_zip(archive: str | os.PathLike[str], *, on_bad_row: str = "error", depth: int | None = None,
                   strip_top: bool | None = None) -> LabelledItems:
    """The tree of :func:`read_image_folder` inside a zip, read in place (``ARCHIVE.zip!/member``).

    ``strip_top=None`` strips a single top folder that holds every image when the identity
    folders are below it (Omniglot: ``images_background_small1/ALPHABET/characterNN/x.png``
    gives identity ``ALPHABET/characterNN``, coarse class ``ALPHABET``).
    """
    if depth is not None:
        depth = require_positive_int("depth", depth)
    path = os.path.abspath(os.path.expanduser(os.fspath(archive)))
    locations = list(iter_zip_images(path))
    members = [split_zip_location(loc)[1] for loc in locations]  # type: ignore[index]
    split_members = [m.split("/") for m in members]
    if strip_top is None:
        tops = {p[0] for p in split_members}
        strip_top = len(tops) == 1 and all(len(p) >= 3 for p in split_members)
    out = _Collector(path, on_bad_row)
    for loc, parts in zip(locations, split_members, strict=True):
        if _is_hidden(parts):
            out.report.ignored_files += 1
            continue
        _add_tree_file(out, loc, parts[1:] if strip_top else parts, depth)
    return out.finish()


_LIST_COLUMNS = ("path", "fine_id", "coarse_id")


def read_image_list(list_file: str | os.PathLike[str], *, base_dir: str | os.PathLike[str] | None = None,
                    on_bad_row: str = "error", delimiter: str = ",") -> LabelledItems:
    """Rows ``path, fine_id[, coarse_id]`` (Grocery's ``train.txt``): integer class ids as labels.

    Paths are relative to the list file's folder unless ``base_dir`` (or absolute, or zip
    locations). Fields are stripped of surrounding spaces. A wrong field count, an empty
    path, a non-integer id, a fine id listed under two coarse ids, or a missing or
    undecodable image is an error naming the file, line and column (or skipped and counted).
    """
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(list_file))))
    if not path.is_file():
        raise MissingFileError(f"image list file not found: {path}")
    base = path.parent if base_dir is None else Path(base_dir)
    out = _Collector(str(path), on_bad_row)
    coarse_of: dict[str, tuple[str | None, int]] = {}
    n_fields: int | None = None  # the first row fixes it: 3, or 2 without coarse ids
    for raw in DelimitedReader(path, source=str(path), delimiter=delimiter, quoting="csv", encoding="utf-8"):
        if raw.fields is not None and not raw.fields:
            continue  # blank line
        out.report.entries_read += 1
        line, fields = raw.start, None if raw.fields is None else [f.strip() for f in raw.fields]
        if n_fields is None and fields is not None:
            n_fields = len(fields) if len(fields) in (2, 3) else 3
        if fields is None:
            index = raw.field_index
            problem = (_LIST_COLUMNS[index] if index is not None and index < 3 else index, raw.problem)
        else:
            problem = _list_row_problem(fields, n_fields or 3, coarse_of)
        if problem is not None:
            out.reject("malformed", str(problem[1]), line=line, column=problem[0])
            continue
        fine = str(int(fields[1]))
        coarse = str(int(fields[2])) if len(fields) == 3 else None
        coarse_of.setdefault(fine, (coarse, line))
        out.add(resolve_location(fields[0], base), fine, coarse, line=line, column="path")
    return out.finish()


def _list_row_problem(fields: list[str] | None, n_fields: int, coarse_of: dict[str, tuple[str | None, int]]
                      ) -> tuple[str | None, str] | None:
    """``(column, message)`` of what is wrong with a list row (its fields, stripped), else ``None``."""
    if fields is None or len(fields) != n_fields:
        return None, f"expected {n_fields} fields (path, fine id[, coarse id]), got {len(fields or [])}"
    if not fields[0]:
        return "path", "empty path"
    for column, value in zip(_LIST_COLUMNS[1:], fields[1:], strict=False):
        try:
            int(value)
        except ValueError:
            return column, f"{column} must be an integer, got {value!r}"
    if n_fields == 3:
        fine, coarse = str(int(fields[1])), str(int(fields[2]))
        before = coarse_of.get(fine)
        if before is not None and before[0] != coarse:
            return "coarse_id", f"fine id {fine} has coarse id {before[0]} on line {before[1]} and {coarse} here"
    return None
