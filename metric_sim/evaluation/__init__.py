"""How good is a distance, and can its probabilities be trusted? Evaluation and the report.

* :mod:`~metric_sim.evaluation.scoring`: :func:`evaluate` scores one model on one split
  (pair decisions at the calibrated ``tau``, calibration, retrieval over the split's
  clusters, symmetry) into an :class:`Evaluation`;
* :mod:`~metric_sim.evaluation.report`: :func:`write_report` turns evaluations (the model
  and a baseline) into ``metrics.json``, ``report.md`` and PNG figures
  (:mod:`~metric_sim.evaluation.figures`); :func:`evaluate_and_report` does both;
* :mod:`~metric_sim.evaluation.examples`: :func:`example_pair_lines`, printable pairs in both orders.

The metric functions themselves live in :mod:`metric_sim.metrics` and are re-exported
here, where they were defined before.
"""

from __future__ import annotations

from metric_sim.evaluation.examples import example_pair_lines
from metric_sim.evaluation.figures import FIGURES
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
    "calibration_metrics",
    "describe_split",
    "evaluate",
    "evaluate_and_report",
    "example_pair_lines",
    "expected_calibration_error",
    "in_sample_thresholds",
    "pair_metrics",
    "reliability_bins",
    "retrieval_metrics",
    "symmetry_gap",
    "write_report",
]
