"""How good is a distance, and can its probabilities be trusted? Evaluation and the report.

* :mod:`~metric_sim.evaluation.scoring`: :func:`evaluate` scores one model on one split
  (pair decisions at the calibrated ``tau``, calibration, retrieval over the split's
  clusters, symmetry) into an :class:`Evaluation`;
* :mod:`~metric_sim.evaluation.report`: :func:`write_report` turns evaluations (the model
  and a baseline) into ``metrics.json``, ``report.md`` and PNG figures
  (:mod:`~metric_sim.evaluation.figures`); :func:`evaluate_and_report` does both;
* :mod:`~metric_sim.evaluation.out_of_domain`: :func:`out_of_domain_report`, forgetting: the
  fine-tuned model against its zero-shot base on other data sets (AP, ROC-AUC, ECE, deltas);
* :mod:`~metric_sim.evaluation.examples`: :func:`example_pair_lines`, printable pairs in both orders;
* :mod:`~metric_sim.evaluation.oneshot`: :func:`one_shot_accuracy`, N-way one-shot
  classification on unseen classes (Lake's protocol), with a Wilson interval;
* :mod:`~metric_sim.evaluation.catalogue`: :func:`catalogue_retrieval`, queries ranking a
  separate gallery (a shopper's photo against the catalogue): Recall@k, MRR, ranks;
* :mod:`~metric_sim.evaluation.image_grid`: :func:`plot_neighbour_grid`, a PNG of queries
  and their nearest items marked right or wrong.

The metric functions themselves live in :mod:`metric_sim.metrics` and are re-exported
here, where they were defined before.
"""

from __future__ import annotations

from metric_sim.evaluation.catalogue import catalogue_retrieval
from metric_sim.evaluation.examples import example_pair_lines
from metric_sim.evaluation.figures import FIGURES
from metric_sim.evaluation.image_grid import plot_neighbour_grid
from metric_sim.evaluation.oneshot import (
    OneShotTasks,
    one_shot_accuracies,
    one_shot_accuracy,
    sample_one_shot_tasks,
    wilson_interval,
)
from metric_sim.evaluation.out_of_domain import load_base_model, out_of_domain_report
from metric_sim.evaluation.report import SCHEMA_VERSION, evaluate_and_report, write_report
from metric_sim.evaluation.scoring import Evaluation, describe_split, evaluate
from metric_sim.metrics import (
    ECE_BINS,
    MRR_K,
    RETRIEVAL_KS,
    calibration_metrics,
    expected_calibration_error,
    in_sample_thresholds,
    pair_metrics,
    reliability_bins,
    retrieval_metrics,
    symmetry_gap,
)

__all__ = [
    "ECE_BINS",
    "FIGURES",
    "MRR_K",
    "RETRIEVAL_KS",
    "SCHEMA_VERSION",
    "Evaluation",
    "OneShotTasks",
    "calibration_metrics",
    "catalogue_retrieval",
    "describe_split",
    "evaluate",
    "evaluate_and_report",
    "example_pair_lines",
    "expected_calibration_error",
    "in_sample_thresholds",
    "load_base_model",
    "one_shot_accuracies",
    "one_shot_accuracy",
    "out_of_domain_report",
    "pair_metrics",
    "plot_neighbour_grid",
    "reliability_bins",
    "retrieval_metrics",
    "sample_one_shot_tasks",
    "symmetry_gap",
    "wilson_interval",
    "write_report",
]
