"""metric-sim: similarity learning where raw Euclidean/Manhattan distance is the model.

Public API (recipes and benchmarks import only from here):

>>> from metric_sim import Encoder, SimilarityModel, load_pairs, load_preset, Metric
"""

from __future__ import annotations

from metric_sim.calibration import CalibrationError, Calibrator, SimilarityModel
from metric_sim.data import (
    DataError,
    LoadReport,
    PairDataset,
    UnionFind,
    default_data_dir,
    list_presets,
    load_pairs,
    load_preset,
    text_id,
)
from metric_sim.distances import (
    Metric,
    paired_distances_numpy,
    paired_distances_torch,
    pml_distance,
)
from metric_sim.encoder import Encoder, EncoderLoadError, default_model_path

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "Calibrator",
    "DataError",
    "Encoder",
    "EncoderLoadError",
    "LoadReport",
    "Metric",
    "PairDataset",
    "SimilarityModel",
    "UnionFind",
    "__version__",
    "default_data_dir",
    "default_model_path",
    "demo_pairs_path",
    "list_presets",
    "load_pairs",
    "load_preset",
    "paired_distances_numpy",
    "paired_distances_torch",
    "pml_distance",
    "text_id",
]


def demo_pairs_path():
    """Path of the bundled illustrative demo set (written for this project)."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "demo_data" / "demo_pairs.tsv"
