"""metric-sim: similarity learning where raw Euclidean/Manhattan distance is the model.

Public API (recipes and benchmarks import only from here):

>>> from metric_sim import Encoder, SimilarityModel, load_pairs, load_preset, Metric

Names are imported on first use (PEP 562), so ``import metric_sim`` stays light and
the ONNX Runtime path (``SimilarityModel.from_pretrained(dir, backend="onnx")``,
``OnnxEncoder``) runs on a machine without torch.
"""

from __future__ import annotations

import os as _os

# On shared cores, OpenMP threads that spin while waiting slow training by up to 20x;
# passive waiting costs nothing on an idle machine. Must be set before torch loads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CalibrationError": "metric_sim.calibration",
    "Calibrator": "metric_sim.calibration",
    "PairEmbeddings": "metric_sim.calibration",
    "SimilarityModel": "metric_sim.calibration",
    "resolve_model_dir": "metric_sim.calibration",
    "Corpus": "metric_sim.data",
    "DataError": "metric_sim.data",
    "LoadReport": "metric_sim.data",
    "PairDataset": "metric_sim.data",
    "UnionFind": "metric_sim.data",
    "default_data_dir": "metric_sim.data",
    "list_presets": "metric_sim.data",
    "load_corpus": "metric_sim.data",
    "load_pairs": "metric_sim.data",
    "load_preset": "metric_sim.data",
    "text_id": "metric_sim.data",
    "Metric": "metric_sim.distances",
    "all_pairs_distances_numpy": "metric_sim.distances",
    "paired_distances_numpy": "metric_sim.distances",
    "paired_distances_torch": "metric_sim.distances",
    "pml_distance": "metric_sim.distances",
    "Encoder": "metric_sim.encoder",
    "EncoderLoadError": "metric_sim.encoder",
    "default_model_path": "metric_sim.encoder",
    "Evaluation": "metric_sim.evaluation",
    "calibration_metrics": "metric_sim.evaluation",
    "evaluate": "metric_sim.evaluation",
    "evaluate_and_report": "metric_sim.evaluation",
    "example_pair_lines": "metric_sim.evaluation",
    "expected_calibration_error": "metric_sim.evaluation",
    "in_sample_thresholds": "metric_sim.evaluation",
    "pair_metrics": "metric_sim.evaluation",
    "retrieval_metrics": "metric_sim.evaluation",
    "symmetry_gap": "metric_sim.evaluation",
    "write_report": "metric_sim.evaluation",
    "ExportError": "metric_sim.export",
    "export_model": "metric_sim.export",
    "DedupeResult": "metric_sim.index",
    "DuplicatePair": "metric_sim.index",
    "IndexConfigError": "metric_sim.index",
    "IndexLoadError": "metric_sim.index",
    "NeighborIndex": "metric_sim.index",
    "SearchResult": "metric_sim.index",
    "demo_neighbors": "metric_sim.index",
    "format_results": "metric_sim.index",
    "CrossRankLoss": "metric_sim.losses",
    "LossResult": "metric_sim.losses",
    "MetricLoss": "metric_sim.losses",
    "build_loss": "metric_sim.losses",
    "default_loss_params": "metric_sim.losses",
    "list_losses": "metric_sim.losses",
    "OnnxEncoder": "metric_sim.onnx_backend",
    "OnnxModelError": "metric_sim.onnx_backend",
    "ShardError": "metric_sim.sharded",
    "ShardedBuild": "metric_sim.sharded",
    "ShardedEncoding": "metric_sim.sharded",
    "build_index_sharded": "metric_sim.sharded",
    "encode_sharded": "metric_sim.sharded",
    "DemoResult": "metric_sim.training",
    "TrainConfig": "metric_sim.training",
    "TrainResult": "metric_sim.training",
    "TrainingError": "metric_sim.training",
    "fine_tune_demo": "metric_sim.training",
    "train": "metric_sim.training",
}

__all__ = [
    "CalibrationError",
    "Calibrator",
    "Corpus",
    "CrossRankLoss",
    "DataError",
    "DedupeResult",
    "DemoResult",
    "DuplicatePair",
    "Encoder",
    "EncoderLoadError",
    "Evaluation",
    "ExportError",
    "IndexConfigError",
    "IndexLoadError",
    "LoadReport",
    "LossResult",
    "Metric",
    "MetricLoss",
    "NeighborIndex",
    "OnnxEncoder",
    "OnnxModelError",
    "PairDataset",
    "PairEmbeddings",
    "SearchResult",
    "ShardError",
    "ShardedBuild",
    "ShardedEncoding",
    "SimilarityModel",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "UnionFind",
    "__version__",
    "all_pairs_distances_numpy",
    "build_index_sharded",
    "build_loss",
    "calibration_metrics",
    "default_data_dir",
    "default_loss_params",
    "default_model_path",
    "demo_neighbors",
    "demo_pairs_path",
    "encode_sharded",
    "evaluate",
    "evaluate_and_report",
    "example_pair_lines",
    "expected_calibration_error",
    "export_model",
    "fine_tune_demo",
    "format_results",
    "in_sample_thresholds",
    "list_losses",
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
    "train",
    "write_report",
]

if TYPE_CHECKING:
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
    from metric_sim.encoder import (
        Encoder,
        EncoderLoadError,
        default_model_path,
    )
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
    from metric_sim.export import (
        ExportError,
        export_model,
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
    from metric_sim.losses import (
        CrossRankLoss,
        LossResult,
        MetricLoss,
        build_loss,
        default_loss_params,
        list_losses,
    )
    from metric_sim.onnx_backend import (
        OnnxEncoder,
        OnnxModelError,
    )
    from metric_sim.sharded import (
        ShardedBuild,
        ShardedEncoding,
        ShardError,
        build_index_sharded,
        encode_sharded,
    )
    from metric_sim.training import (
        DemoResult,
        TrainConfig,
        TrainingError,
        TrainResult,
        fine_tune_demo,
        train,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metric_sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def demo_pairs_path() -> Path:
    """Path of the bundled illustrative demo set (written for this project)."""
    return Path(__file__).resolve().parent / "demo_data" / "demo_pairs.tsv"
