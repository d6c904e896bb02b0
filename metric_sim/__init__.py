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

from typing import TYPE_CHECKING

from metric_sim.lazy import lazy_attributes
from metric_sim.version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Calibrator": "metric_sim.calibration",
    "UnionFind": "metric_sim.clusters",
    "Corpus": "metric_sim.data.corpus",
    "load_corpus": "metric_sim.data.corpus",
    "load_pairs": "metric_sim.data.loader",
    "PairDataset": "metric_sim.data.pairs",
    "default_data_dir": "metric_sim.data.presets",
    "list_presets": "metric_sim.data.presets",
    "load_preset": "metric_sim.data.presets",
    "LoadReport": "metric_sim.data.report",
    "Metric": "metric_sim.distances",
    "all_pairs_distances_numpy": "metric_sim.distances",
    "paired_distances_numpy": "metric_sim.distances",
    "paired_distances_torch": "metric_sim.distances",
    "pml_distance": "metric_sim.distances",
    "ItemEncoder": "metric_sim.encoders.base",
    "TrainableEncoder": "metric_sim.encoders.base",
    "OnnxEncoder": "metric_sim.encoders.onnx",
    "list_encoders": "metric_sim.encoders.registry",
    "load_encoder": "metric_sim.encoders.registry",
    "register_encoder": "metric_sim.encoders.registry",
    "Encoder": "metric_sim.encoders.text",
    "CalibrationError": "metric_sim.errors",
    "ConfigError": "metric_sim.errors",
    "DataError": "metric_sim.errors",
    "EncoderLoadError": "metric_sim.errors",
    "ExportError": "metric_sim.errors",
    "IndexConfigError": "metric_sim.errors",
    "IndexLoadError": "metric_sim.errors",
    "InvalidArgumentError": "metric_sim.errors",
    "InvalidArgumentTypeError": "metric_sim.errors",
    "MetricSimError": "metric_sim.errors",
    "MissingFileError": "metric_sim.errors",
    "OnnxModelError": "metric_sim.errors",
    "ShardError": "metric_sim.errors",
    "TargetExistsError": "metric_sim.errors",
    "TrainingError": "metric_sim.errors",
    "UsageError": "metric_sim.errors",
    "Evaluation": "metric_sim.evaluation",
    "evaluate": "metric_sim.evaluation",
    "evaluate_and_report": "metric_sim.evaluation",
    "example_pair_lines": "metric_sim.evaluation",
    "write_report": "metric_sim.evaluation",
    "export_model": "metric_sim.export",
    "DedupeResult": "metric_sim.index",
    "DuplicatePair": "metric_sim.index",
    "NeighborIndex": "metric_sim.index",
    "SearchResult": "metric_sim.index",
    "demo_neighbors": "metric_sim.index",
    "format_results": "metric_sim.index",
    "ShardedBuild": "metric_sim.index.sharded",
    "ShardedEncoding": "metric_sim.index.sharded",
    "build_index_sharded": "metric_sim.index.sharded",
    "encode_sharded": "metric_sim.index.sharded",
    "describe_item": "metric_sim.items",
    "item_id": "metric_sim.items",
    "text_id": "metric_sim.items",
    "default_model_path": "metric_sim.layout",
    "demo_pairs_path": "metric_sim.layout",
    "resolve_model_dir": "metric_sim.layout",
    "resolve_model_source": "metric_sim.layout",
    "CrossRankLoss": "metric_sim.losses.cross_rank",
    "LossResult": "metric_sim.losses.loss",
    "MetricLoss": "metric_sim.losses.loss",
    "build_loss": "metric_sim.losses.loss",
    "default_loss_params": "metric_sim.losses.registry",
    "list_losses": "metric_sim.losses.registry",
    "calibration_metrics": "metric_sim.metrics",
    "ece_sampling_floor": "metric_sim.metrics",
    "expected_calibration_error": "metric_sim.metrics",
    "in_sample_thresholds": "metric_sim.metrics",
    "pair_metrics": "metric_sim.metrics",
    "retrieval_metrics": "metric_sim.metrics",
    "symmetry_gap": "metric_sim.metrics",
    "interpolate_model": "metric_sim.interpolation",
    "interpolate_weights": "metric_sim.interpolation",
    "MinedNegatives": "metric_sim.mining",
    "mine_hard_negatives": "metric_sim.mining",
    "PairEmbeddings": "metric_sim.model",
    "SimilarityModel": "metric_sim.model",
    "pair_set_distances": "metric_sim.model",
    "TrainConfig": "metric_sim.training.config",
    "DemoResult": "metric_sim.training.demo",
    "fine_tune_demo": "metric_sim.training.demo",
    "TrainResult": "metric_sim.training.run",
    "train": "metric_sim.training.run",
    "LabelledItems": "metric_sim.data.collections",
    "read_image_folder": "metric_sim.data.collections",
    "read_image_list": "metric_sim.data.collections",
    "read_image_zip": "metric_sim.data.collections",
    "ImageEncoder": "metric_sim.encoders.image",
    "image_encoder_from_name": "metric_sim.encoders.image",
    "ProductEncoder": "metric_sim.encoders.multimodal",
    "product_encoder_from_names": "metric_sim.encoders.multimodal",
    "encoder_from_start": "metric_sim.encoders.starting",
    "catalogue_retrieval": "metric_sim.evaluation.catalogue",
    "plot_neighbour_grid": "metric_sim.evaluation.image_grid",
    "one_shot_accuracies": "metric_sim.evaluation.oneshot",
    "one_shot_accuracy": "metric_sim.evaluation.oneshot",
    "image_id": "metric_sim.images",
    "open_image": "metric_sim.images",
}

