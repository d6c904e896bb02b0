"""The train and dev pairs a :class:`~metric_sim.training.config.TrainConfig` names."""

from __future__ import annotations

import numpy as np

from metric_sim.data import PairDataset, load_pairs, load_preset
from metric_sim.errors import TrainingError
from metric_sim.training.config import TrainConfig

__all__ = ["carve_dev", "load_training_data", "subsample"]


def load_training_data(config: TrainConfig) -> tuple[PairDataset, PairDataset]:
    """The train and dev :class:`PairDataset` a config names (dev carved from train when absent)."""
    if config.preset is not None:
        train, dev = _preset_splits(config)
    else:
        columns = {"text_a": config.text_a, "text_b": config.text_b, "label": config.label}
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
