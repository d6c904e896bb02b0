"""Hard negatives mined on the raw distance, with the index the user will query.

:func:`mine_hard_negatives` embeds every distinct item of a pair list with the model,
indexes them in a :class:`~metric_sim.index.NeighborIndex` under the model's own metric
(Euclidean or Manhattan, never cosine), and keeps for each anchor its nearest neighbours
that are not known to be similar to it. The options are named like
``sentence_transformers.util.mine_hard_negatives`` where they mean the same, in distance
units of our metric (smaller = more similar).

Definitions, for an anchor ``a``:

* **Items and anchors.** The corpus is the distinct items of the pairs (ids that carry
  the same content count once, under their first id, in order of first appearance), and
  every one of them is an anchor: pairs here are symmetric, so either side may be a query.
* **Excluded.** ``a`` itself and every member of its duplicate cluster (the one cluster
  rule of :func:`metric_sim.clusters.cluster_ids`: labelled positives joined
  transitively, identical content joined). These are known positives, not guesses.
* **Rank.** The other items are ranked by distance to ``a`` (ties in corpus order);
  ``rank`` 1 is the nearest item that is not excluded.
* ``range_max``: only ranks ``<= range_max`` are candidates. ``range_min``: ranks
  ``<= range_min`` are skipped (the nearest ones are the likeliest unlabelled duplicates).
* ``relative_margin`` (false-negative guard): with ``d_pos(a)`` the distance to ``a``'s
  *farthest* labelled positive (a label-1 pair of ``a``), a candidate at distance ``d``
  is skipped when ``d < d_pos(a) * (1 + relative_margin)``. This is sentence-transformers'
  rule "a negative must be at least ``margin`` x |positive score| less similar than the
  positive" turned into distances, with its choice of the hardest positive when there are
  several, so every (anchor, positive, negative) triplet the negatives can form obeys it.
  Anchors without a labelled positive are not filtered by it.
* ``max_probability`` (false-negative guard): a candidate whose calibrated
  ``p(similar | d)`` is above it is skipped (needs a calibrated model).
* ``sampling_strategy``: ``"top"`` keeps the ``num_negatives`` best-ranked candidates
  that pass; ``"random"`` draws them among those that pass (a generator seeded with
  ``(seed, anchor)``, so the draw does not depend on batching) and keeps them in rank order.

Memory stays bounded: the anchors are searched in chunks of ``search_batch_size``, each
asking the index for ``range_max`` + (largest cluster) neighbours; no all-pairs matrix is
ever built. The embeddings and the index hold ``n x dim`` floats.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.clusters import cluster_ids
from metric_sim.data import COLUMNS, PairDataset
from metric_sim.data.report import LoadReport
from metric_sim.distances import paired_distances_numpy
from metric_sim.errors import (
    CalibrationError,
    ConfigError,
    DataError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from metric_sim.index import NeighborIndex
from metric_sim.index.kinds import parse_index_kind
from metric_sim.index.results import write_tsv_atomic
from metric_sim.items import item_id
from metric_sim.model import SimilarityModel
from metric_sim.schema import SavedFields, check_seal, read_json_file, seal
from metric_sim.storage import sha256_file, write_json_atomic
from metric_sim.validation import (
    require_choice,
    require_non_negative_int,
    require_positive_int,
    require_probability,
)
from metric_sim.version import __version__

__all__ = [
    "ANCHOR_CHOICES",
    "SAMPLING_STRATEGIES",
    "MinedNegatives",
    "MiningOptions",
    "describe_counts",
    "mine_hard_negatives",
    "sidecar_path",
]

ANCHOR_CHOICES = ("all", "with_positives")
SAMPLING_STRATEGIES = ("top", "random")
FORMAT = "metric-sim mined negatives"
FORMAT_VERSION = 1
TSV_HEADER = ["anchor_id", "negative_id", "rank", "distance", "probability", "anchor", "negative"]
# Guards and random sampling need room to choose: like sentence-transformers, look 10x further by default.
WIDE_WINDOW = 10
GUARDS = ("range_min", "relative_margin", "max_probability")


@dataclass(frozen=True)
class MiningOptions:
    """The checked options of one mining run (what the sidecar records)."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int | None = None
    relative_margin: float | None = None
    max_probability: float | None = None
    sampling_strategy: str = "top"
    index_kind: str = "flat"
    seed: int = 0
    anchors: str = "all"

    @classmethod
    def checked(cls, **options: Any) -> MiningOptions:
        """Every option validated (``InvalidArgumentError`` naming it and the value); ``range_max`` filled in."""
        num = require_positive_int("num_negatives", options.get("num_negatives", 3))
        low = require_non_negative_int("range_min", options.get("range_min", 0))
        margin = options.get("relative_margin")
        if margin is not None:
            if isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating)):
                raise InvalidArgumentTypeError(f"relative_margin must be a number, got {type(margin).__name__} {margin!r}")
            if not math.isfinite(margin) or margin < 0:
                raise InvalidArgumentError(f"relative_margin must be a finite number >= 0, got {margin!r}")
            margin = float(margin)
        top_p = options.get("max_probability")
        if top_p is not None:
            top_p = require_probability("max_probability", top_p)
        sampling = require_choice("sampling_strategy", options.get("sampling_strategy", "top"), SAMPLING_STRATEGIES)
        high = options.get("range_max")
        if high is None:
            wide = margin is not None or top_p is not None or sampling == "random"
            high = low + num * (WIDE_WINDOW if wide else 1)
        high = require_positive_int("range_max", high)
        if high - low < num:
            raise InvalidArgumentError(
                f"range_max must leave at least num_negatives={num} ranks after range_min={low}, got range_max={high}"
            )
        kind = options.get("index_kind", "flat")
        if not isinstance(kind, str):
            raise InvalidArgumentTypeError(f"index_kind must be a string, got {type(kind).__name__} {kind!r}")
        seed = require_non_negative_int("seed", options.get("seed", 0))
        anchors = require_choice("anchors", options.get("anchors", "all"), ANCHOR_CHOICES)
        return cls(num, low, high, margin, top_p, sampling, kind, seed, anchors)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class MinedNegatives:
    """Mined (anchor, negative) pairs, anchor by anchor (corpus order), each anchor's nearest first.

    ``anchor_texts`` / ``negative_texts`` are the items' descriptions (the texts themselves
    for texts); ``ranks`` are 1-based among the anchor's non-excluded neighbours;
    ``probabilities`` is None without a calibrator. ``counts`` says how many anchors were
    mined, how many candidates each guard skipped and how many anchors came up short.
    """

    anchor_ids: list[str]
    anchor_texts: list[str]
    negative_ids: list[str]
    negative_texts: list[str]
    distances: np.ndarray
    ranks: np.ndarray
    probabilities: np.ndarray | None
    metric: str
    options: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    model_fingerprint: str | None = None
    text_items: bool = True
    source: str | None = None  # where the pairs came from (a PairDataset's report.source)

    def __len__(self) -> int:
        return len(self.anchor_ids)

    def to_pairs(self) -> PairDataset:
        """The negatives as label-0 pairs (``id_a``/``id_b`` = item ids, ``pair_id`` = ``mined-<n>``)."""
        import datasets

        if not self.text_items:
            raise InvalidArgumentError(
                "these negatives were mined over non-text items; a PairDataset holds texts: join anchor_ids / "
                "negative_ids with your items instead"
            )
        n = len(self)
        columns = {
            "text_a": list(self.anchor_texts), "text_b": list(self.negative_texts), "label": [0] * n,
            "id_a": list(self.anchor_ids), "id_b": list(self.negative_ids),
            "pair_id": [f"mined-{i}" for i in range(n)],
        }
        features = datasets.Features({name: datasets.Value("int64" if name == "label" else "string")
                                      for name in COLUMNS})
        dataset = datasets.Dataset.from_dict(columns, features=features)
        return PairDataset(dataset, LoadReport(source="mined negatives", rows_read=n, pairs=n))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the TSV atomically, then its JSON sidecar (:func:`sidecar_path`), sealed and
        recording the TSV's sha256, the options, the model fingerprint and the counts."""
        path = Path(path)
        probs = self.probabilities
        rows = (
            [self.anchor_ids[i], self.negative_ids[i], int(self.ranks[i]), repr(float(self.distances[i])),
             "" if probs is None else repr(float(probs[i])), self.anchor_texts[i], self.negative_texts[i]]
            for i in range(len(self))
        )
        write_tsv_atomic(path, TSV_HEADER, rows)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "metric": self.metric, "rows": len(self),
            "options": self.options, "counts": self.counts, "model_fingerprint": self.model_fingerprint,
            "text_items": self.text_items, "calibrated": probs is not None, "source": self.source,
            "metric_sim_version": __version__, "tsv_sha256": sha256_file(path),
        }
        write_json_atomic(sidecar_path(path), seal(meta))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MinedNegatives:
        """Read what :meth:`save` wrote; refuses a TSV that does not match its sidecar."""
        path = Path(path)
        meta_file = sidecar_path(path)
        for needed in (path, meta_file):
            if not needed.is_file():
                raise ConfigError(f"{needed}: not found (mined negatives are a .tsv with a {meta_file.name} beside it)")
        payload = read_json_file(meta_file, ConfigError)
        check_seal(payload, meta_file, ConfigError)
        fields = SavedFields(payload, meta_file, ConfigError)
        fields.get("format", str, choices=[FORMAT])
        fields.get("format_version", int, choices=[FORMAT_VERSION])
        expected_rows = fields.get("rows", int, minimum=0)
        calibrated = fields.get("calibrated", bool)
        if fields.get("tsv_sha256", str) != sha256_file(path):
            raise ConfigError(f"{path}: its content does not match tsv_sha256 in {meta_file}: it changed after it was saved")
        columns = _read_tsv(path, calibrated)
        if len(columns[0]) != expected_rows:
            raise ConfigError(f"{meta_file}: rows is {expected_rows}, but {path} holds {len(columns[0])}")
        anchor_ids, negative_ids, ranks, distances, probs, anchors, negatives = columns
        return cls(anchor_ids, anchors, negative_ids, negatives, np.asarray(distances, np.float32),
                   np.asarray(ranks, np.int64), np.asarray(probs, np.float64) if calibrated else None,
                   fields.get("metric", str), dict(fields.get("options", dict)), dict(fields.get("counts", dict)),
                   fields.get("model_fingerprint", str, nullable=True), fields.get("text_items", bool),
                   fields.get("source", str, required=False, nullable=True))


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the JSON record of a mined-negatives TSV lives: ``negatives.tsv`` -> ``negatives.tsv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _read_tsv(path: Path, calibrated: bool) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in TSV_HEADER]
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            header = next(reader, None)
            if header != TSV_HEADER:
                raise DataError(f"expected the header {TSV_HEADER}, got {header}", source=path, line=1)
            for row in reader:
                line = reader.line_num
                if len(row) != len(TSV_HEADER):
                    raise DataError(f"expected {len(TSV_HEADER)} fields, got {len(row)}", source=path, line=line)
                parsed = list(row)
                for name, convert in (("rank", int), ("distance", float), ("probability", float)):
                    i = TSV_HEADER.index(name)
                    if name == "probability" and not calibrated:
                        parsed[i] = None
                        continue
                    try:
                        parsed[i] = convert(row[i])
                    except ValueError:
                        raise DataError(f"not a number: {row[i]!r}", source=path, line=line, column=name) from None
                for column, value in zip(columns, parsed, strict=True):
                    column.append(value)
        except csv.Error as exc:
            raise DataError(f"cannot be parsed: {exc}", source=path, line=reader.line_num) from None
    return columns


