"""The train and dev pairs a :class:`~metric_sim.training.config.TrainConfig` names."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.data import COLUMNS, PairDataset, load_pairs, load_preset
from metric_sim.distances import Metric
from metric_sim.distributed import broadcast_object, is_main_process
from metric_sim.encoders.base import ItemEncoder
from metric_sim.errors import InvalidArgumentError, TrainingError
from metric_sim.layout import HARD_NEGATIVES_FILE
from metric_sim.mining import MinedNegatives, mine_hard_negatives
from metric_sim.model import SimilarityModel
from metric_sim.training.config import TrainConfig, check_hard_negatives
from metric_sim.training.mix_config import MixSource, mix_source_name

__all__ = ["add_hard_negatives", "add_mix_pairs", "carve_dev", "load_mix_set", "load_training_data", "mine_train_negatives",
           "mix_into", "subsample"]

logger = logging.getLogger(__name__)


def load_training_data(config: TrainConfig) -> tuple[PairDataset, PairDataset]:
    """The train and dev :class:`PairDataset` a config names (dev carved from train when absent)."""
    if config.preset is not None:
        train, dev = _preset_splits(config)
    else:
        columns = {"text_a": config.text_a, "text_b": config.text_b, "label": config.label}
        if config.items != "text":
            columns["items"] = config.items
        train = load_pairs(config.train_file, **columns)
        if config.dev_file is not None:
            dev = load_pairs(config.dev_file, **columns)
        else:
            train, dev = carve_dev(train, config)
    train = subsample(train, config.max_train_pairs, config.split_seed)
    dev = subsample(dev, config.max_dev_pairs, config.split_seed)
    for name, part in (("train", train), ("dev", dev)):
        if len(part) == 0:
            raise TrainingError(f"the {name} split is empty")
    if len(set(dev.labels.tolist())) < 2:
        raise TrainingError("the dev split needs both similar and dissimilar pairs (average precision and calibration)")
    return train, dev


def _preset_splits(config: TrainConfig) -> tuple[PairDataset, PairDataset]:
    kwargs = {"data_dir": config.data_dir, "low": config.score_low, "high": config.score_high}

    def part(path: str | None, split: str | None) -> PairDataset:
        # qqp selects a split of one file (split.tsv); the other presets have a file per split.
        if config.preset == "qqp" or path is None:
            return load_preset(config.preset, path, split=split, **kwargs)
        return load_preset(config.preset, path, **kwargs)

    train = part(config.train_file, config.train_split)
    if config.dev_file is not None:
        return train, part(config.dev_file, None)
    if config.dev_split is not None:
        return train, part(config.train_file, config.dev_split)
    return carve_dev(train, config)


def carve_dev(train: PairDataset, config: TrainConfig) -> tuple[PairDataset, PairDataset]:
    """Hold out ``config.dev_fraction`` of the pairs by a leakage-free group split."""
    parts = train.group_split({"train": 1.0 - config.dev_fraction, "dev": config.dev_fraction}, seed=config.split_seed)
    return parts["train"], parts["dev"]


def subsample(data: PairDataset, limit: int | None, seed: int) -> PairDataset:
    """At most ``limit`` pairs, drawn with ``seed`` and kept in their original order."""
    if limit is None or len(data) <= limit:
        return data
    rows = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
    return data.select(rows)


def add_hard_negatives(config: TrainConfig, train: PairDataset, dev: PairDataset, encoder: ItemEncoder,
                       run_dir: Path, *, resume: bool = False) -> tuple[PairDataset, dict[str, Any] | None]:
    """``train`` with the config's hard negatives appended as label-0 pairs, and what to record of them.

    The negatives are mined on ``train`` alone with the starting ``encoder`` (no dev text can
    leak in), or loaded from ``hard_negatives.file``, which must come from the same model and
    metric. Rank 0 mines and writes ``RUN_DIR/hard_negatives.tsv``; every rank trains on the
    same pairs. A resumed run reuses the negatives its folder holds.
    """
    block = config.hard_negatives
    if block is None:
        return train, None
    metric = Metric.parse(config.metric)
    saved = run_dir / HARD_NEGATIVES_FILE
    source = "file" if block.get("file") is not None else "mined"
    started = time.perf_counter()
    reused = resume and saved.is_file()
    if reused:  # the negatives the interrupted run trained on
        mined = _load_matching(saved, encoder, metric)
    elif source == "file":
        mined = _load_matching(Path(block["file"]).expanduser(), encoder, metric)
    else:
        mined = mine_train_negatives(config, train, encoder)
    seconds = time.perf_counter() - started
    _refuse_dev_texts((*mined.anchor_texts, *mined.negative_texts), train, dev, "hard_negatives", "mined texts",
                      "mine on the training pairs only")
    try:
        extra = mined.to_pairs()
    except InvalidArgumentError as exc:
        raise TrainingError(f"hard_negatives: {exc}") from None
    if is_main_process() and not reused:
        mined.save(saved)
    logger.info("hard negatives (%s): %d label-0 pairs added to %d train pairs in %.1f s; saved to %s",
                source, len(mined), len(train), seconds, saved)
    record = {"source": source, "count": len(mined), "seconds": round(seconds, 2), "counts": dict(mined.counts)}
    return concat_pairs(train, extra), record


def mine_train_negatives(config: TrainConfig, train: PairDataset, encoder: ItemEncoder) -> MinedNegatives:
    """The config's ``hard_negatives`` mining options run on ``train`` with ``encoder`` as it is now.

    Rank 0 mines and every rank gets its result (the other ranks wait in the broadcast).
    The one place both the first mining and every refresh go through, so they use the same options.
    """
    options = check_hard_negatives(config.hard_negatives, config.metric, config.seed)
    model = SimilarityModel(encoder, Metric.parse(config.metric))
    return broadcast_object(mine_hard_negatives(model, train, batch_size=config.eval_batch_size, **options)
                            if is_main_process() else None)


def concat_pairs(first: PairDataset, second: PairDataset) -> PairDataset:
    """One PairDataset: ``first``'s pairs then ``second``'s (``first``'s report and column types)."""
    import datasets

    head = first.dataset.select_columns(list(COLUMNS))
    tail = second.dataset.select_columns(list(COLUMNS)).cast(head.features)
    return PairDataset(datasets.concatenate_datasets([head, tail]), report=copy.deepcopy(first.report))


def _load_matching(path: Path, encoder: ItemEncoder, metric: Metric) -> MinedNegatives:
    mined = MinedNegatives.load(path)
    if mined.metric != metric.value:
        raise TrainingError(f"hard_negatives.file {path}: mined with the {mined.metric} metric, but this run trains "
                            f"on {metric.value}: mine again with the run's metric")
    fingerprint = encoder.fingerprint()
    if mined.model_fingerprint != fingerprint:
        raise TrainingError(
            f"hard_negatives.file {path}: mined with another model (fingerprint {mined.model_fingerprint}), not the "
            f"model this run starts from ({fingerprint}): mine again with `metric-sim mine` on the starting model, "
            "or use mine: true"
        )
    return mined


def _refuse_dev_texts(texts: Iterable[Any], train: PairDataset, dev: PairDataset, what: str, noun: str,
                      hint: str) -> None:
    """Added pairs are training pairs: a text only the dev split holds would leak dev into training.

    A dev text that the train split holds too is no new leak, so it is allowed.
    """
    train_texts = set(train.texts_a) | set(train.texts_b)
    dev_only = (set(dev.texts_a) | set(dev.texts_b)) - train_texts
    leaked = [text for text in texts if text in dev_only]
    if leaked:
        raise TrainingError(f"{what}: {len(leaked)} {noun} appear in the dev split and not in train "
                            f"(e.g. {leaked[0]!r}): {hint}")


def add_mix_pairs(config: TrainConfig, train: PairDataset,
                  dev: PairDataset) -> tuple[PairDataset, tuple[MixSource, ...]]:
    """``train`` followed by each ``mix_pairs`` set in config order, and where each set's rows are.

    ``train`` (the main data: the train split and any mined negatives) keeps rows
    ``0 .. len(train) - 1``. Nothing to mix: ``train`` itself and no sources.
    """
    if not config.mix_pairs:
        return train, ()
    loaded = [(mix_source_name(entry), float(entry["share"]), load_mix_set(config, entry)) for entry in config.mix_pairs]
    return mix_into(train, dev, loaded)


def load_mix_set(config: TrainConfig, entry: Mapping[str, Any]) -> PairDataset:
    """The pairs of one checked ``mix_pairs`` entry: a preset's split (files under ``data_dir``), or a file read
    with the entry's column options, each defaulting to the config's own (``text_a``, ``text_b``, ``label``, ``items``)."""
    if entry.get("preset") is not None:
        return load_preset(entry["preset"], split=entry["split"], data_dir=config.data_dir)
    columns = {key: entry.get(key, getattr(config, key)) for key in ("text_a", "text_b", "label", "items")}
    return load_pairs(entry["file"], **columns)


def mix_into(train: PairDataset, dev: PairDataset,
             sets: Sequence[tuple[str, float, PairDataset]]) -> tuple[PairDataset, tuple[MixSource, ...]]:
    """``train`` followed by each ``(name, share, pairs)`` set; a set holding a text only the dev split holds is refused.

    Clusters: the prepared pairs apply the one cluster rule (:mod:`metric_sim.clusters`) to all
    rows at once, and that is the right semantics here. A set's ids are prefixed
    (``mix<i>:``), so an id that two sources use for different texts (QQP qids and MRPC
    sentence ids are both small integers) can never join them; clusters then meet only
    through an identical text, which is one item with one embedding and so one cluster
    label. If a mixed positive (X, Y) shares X with a main cluster {X, Z}, keeping the sets'
    clusters apart would need two labels for X, and would make Y and Z in-batch negatives
    of each other while both are positives of X; joining them is the transitive reading
    the rule gives any two positives that share a text. Label-0 pairs join nothing and
    stay negatives whatever their clusters.
    """
    combined, sources, start = train, [], len(train)
    for i, (name, share, data) in enumerate(sets):
        what = f"mix_pairs[{i}] ({name})"
        if len(data) == 0:
            raise TrainingError(f"{what}: the set holds no pairs")
        _refuse_dev_texts(dict.fromkeys([*data.texts_a, *data.texts_b]), train, dev, what, "texts",
                          "mix only pairs that share no text with the dev split (another split or data set)")
        combined = concat_pairs(combined, _namespaced(data, f"mix{i}:"))
        sources.append(MixSource(name, start, len(data), share))
        start += len(data)
    return combined, tuple(sources)


def _namespaced(data: PairDataset, prefix: str) -> PairDataset:
    """``data`` with ``prefix`` before every id and pair id (the texts, labels and order unchanged)."""
    dataset = data.dataset
    for column, values in (("id_a", data.ids_a), ("id_b", data.ids_b), ("pair_id", data.pair_ids)):
        dataset = dataset.remove_columns(column).add_column(column, [f"{prefix}{value}" for value in values])
    return PairDataset(dataset, report=copy.deepcopy(data.report))
