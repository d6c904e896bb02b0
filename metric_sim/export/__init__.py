"""Export bundle: one folder that metric-sim, sentence-transformers, transformers and ONNX Runtime load.

``export_model(RUN_DIR or model folder, OUT)`` writes, into a staging folder that is
renamed into place at the end (a crash never leaves a half-written export):

* transformers format: ``config.json``, ``model.safetensors``, tokenizer files;
* sentence-transformers layout (:mod:`~metric_sim.export.sentence_transformers`):
  ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``, ``2_Dense/``
  when the encoder has a projection head, ``N_Normalize/`` only when it normalises, and
  ``config_sentence_transformers.json`` whose ``similarity_fn_name`` is the training
  metric (``euclidean``/``manhattan``);
* ``metric_sim.json``: pooling, normalisation, metric, calibrator, library versions and
  the sha256 of the training config (:mod:`~metric_sim.export.source`), so
  ``SimilarityModel.from_pretrained(OUT)`` gives the same decisions as the run;
* ``README.md``: a model card (:mod:`~metric_sim.export.card`) filled in from the run's
  ``train_config.json`` and ``metrics.json``, with usage snippets for the four runtimes;
* ``onnx/model.onnx`` (``onnx=True``, :mod:`~metric_sim.export.onnx`): one graph from
  token ids to the final embedding, pooling, projection and normalisation included,
  dynamic batch and sequence axes; ``onnx/model_int8.onnx`` (``quantize="int8"``)
  quantised dynamically. Each graph is checked against PyTorch on sample texts before
  the export is kept.

Image encoders (kind ``image``) and title + image product encoders (kind ``multimodal``)
are exported by :mod:`~metric_sim.export.image`: their own saved folder, ``preprocessing.json``
(every step from a picture to the input tensor), ``onnx/model.onnx`` (one graph from pixels,
and token ids for products, to the final vector; no int8) and a model card; the
sentence-transformers layout does not apply to them. The bundle is assembled by
:mod:`~metric_sim.export.bundle`.
"""

from __future__ import annotations

from metric_sim.errors import ExportError
from metric_sim.export.bundle import export_model
from metric_sim.export.card import EXAMPLE_TEXTS, render_model_card, usage_snippets
from metric_sim.export.image import PREPROCESSING_FILE, preprocessing_document
from metric_sim.export.image_onnx import IMAGE_ONNX_OUTPUT, graph_inputs, product_inputs
from metric_sim.export.onnx import (
    CHECK_TEXTS,
    DEFAULT_OPSET,
    ONNX_INPUTS,
    ONNX_OUTPUT,
    ONNX_TOLERANCE,
    QUANTIZE_MODES,
    export_onnx,
    max_abs_diff,
    onnx_input_names,
    quantize_int8,
    write_onnx,
)
from metric_sim.export.sentence_transformers import write_sentence_transformers_layout
from metric_sim.export.source import (
    EXPORTABLE_KIND,
    EXPORTABLE_KINDS,
    ExportSource,
    default_model_path_or_none,
    library_versions,
    resolve_source,
    train_config_digest,
)
from metric_sim.layout import ONNX_DIR, ONNX_FP32, ONNX_INT8

__all__ = [
    "CHECK_TEXTS",
    "DEFAULT_OPSET",
    "EXAMPLE_TEXTS",
    "EXPORTABLE_KIND",
    "EXPORTABLE_KINDS",
    "IMAGE_ONNX_OUTPUT",
    "ONNX_DIR",
    "ONNX_FP32",
    "ONNX_INPUTS",
    "ONNX_INT8",
    "ONNX_OUTPUT",
    "ONNX_TOLERANCE",
    "PREPROCESSING_FILE",
    "QUANTIZE_MODES",
    "ExportError",
    "ExportSource",
    "default_model_path_or_none",
    "export_model",
    "export_onnx",
    "graph_inputs",
    "library_versions",
    "max_abs_diff",
    "onnx_input_names",
    "preprocessing_document",
    "product_inputs",
    "quantize_int8",
    "render_model_card",
    "resolve_source",
    "train_config_digest",
    "usage_snippets",
    "write_onnx",
    "write_sentence_transformers_layout",
]