@dataclass
class _Corpus:
    """The distinct items of a pair list and what is known about each (row = corpus position)."""

    ids: list[str]
    items: list[Any]
    cluster: np.ndarray  # cluster number per row
    positive_a: np.ndarray  # rows of the label-1 pairs between distinct items
    positive_b: np.ndarray

    def largest_cluster(self) -> int:
        return int(np.bincount(self.cluster).max())


def _corpus_of(pairs: Any) -> _Corpus:
    names = ("texts_a", "texts_b", "ids_a", "ids_b", "labels")
    missing = [name for name in names if not hasattr(pairs, name)]
    if missing:
        raise InvalidArgumentTypeError(
            f"pairs must be a PairDataset (or have {list(names)}), got {type(pairs).__name__} without {missing}"
        )
    items_a, items_b, ids_a, ids_b = pairs.texts_a, pairs.texts_b, pairs.ids_a, pairs.ids_b
    labels = np.asarray(pairs.labels).tolist()
    if not labels:
        raise InvalidArgumentError("pairs is empty: mining needs at least one pair")
    row_of_id: dict[Any, int] = {}
    row_of_content: dict[str, int] = {}
    ids: list[str] = []
    items: list[Any] = []
    for ia, xa, ib, xb in zip(ids_a, items_a, ids_b, items_b, strict=True):
        for i, x in ((ia, xa), (ib, xb)):
            if i in row_of_id:
                continue
            row = row_of_content.setdefault(item_id(x), len(items))
            if row == len(items):
                ids.append(str(i))
                items.append(x)
            row_of_id[i] = row
    clusters = cluster_ids(ids_a, ids_b, labels, items_a, items_b)
    cluster = np.zeros(len(items), dtype=np.int64)
    for i, row in row_of_id.items():
        cluster[row] = clusters[i]
    positives = [(row_of_id[a], row_of_id[b]) for a, b, label in zip(ids_a, ids_b, labels, strict=True)
                 if label == 1 and row_of_id[a] != row_of_id[b]]
    pos = np.asarray(positives, dtype=np.int64).reshape(-1, 2)
    return _Corpus(ids, items, cluster, pos[:, 0], pos[:, 1])


