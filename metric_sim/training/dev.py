"""The dev check during training: ranking figures of the dev pairs, each unique dev item embedded once."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.calibration import DEFAULT_FEATURE, Calibrator
from metric_sim.data import PairDataset
from metric_sim.distances import Metric, paired_distances_numpy
from metric_sim.encoders.base import ItemEncoder
from metric_sim.errors import CalibrationError
from metric_sim.metrics import ranking_metrics
from metric_sim.training.batches import prepare_pairs

__all__ = ["DevEvaluator", "calibrated_metrics"]


class DevEvaluator:
    """Dev AP (and the figures of :func:`metric_sim.metrics.ranking_metrics`) for the configured metric.

    The model is an :class:`~metric_sim.encoders.base.ItemEncoder` (it encodes the dev
    items), or in frozen mode the projection head, applied to the cached base embeddings
    in :attr:`base`.
    """

    def __init__(self, dev: PairDataset, metric: Metric, batch_size: int) -> None:
        prepared = prepare_pairs(dev)
        self.items = prepared.items
        self.tid_a, self.tid_b, self.labels = prepared.tid_a, prepared.tid_b, prepared.labels
        self.metric = metric
        self.batch_size = batch_size
        self.base: torch.Tensor | None = None  # frozen mode: cached base embeddings
        self.history: dict[int, np.ndarray] = {}  # step -> dev distances, to calibrate without re-encoding

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        return paired_distances_numpy(embeddings[self.tid_a], embeddings[self.tid_b], self.metric)

    def embed(self, model: nn.Module) -> np.ndarray:
        if isinstance(model, ItemEncoder):
            return model.encode(self.items, batch_size=self.batch_size)
        assert self.base is not None, "frozen mode caches the base dev embeddings first"
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                device = next(model.parameters()).device
                return model(embeddings=self.base.to(device)).float().cpu().numpy()
        finally:
            model.train(was_training)

    def __call__(self, model: nn.Module, step: int | None = None) -> dict[str, float]:
        distances = self.distances(self.embed(model))
        if step is not None:
            self.history[step] = distances
        return ranking_metrics(distances, self.labels)

    def distances_in_input_order(self, step: int) -> np.ndarray | None:
        """Dev distances measured at ``step`` (pairs in dev order), if that step was evaluated in this process."""
        return self.history.get(step)


def calibrated_metrics(distances: np.ndarray, labels: np.ndarray, calibrator: Calibrator) -> dict[str, float]:
    """Threshold, accuracy and F1 of the calibrator's decisions on the pairs it was fitted on."""
    from sklearn.metrics import accuracy_score, f1_score

    predicted = calibrator.predict(distances)
    return {
        "threshold": float(calibrator.threshold),
        # In-sample: the calibrator was fitted on these pairs. Score held-out splits with `evaluate`.
        "accuracy_at_threshold": float(accuracy_score(labels, predicted)),
        "f1_at_threshold": float(f1_score(labels, predicted, zero_division=0)),
    }


def calibrate_on_dev(model: Any, distances: np.ndarray, labels: np.ndarray, *, role: str = "model",
                     feature: str = DEFAULT_FEATURE) -> dict[str, Any]:
    """Fit ``model.calibrator`` on the dev distances and return its in-sample figures.

    A calibration that cannot be fitted leaves the model uncalibrated with a warning naming
    ``role``: the trained weights are still a result worth inspecting.
    """
    try:
        model.calibrator = Calibrator.fit(distances, labels, model.metric, fitted_on="dev", feature=feature)
    except CalibrationError as exc:
        logging.getLogger("metric_sim.training.run").warning("the %s is saved without a calibrator: %s", role, exc)
        return {"calibration_error": str(exc)}
    return calibrated_metrics(distances, labels, model.calibrator)
