"""Which model an index belongs to: checking a model against it and finding the recorded one again.

An index records the fingerprint of the encoder that embedded its vectors
(``ItemEncoder.fingerprint``) and, when it can, where that model lives (``model_path``).
A model with another fingerprint, metric or dimension would embed queries into another
space and find wrong neighbours, so it is refused with an :class:`IndexLoadError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from metric_sim.calibration import Calibrator
from metric_sim.distances import Metric
from metric_sim.errors import IndexLoadError, InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.layout import DEFAULT_MODEL, METADATA_FILE
from metric_sim.model import SimilarityModel

__all__ = [
    "check_fingerprint",
    "check_model",
    "load_recorded_model",
    "model_location",
    "preferred_calibrator",
    "recorded_model_label",
    "require_model",
]

logger = logging.getLogger(__name__)


def model_location(model: SimilarityModel) -> str | None:
    """Where ``load`` can find the model again: an absolute folder, ``"default"``, or None."""
    source = getattr(model.encoder, "source", None)
    if not source:
        return None
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return str(source) if str(source) == DEFAULT_MODEL else None


def check_model(model: SimilarityModel, metric: Metric, dim: int, *, where: str) -> None:
    """Refuse a model whose metric or embedding dimension is not the index's."""
    if not isinstance(model, SimilarityModel):
        raise InvalidArgumentTypeError(f"{where} must be a SimilarityModel, got {type(model).__name__}")
    if model.metric is not metric:
        raise IndexLoadError(
            f"{where} uses metric {model.metric.value!r}, but the index uses {metric.value!r}"
        )
    if model.encoder.embedding_dim != dim:
        raise IndexLoadError(
            f"{where} embeds into dimension {model.encoder.embedding_dim}, but the index holds dimension {dim}"
        )


def check_fingerprint(model: SimilarityModel, recorded: str | None, *, where: str) -> None:
    """Refuse a model whose encoder is not the one that embedded the stored vectors.

    An index saved without a fingerprint (built from vectors, with no model) cannot tell
    which encoder made them, so no model is accepted for it: a wrong one would go unnoticed.
    """
    if not isinstance(recorded, str) or not recorded:
        raise IndexLoadError(
            f"{METADATA_FILE} records no encoder_fingerprint (got {recorded!r}): the index was saved without a "
            f"model, so nothing shows that {where} is the encoder that embedded its vectors. Load it without a "
            "model (NeighborIndex.load(folder, load_model=False)) and query with search_embeddings, or rebuild "
            "it with this model (NeighborIndex.build, or from_embeddings(..., model=model))"
        )
    fingerprint = model.encoder.fingerprint()
    if fingerprint != recorded:
        raise IndexLoadError(
            f"{where} is a different encoder from the one that built this index (fingerprint {fingerprint[:12]}... "
            f"vs {recorded[:12]}... recorded in {METADATA_FILE}): its query vectors would find wrong neighbours. "
            "Rebuild the index with this model, or load the original model"
        )


def require_model(model: SimilarityModel | None, fingerprint: str | None) -> SimilarityModel:
    """``model``, or an error saying why item queries need one (vector queries do not)."""
    if model is None:
        raise InvalidArgumentError(
            "this index has no model, so it cannot embed text queries: pass model= to NeighborIndex.load "
            f"(the index was built with encoder fingerprint {str(fingerprint)[:12]}...), "
            "or query with search_embeddings / range_search_embeddings"
        )
    return model


def load_recorded_model(model_path: str) -> SimilarityModel | None:
    """The model recorded at build time, or None (with a warning) when its folder is gone."""
    if model_path != DEFAULT_MODEL and not Path(model_path).is_dir():
        logger.warning(
            "the model this index was built with (%s) is gone; text queries need model=",
            model_path,
        )
        return None
    return SimilarityModel.from_pretrained(model_path)


def recorded_model_label(model_path: str) -> str:
    """How messages name the recorded model."""
    return f"the model recorded in {METADATA_FILE} ({model_path})"


def preferred_calibrator(model_calibrator: Calibrator | None, saved: Calibrator | None) -> Calibrator | None:
    """The model's calibrator wins over the one saved with the index (it may be newer)."""
    if model_calibrator is None:
        return saved
    if saved is not None and model_calibrator.to_dict() != saved.to_dict():
        logger.info(
            "using the model's calibrator (threshold %.4g) instead of the one saved with the index (%.4g)",
            model_calibrator.threshold,
            saved.threshold,
        )
    return model_calibrator