def _positive_reach(corpus: _Corpus, embeddings: np.ndarray, metric: Any) -> np.ndarray:
    """Distance from each item to its farthest labelled positive (NaN for items without one)."""
    reach = np.full(len(corpus.items), -np.inf)
    if corpus.positive_a.size:
        d = paired_distances_numpy(embeddings[corpus.positive_a], embeddings[corpus.positive_b], metric)
        np.maximum.at(reach, corpus.positive_a, d.astype(np.float64))
        np.maximum.at(reach, corpus.positive_b, d.astype(np.float64))
    reach[np.isneginf(reach)] = np.nan
    return reach


def mine_hard_negatives(
    model: SimilarityModel,
    pairs: Any,
    *,
    num_negatives: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    relative_margin: float | None = None,
    max_probability: float | None = None,
    sampling_strategy: str = "top",
    batch_size: int = 64,
    search_batch_size: int = 1024,
    index_kind: str = "flat",
    seed: int = 0,
    anchors: str = "all",
    show_progress: bool = False,
) -> MinedNegatives:
    """Up to ``num_negatives`` hard negatives per distinct item of ``pairs`` (see the module docstring).

    ``pairs`` is a :class:`~metric_sim.data.PairDataset`, or any object with ``texts_a``,
    ``texts_b``, ``ids_a``, ``ids_b`` and ``labels`` holding items the encoder accepts.
    ``range_max`` defaults to ``range_min + num_negatives``, or ``range_min + 10 *
    num_negatives`` when a guard or random sampling needs room to choose. ``batch_size``
    is the encoding batch; ``search_batch_size`` the anchors per k-NN search (the result
    does not depend on either). ``index_kind`` ``"flat"`` is exact; ``"hnsw"`` / ``"ivf"``
    are faster on large corpora but may miss neighbours. ``anchors="with_positives"`` mines
    only for items that have a labelled positive (in QQP most questions have none, and their
    negatives dilute the positives without forming a triplet); the others are still candidates.
    """
    if not isinstance(model, SimilarityModel):
        raise InvalidArgumentTypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
    options = MiningOptions.checked(num_negatives=num_negatives, range_min=range_min, range_max=range_max,
                                    relative_margin=relative_margin, max_probability=max_probability,
                                    sampling_strategy=sampling_strategy, index_kind=index_kind, seed=seed,
                                    anchors=anchors)
    batch_size = require_positive_int("batch_size", batch_size)
    search_batch_size = require_positive_int("search_batch_size", search_batch_size)
    parse_index_kind(index_kind, model.metric)  # refuse a bad kind before the (slow) encoding
    if max_probability is not None and model.calibrator is None:
        raise CalibrationError(
            f"max_probability={max_probability} needs a calibrated model, but this model has no calibrator: "
            "calibrate it (model.calibrate / `metric-sim calibrate`) or leave max_probability out"
        )
    corpus = _corpus_of(pairs)
    items = model.encoder.check_items(corpus.items, "pairs items")
    embeddings = model.embed(items, batch_size=batch_size, show_progress=show_progress)
    index = NeighborIndex.from_embeddings(embeddings, items, metric=model.metric, kind=options.index_kind, model=model)
    texts = index.texts
    reach = _positive_reach(corpus, embeddings, model.metric)
    # Enough neighbours that range_max remain after dropping the anchor's whole cluster.
    k = min(len(items), options.range_max + corpus.largest_cluster())
    anchor_rows = np.arange(len(items)) if options.anchors == "all" else np.flatnonzero(~np.isnan(reach))
    counts = {"anchors": int(anchor_rows.size), "candidates": 0, "negatives": 0, "short_anchors": 0,
              "anchors_without_positive": int(np.isnan(reach).sum()), **{f"skipped_{g}": 0 for g in GUARDS}}
    rows_a: list[int] = []
    rows_n: list[int] = []
    ranks: list[int] = []
    dists: list[float] = []
    probs: list[float] = []
    progress = _progress(int(anchor_rows.size), show_progress)
    for start in range(0, int(anchor_rows.size), search_batch_size):
        chunk = anchor_rows[start:start + search_batch_size]
        for anchor, result in zip(chunk.tolist(), index.search_embeddings(embeddings[chunk], k=k), strict=True):
            found = np.fromiter((int(i) for i in result.ids), dtype=np.int64, count=len(result.ids))
            eligible = np.flatnonzero(corpus.cluster[found] != corpus.cluster[anchor])[: options.range_max]
            chosen = _choose(anchor, result.distances[eligible], None if result.probabilities is None
                             else result.probabilities[eligible], reach[anchor], options, counts)
            for position in chosen.tolist():
                rows_a.append(anchor)
                rows_n.append(int(found[eligible[position]]))
                ranks.append(position + 1)
                dists.append(float(result.distances[eligible[position]]))
                probs.append(np.nan if result.probabilities is None else float(result.probabilities[eligible[position]]))
        if progress is not None:
            progress.update(len(chunk))
    if progress is not None:
        progress.close()
    counts["negatives"] = len(rows_a)
    return MinedNegatives(
        anchor_ids=[corpus.ids[r] for r in rows_a], anchor_texts=[texts[r] for r in rows_a],
        negative_ids=[corpus.ids[r] for r in rows_n], negative_texts=[texts[r] for r in rows_n],
        distances=np.asarray(dists, np.float32), ranks=np.asarray(ranks, np.int64),
        probabilities=None if model.calibrator is None else np.asarray(probs, np.float64),
        metric=model.metric.value, options=options.to_dict(), counts=counts,
        model_fingerprint=model.encoder.fingerprint(), text_items=all(isinstance(x, str) for x in items),
        source=getattr(getattr(pairs, "report", None), "source", None),
    )


