"""Fine-tuning any :class:`~metric_sim.encoders.base.TrainableEncoder` on labelled pairs with ``transformers.Trainer``.

One responsibility per module:

* :mod:`.config` - :class:`TrainConfig`, recipe YAML, ``--set`` overrides (no torch);
* :mod:`.data` - the train/dev pairs a config names (dev carved, subsampling);
* :mod:`.batches` - pairs as unique-item ids (:func:`prepare_pairs`), :class:`PairCollator`;
* :mod:`.samplers` - random, length-grouped and cluster-aware pair orders;
* :mod:`.dev` - the dev evaluator (figures from :mod:`metric_sim.metrics`);
* :mod:`.frozen` - frozen-encoder mode: projection head on cached base embeddings;
* :mod:`.guards` - batches without a usable tuple, margins on the wrong scale;
* :mod:`.trainer` - :class:`MetricTrainer` (loss, dev AP, samplers) and its callbacks;
* :mod:`.resume` - new run folder or resumed one, checkpoints;
* :mod:`.regularizers` - L2-SP toward the starting weights, frozen lower layers;
* :mod:`.mix_config`, :mod:`.mixing` - other pair sets mixed into every batch;
* :mod:`.refresh` - hard negatives re-mined during training;
* :mod:`.interpolate_config`, :mod:`.interpolate_step` - WiSE-FT toward the start at the end of a run;
* :mod:`.run` - :func:`train`, the run folder and :class:`TrainResult`;
* :mod:`.demo` - :func:`fine_tune_demo`.

Under ``torchrun`` (one process per GPU, or several CPU processes with gloo) the
Trainer's own DDP runs the model; accelerate gives each rank every ``world_size``-th
batch of ``batch_size`` pairs from the same seeded sampler, so one step covers the
``world_size * batch_size`` pairs a single process would take with that batch size.
:class:`metric_sim.losses.CrossRankLoss` rebuilds that union for the loss and scales
the gradient so DDP's average equals the single-process gradient.

``from metric_sim.training import TrainConfig`` loads only :mod:`.config`; the other
names (which need torch and transformers) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metric_sim.errors import TrainingError
from metric_sim.layout import CHECKPOINT_DIR, METRICS_FILE, MODEL_DIR, TRAIN_CONFIG_FILE
from metric_sim.lazy import lazy_attributes
from metric_sim.training.config import (
    LR_SCHEDULERS,
    SAMPLERS,
    TrainConfig,
    merge_overrides,
    parse_overrides,
)

if TYPE_CHECKING:
    from metric_sim.metrics import ranking_metrics
    from metric_sim.training.batches import PairCollator, PreparedPairs, prepare_pairs
    from metric_sim.training.data import load_training_data
    from metric_sim.training.demo import DemoResult, fine_tune_demo
    from metric_sim.training.frozen import ProjectionHead
    from metric_sim.training.run import TrainResult, train
    from metric_sim.training.samplers import (
        ClusterPairSampler,
        LengthGroupedPairSampler,
        RandomPairSampler,
    )
    from metric_sim.training.trainer import MetricTrainer

# The old module's name for the run folder's config file (metric_sim.layout.CONFIG_FILE is the model's).
CONFIG_FILE = TRAIN_CONFIG_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "LR_SCHEDULERS",
    "METRICS_FILE",
    "MODEL_DIR",
    "SAMPLERS",
    "ClusterPairSampler",
    "DemoResult",
    "LengthGroupedPairSampler",
    "MetricTrainer",
    "PairCollator",
    "PreparedPairs",
    "ProjectionHead",
    "RandomPairSampler",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "fine_tune_demo",
    "load_training_data",
    "merge_overrides",
    "parse_overrides",
    "prepare_pairs",
    "ranking_metrics",
    "train",
]

# name -> defining module, imported on first use (they load torch and transformers)
_LAZY = {
    "PairCollator": "metric_sim.training.batches",
    "PreparedPairs": "metric_sim.training.batches",
    "prepare_pairs": "metric_sim.training.batches",
    "load_training_data": "metric_sim.training.data",
    "DemoResult": "metric_sim.training.demo",
    "fine_tune_demo": "metric_sim.training.demo",
    "ProjectionHead": "metric_sim.training.frozen",
    "TrainResult": "metric_sim.training.run",
    "train": "metric_sim.training.run",
    "ClusterPairSampler": "metric_sim.training.samplers",
    "LengthGroupedPairSampler": "metric_sim.training.samplers",
    "RandomPairSampler": "metric_sim.training.samplers",
    "MetricTrainer": "metric_sim.training.trainer",
    "ranking_metrics": "metric_sim.metrics",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
