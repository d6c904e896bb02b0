"""metric-sim: similarity learning where raw Euclidean/Manhattan distance is the model.

Public API (recipes and benchmarks import only from here):

>>> from metric_sim import Encoder, SimilarityModel, load_pairs, load_preset, Metric
"""

from __future__ import annotations

from metric_sim.calibration import (
    CalibrationError,
    Calibrator,
    PairEmbeddings,
    SimilarityModel,
    resolve_model_dir,
)
from metric_sim.data import (
    Corpus,
    DataError,
    LoadReport,
    PairDataset,
    UnionFind,
    default_data_dir,
    list_presets,
    load_corpus,
    load_pairs,
    load_preset,
    text_id,
)
from metric_sim.distances import (
    Metric,
    all_pairs_distances_numpy,
    paired_distances_numpy,
    paired_distances_torch,
    pml_distance,
)
from metric_sim.encoder import Encoder, EncoderLoadError, default_model_path
from metric_sim.evaluation import (
    Evaluation,
    calibration_metrics,
    evaluate,
    evaluate_and_report,
    example_pair_lines,
    expected_calibration_error,
    in_sample_thresholds,
    pair_metrics,
    retrieval_metrics,
    symmetry_gap,
    write_report,
)
from metric_sim.index import (
    DedupeResult,
    DuplicatePair,
    IndexConfigError,
    IndexLoadError,
    NeighborIndex,
    SearchResult,
    demo_neighbors,
    format_results,
)

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "Calibrator",
    "Corpus",
    "DataError",
    "DedupeResult",
    "DuplicatePair",
    "Encoder",
    "EncoderLoadError",
    "Evaluation",
    "IndexConfigError",
    "IndexLoadError",
    "LoadReport",
    "Metric",
    "NeighborIndex",
    "PairDataset",
    "PairEmbeddings",
    "SearchResult",
    "SimilarityModel",
    "UnionFind",
    "__version__",
    "all_pairs_distances_numpy",
    "calibration_metrics",
    "default_data_dir",
    "default_model_path",
    "demo_neighbors",
    "demo_pairs_path",
    "evaluate",
    "evaluate_and_report",
    "example_pair_lines",
    "expected_calibration_error",
    "format_results",
    "in_sample_thresholds",
    "list_presets",
    "load_corpus",
    "load_pairs",
    "load_preset",
    "pair_metrics",
    "paired_distances_numpy",
    "paired_distances_torch",
    "pml_distance",
    "resolve_model_dir",
    "retrieval_metrics",
    "symmetry_gap",
    "text_id",
    "write_report",
]


def demo_pairs_path():
    """Path of the bundled illustrative demo set (written for this project)."""
    from pathlib import Path

    return Path(__file__).resolve().parent / "demo_data" / "demo_pairs.tsv"