def _choose(anchor: int, distances: np.ndarray, probabilities: np.ndarray | None, reach: float,
            options: MiningOptions, counts: dict[str, int]) -> np.ndarray:
    """Positions (0-based ranks) of the chosen negatives among an anchor's eligible neighbours, nearest first.

    Each guard counts the candidates it removes among those the previous ones left.
    """
    counts["candidates"] += len(distances)
    keep = np.arange(len(distances)) >= options.range_min
    counts["skipped_range_min"] += int((~keep).sum())
    if options.relative_margin is not None and not math.isnan(reach):
        close = keep & (distances.astype(np.float64) < reach * (1.0 + options.relative_margin))
        counts["skipped_relative_margin"] += int(close.sum())
        keep &= ~close
    if options.max_probability is not None and probabilities is not None:
        likely = keep & (probabilities > options.max_probability)
        counts["skipped_max_probability"] += int(likely.sum())
        keep &= ~likely
    passing = np.flatnonzero(keep)
    if len(passing) < options.num_negatives:
        counts["short_anchors"] += 1
        return passing
    if options.sampling_strategy == "top":
        return passing[: options.num_negatives]
    rng = np.random.default_rng([options.seed, anchor])  # per anchor: independent of batching
    return np.sort(rng.choice(passing, size=options.num_negatives, replace=False))


def _progress(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="mining hard negatives", unit="anchor")


def describe_counts(mined: MinedNegatives) -> list[str]:
    """Readable lines about what was mined and what each guard skipped (the CLI prints them)."""
    c = mined.counts
    lines = [f"anchors: {c.get('anchors', 0):,}   negatives: {c.get('negatives', 0):,}   "
             f"candidates looked at: {c.get('candidates', 0):,}"]
    for guard in GUARDS:
        lines.append(f"skipped by {guard}: {c.get(f'skipped_{guard}', 0):,}")
    lines.append(f"anchors with fewer than {mined.options.get('num_negatives')} negatives: {c.get('short_anchors', 0):,}")
    lines.append(f"anchors without a labelled positive (relative_margin does not apply): "
                 f"{c.get('anchors_without_positive', 0):,}")
    return lines