__all__ = [
    "LabelledItems",
    "read_image_folder",
    "read_image_list",
    "read_image_zip",
    "ImageEncoder",
    "image_encoder_from_name",
    "ProductEncoder",
    "product_encoder_from_names",
    "encoder_from_start",
    "catalogue_retrieval",
    "plot_neighbour_grid",
    "one_shot_accuracies",
    "one_shot_accuracy",
    "image_id",
    "open_image",
    "CalibrationError",
    "Calibrator",
    "ConfigError",
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
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "ItemEncoder",
    "LoadReport",
    "LossResult",
    "Metric",
    "MetricLoss",
    "MetricSimError",
    "MinedNegatives",
    "MissingFileError",
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
    "TargetExistsError",
    "TrainConfig",
    "TrainResult",
    "TrainableEncoder",
    "TrainingError",
    "UnionFind",
    "UsageError",
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
    "describe_item",
    "ece_sampling_floor",
    "encode_sharded",
    "evaluate",
    "evaluate_and_report",
    "example_pair_lines",
    "expected_calibration_error",
    "export_model",
    "fine_tune_demo",
    "format_results",
    "in_sample_thresholds",
    "interpolate_model",
    "interpolate_weights",
    "item_id",
    "list_encoders",
    "list_losses",
    "list_presets",
    "load_corpus",
    "load_encoder",
    "load_pairs",
    "load_preset",
    "mine_hard_negatives",
    "pair_metrics",
    "pair_set_distances",
    "paired_distances_numpy",
    "paired_distances_torch",
    "pml_distance",
    "register_encoder",
    "resolve_model_dir",
    "resolve_model_source",
    "retrieval_metrics",
    "symmetry_gap",
    "text_id",
    "train",
    "write_report",
]

if TYPE_CHECKING:
    from metric_sim.calibration import (
        Calibrator,
    )
    from metric_sim.clusters import (
        UnionFind,
    )
    from metric_sim.data.collections import (
        LabelledItems,
        read_image_folder,
        read_image_list,
        read_image_zip,
    )
    from metric_sim.data.corpus import (
        Corpus,
        load_corpus,
    )
    from metric_sim.data.loader import (
        load_pairs,
    )
    from metric_sim.data.pairs import (
        PairDataset,
    )
    from metric_sim.data.presets import (
        default_data_dir,
        list_presets,
        load_preset,
    )
    from metric_sim.data.report import (
        LoadReport,
    )
    from metric_sim.distances import (
        Metric,
        all_pairs_distances_numpy,
        paired_distances_numpy,
        paired_distances_torch,
        pml_distance,
    )
    from metric_sim.encoders.base import (
        ItemEncoder,
        TrainableEncoder,
    )
    from metric_sim.encoders.image import (
        ImageEncoder,
        image_encoder_from_name,
    )
    from metric_sim.encoders.multimodal import (
        ProductEncoder,
        product_encoder_from_names,
    )
    from metric_sim.encoders.onnx import (
        OnnxEncoder,
    )
    from metric_sim.encoders.registry import (
        list_encoders,
        load_encoder,
        register_encoder,
    )
    from metric_sim.encoders.starting import (
        encoder_from_start,
    )
    from metric_sim.encoders.text import (
        Encoder,
    )
    from metric_sim.errors import (
        CalibrationError,
        ConfigError,
        DataError,
        EncoderLoadError,
        ExportError,
        IndexConfigError,
        IndexLoadError,
        InvalidArgumentError,
        InvalidArgumentTypeError,
        MetricSimError,
        MissingFileError,
        OnnxModelError,
        ShardError,
        TargetExistsError,
        TrainingError,
        UsageError,
    )
    from metric_sim.evaluation import (
        Evaluation,
        evaluate,
        evaluate_and_report,
        example_pair_lines,
        write_report,
    )
    from metric_sim.evaluation.catalogue import (
        catalogue_retrieval,
    )
    from metric_sim.evaluation.image_grid import (
        plot_neighbour_grid,
    )
    from metric_sim.evaluation.oneshot import (
        one_shot_accuracies,
        one_shot_accuracy,
    )
    from metric_sim.export import (
        export_model,
    )
    from metric_sim.images import (
        image_id,
        open_image,
    )
    from metric_sim.index import (
        DedupeResult,
        DuplicatePair,
        NeighborIndex,
        SearchResult,
        demo_neighbors,
        format_results,
    )
    from metric_sim.index.sharded import (
        ShardedBuild,
        ShardedEncoding,
        build_index_sharded,
        encode_sharded,
    )
    from metric_sim.interpolation import (
        interpolate_model,
        interpolate_weights,
    )
    from metric_sim.items import (
        describe_item,
        item_id,
        text_id,
    )
    from metric_sim.layout import (
        default_model_path,
        demo_pairs_path,
        resolve_model_dir,
        resolve_model_source,
    )
    from metric_sim.losses.cross_rank import (
        CrossRankLoss,
    )
    from metric_sim.losses.loss import (
        LossResult,
        MetricLoss,
        build_loss,
    )
    from metric_sim.losses.registry import (
        default_loss_params,
        list_losses,
    )
    from metric_sim.metrics import (
        calibration_metrics,
        ece_sampling_floor,
        expected_calibration_error,
        in_sample_thresholds,
        pair_metrics,
        retrieval_metrics,
        symmetry_gap,
    )
    from metric_sim.mining import (
        MinedNegatives,
        mine_hard_negatives,
    )
    from metric_sim.model import (
        PairEmbeddings,
        SimilarityModel,
        pair_set_distances,
    )
    from metric_sim.training.config import (
        TrainConfig,
    )
    from metric_sim.training.demo import (
        DemoResult,
        fine_tune_demo,
    )
    from metric_sim.training.run import (
        TrainResult,
        train,
    )


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())

