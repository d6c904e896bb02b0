"""``export_model``: write the whole export folder under a temporary name and rename it into place at the end."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from pathlib import Path
from typing import Any

from metric_sim.encoders.image import ImageEncoder
from metric_sim.encoders.multimodal import ProductEncoder
from metric_sim.encoders.text import Encoder
from metric_sim.errors import ExportError
from metric_sim.export.card import render_model_card, usage_snippets
from metric_sim.export.image import write_image_export
from metric_sim.export.onnx import DEFAULT_OPSET, QUANTIZE_MODES, check_opset, write_onnx
from metric_sim.export.sentence_transformers import write_sentence_transformers_layout
from metric_sim.export.source import (
    ExportSource,
    library_versions,
    not_exportable,
    resolve_source,
    train_config_digest,
)
from metric_sim.layout import CONFIG_FILE, MODEL_CARD_FILE
from metric_sim.model import SimilarityModel
from metric_sim.storage import atomic_dir, read_json, write_json_atomic

logger = logging.getLogger(__name__)

def _check_destination(out: Path, source: ExportSource, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a file; expected a folder to create")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {str(out)!r} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    for src in filter(None, (source.model_dir, source.run_dir)):
        if out == src or src in out.parents or out in src.parents:
            raise ExportError(f"--out {str(out)!r} must not be inside or contain the source {str(src)!r}")


def _exportable_encoder(model: SimilarityModel, source: ExportSource) -> Encoder | ImageEncoder | ProductEncoder:
    """The model's encoder if it is a transformers text, an image or a product encoder (the kinds written here)."""
    encoder = model.encoder
    if not isinstance(encoder, (Encoder, ImageEncoder, ProductEncoder)):
        raise not_exportable(source.model_dir, getattr(encoder, "kind", None) or type(encoder).__name__)
    return encoder


def _write_text_export(staging: Path, model: SimilarityModel, encoder: Encoder, source: ExportSource,
                       meta: dict[str, Any], *, name: str, onnx: bool, opset: int, quantize: str | None) -> None:
    """Fill ``staging`` for a transformers text encoder: weights, tokenizer, sentence-transformers layout, ONNX, card."""
    logger.info("export: writing weights, tokenizer and %s", CONFIG_FILE)
    model.save(staging, extra=meta)
    modules = write_sentence_transformers_layout(encoder, model.metric, staging)
    meta["export"]["sentence_transformers_modules"] = modules
    if onnx:
        meta["export"]["onnx"] = write_onnx(encoder, staging, opset=opset, quantize=quantize)
    config = read_json(staging / CONFIG_FILE)
    config.update(meta)
    write_json_atomic(staging / CONFIG_FILE, config)
    dense = next((m for m in modules if m.endswith("_Dense")), None)
    snippets = usage_snippets(encoder, model.metric, name, has_onnx=onnx, dense_dir=dense)
    card = render_model_card(source, model, name=name, meta=meta, snippets=snippets)
    (staging / MODEL_CARD_FILE).write_text(card, encoding="utf-8")


def export_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    onnx: bool = False,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Export a run (or a model folder, or ``"default"``) as a self-describing folder; returns its path.

    ``quantize="int8"`` implies ``onnx=True`` (text encoders only). Raises ``ExportError`` on
    bad arguments, for an encoder that is not a transformers text, image or product encoder,
    or when the ONNX graph does not reproduce PyTorch within the tolerance. Image and product
    encoders are written by :func:`metric_sim.export.image.write_image_export`.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize must be one of {list(QUANTIZE_MODES)} or None, got {quantize!r}")
    onnx = onnx or quantize is not None
    if onnx:
        check_opset(opset)
    started = time.perf_counter()
    resolved = resolve_source(source)
    target = Path(out).expanduser().resolve()
    _check_destination(target, resolved, overwrite)
    model = SimilarityModel.from_pretrained(resolved.model_dir)
    encoder = _exportable_encoder(model, resolved).eval()
    images = not isinstance(encoder, Encoder)
    if images and quantize is not None:
        raise ExportError(f"quantize={quantize!r} applies to text encoders only, not to an encoder of kind "
                          f"{encoder.kind!r} (image inputs would need static quantisation with calibration images); "
                          "export it without --quantize")
    with atomic_dir(target) as staging:
        meta: dict[str, Any] = {
            "versions": library_versions(with_onnx=onnx, with_images=images),
            "train_config_sha256": train_config_digest(resolved.train_config),
            "export": {
                "source": (resolved.run_dir or resolved.model_dir).name,  # the name only: no local paths in a shared model
                "source_kind": "run" if resolved.run_dir else "model",
                "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "fingerprint": encoder.fingerprint(),
            },
        }
        if images:
            write_image_export(staging, model, resolved, meta, name=target.name, onnx=onnx, opset=opset)
        else:
            assert isinstance(encoder, Encoder)
            _write_text_export(staging, model, encoder, resolved, meta, name=target.name, onnx=onnx, opset=opset,
                               quantize=quantize)
    logger.info("export: wrote %s in %.1f s", target, time.perf_counter() - started)
    return target
