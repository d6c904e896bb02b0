"""Export of image encoders (kind ``image``) and title + image product encoders (kind ``multimodal``).

The folder holds what the encoder's own ``save`` writes (weights, ``metric_sim.json``), so
``SimilarityModel.from_pretrained(OUT)`` reloads it exactly, plus:

* ``preprocessing.json``: every step that turns a picture into the ``pixels`` tensor
  (decode, EXIF orientation, alpha on white, colour mode, resize rule, crop, scaling to
  ``[0, 1]``, mean/std, ``N x C x H x W``), read from the encoder's own preprocessing
  pipeline, so a non-Python runtime can reproduce the input; for a product encoder also
  the text part (tokenizer folder, fields) and the ONNX input convention for missing parts;
* ``onnx/model.onnx`` (``onnx=True``, :mod:`~metric_sim.export.image_onnx`);
* ``README.md``, the model card (:mod:`~metric_sim.export.image_card`).

The sentence-transformers layout is for text models only and is not written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from metric_sim.encoders.image import ImageEncoder
from metric_sim.encoders.image_transforms import COLOUR_MODES
from metric_sim.encoders.multimodal import IMAGE_DIR, TEXT_DIR, ProductEncoder
from metric_sim.errors import ExportError
from metric_sim.export.image_card import render_image_card
from metric_sim.export.image_onnx import (
    IMAGE_ONNX_OUTPUT,
    PIXELS_INPUT,
    PRESENCE_INPUTS,
    input_names,
    write_image_onnx,
)
from metric_sim.export.source import ExportSource
from metric_sim.layout import CONFIG_FILE, MODEL_CARD_FILE, PREPROCESSING_FILE
from metric_sim.model import SimilarityModel
from metric_sim.storage import read_json, write_json_atomic

logger = logging.getLogger(__name__)

PREPROCESSING_FORMAT = 1
SENTENCE_TRANSFORMERS_SKIPPED = "not written: the sentence-transformers layout describes text models only"
# How the resize of the pipeline (torchvision, antialiased, on 8-bit pixels) is reproduced elsewhere.
_RESIZE_EQUIVALENT = {
    "bilinear": "PIL Image.resize(size, Image.BILINEAR) gives the same 8-bit pixels (within 1 grey level)",
    "bicubic": "PIL Image.resize(size, Image.BICUBIC) gives the same 8-bit pixels (within 1 grey level)",
    "nearest": "source index = floor(i * in_size / out_size) per axis (PyTorch 'nearest'; not PIL's NEAREST)",
}
_GREY = "PIL convert('L') (ITU-R 601-2 luma: L = R * 299/1000 + G * 587/1000 + B * 114/1000)"


def _step(transform: Any) -> dict[str, Any]:
    """One torchvision v2 step of the encoder's eval pipeline, described for another runtime."""
    name = type(transform).__name__
    if name == "ToImage":
        return {"op": "to_array", "dtype": "uint8", "layout": "CHW", "text": "8-bit pixels, channels first"}
    if name == "Resize":
        size = [int(v) for v in transform.size]
        interpolation = str(transform.interpolation.value)
        out: dict[str, Any] = {"op": "resize", "interpolation": interpolation, "antialias": bool(transform.antialias),
                               "equivalent": _RESIZE_EQUIVALENT.get(interpolation)}
        if len(size) == 1:
            out.update(shorter_side=size[0], text=f"resize so the shorter side is {size[0]}; the longer side becomes "
                       f"floor({size[0]} * longer / shorter); an image already that size is left as it is")
        else:
            out.update(size=size, text=f"resize to height {size[0]} x width {size[1]}, ignoring the aspect ratio")
        return out
    if name == "CenterCrop":
        height, width = (int(v) for v in transform.size)
        return {"op": "center_crop", "size": [height, width],
                "text": f"crop height {height} x width {width} at top = round((h - {height}) / 2), "
                        f"left = round((w - {width}) / 2) (halves rounded to even); pixels outside the image are 0"}
    if name == "ToDtype":
        if not transform.scale:
            raise ExportError("cannot describe a preprocessing step that converts pixels without scaling them")
        return {"op": "scale", "divide_by": 255.0, "range": [0.0, 1.0], "dtype": "float32",
                "text": "float32 pixel / 255, so values are in [0, 1] before the normalisation"}
    if name == "Normalize":
        return {"op": "normalize", "mean": [float(v) for v in transform.mean], "std": [float(v) for v in transform.std],
                "text": "(x - mean[c]) / std[c] per channel c"}
    raise ExportError(f"cannot describe the preprocessing step {name} for preprocessing.json")


def image_preprocessing(encoder: ImageEncoder) -> dict[str, Any]:
    """The ``preprocessing.json`` of an image encoder, read from its preprocessing spec and eval pipeline."""
    spec = encoder.preprocess
    mode = spec["mode"]
    height, width = spec["size"]
    channels = COLOUR_MODES[mode]
    decode = [
        {"op": "decode", "exif_transpose": True,
         "text": "decode the file fully; apply its EXIF orientation tag (PIL ImageOps.exif_transpose)"},
        {"op": "alpha", "background": [255, 255, 255],
         "text": "an image with transparency (an alpha band, or a palette with a transparent index) is "
                 "composited on opaque white first"},
        {"op": "convert", "mode": mode, "channels": channels,
         "text": "convert to RGB (3 channels, R G B order)" if mode == "RGB" else f"convert to grey, one channel: {_GREY}"},
    ]
    steps = decode + [_step(t) for t in encoder.transform(augmented=False).transforms]
    steps.append({"op": "batch", "layout": "NCHW", "text": f"stack the images: float32 N x {channels} x {height} x {width}"})
    resize = next(s for s in steps if s["op"] == "resize")
    return {
        "kind": "image",
        "input": {"name": PIXELS_INPUT, "dtype": "float32", "layout": "NCHW", "shape": ["batch", channels, height, width],
                  "channel_order": ["R", "G", "B"] if mode == "RGB" else ["L"]},
        "size": [height, width],
        "mode": mode,
        "channels": channels,
        "resize": spec["resize"],
        "shorter_side": resize.get("shorter_side"),
        "crop_fraction": spec["crop_fraction"],
        "interpolation": spec["interpolation"],
        "mean": list(spec["mean"]),
        "std": list(spec["std"]),
        "value_range": [0.0, 1.0],
        "exif_transpose": True,
        "alpha": "composited on white",
        "steps": steps,
        "spec": dict(spec),
        "augmentation": "training only; never applied when embedding",
    }


def product_preprocessing(encoder: ProductEncoder) -> dict[str, Any]:
    """The ``preprocessing.json`` of a product encoder: the image part, the text part, the graph's input convention."""
    text = encoder.text
    image = image_preprocessing(encoder.image)
    doc: dict[str, Any] = {
        "kind": "multimodal",
        "image": image,
        "text": {
            "tokenizer": f"{TEXT_DIR}/",
            "fields": list(encoder.text_fields),
            "text": "the stripped, non-empty fields joined with a newline; no text when none is left",
            "join": "\n",
            "max_length": getattr(text, "max_length", None),
            "truncation": True,
            "padding": "to the longest text of the batch (attention_mask 0 on padding)",
        },
        "parts": {"text": f"{TEXT_DIR}/", "image": f"{IMAGE_DIR}/"},
        "missing_parts": "a record needs a title or an image; a missing part contributes a zero vector "
                         "before the fusion (see the encoder's documentation)",
    }
    try:
        names = input_names(encoder)
    except ExportError:  # a text part that is not a transformers encoder has no graph convention
        return doc
    _, channels, height, width = image["input"]["shape"]
    token_inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"],
                     "text": "the tokenizer's output for every row; a row without text is tokenised as the empty "
                             "string (its tokens are ignored: text_present is false)"} for n in names[:-3]]
    doc["onnx_inputs"] = [
        *token_inputs,
        {"name": PIXELS_INPUT, "dtype": "float32", "shape": ["batch", channels, height, width],
         "text": "the preprocessed image of every row (see image), all zeros for a row without an image"},
        {"name": PRESENCE_INPUTS[0], "dtype": "bool", "shape": ["batch"], "text": "true where the row has text"},
        {"name": PRESENCE_INPUTS[1], "dtype": "bool", "shape": ["batch"], "text": "true where the row has an image"},
    ]
    doc["onnx_output"] = IMAGE_ONNX_OUTPUT
    return doc


def preprocessing_document(encoder: ImageEncoder | ProductEncoder) -> dict[str, Any]:
    """``preprocessing.json`` for an image or a product encoder."""
    body = product_preprocessing(encoder) if isinstance(encoder, ProductEncoder) else image_preprocessing(encoder)
    return {"format": "metric-sim preprocessing", "format_version": PREPROCESSING_FORMAT, **body}


def write_image_export(
    staging: Path,
    model: SimilarityModel,
    source: ExportSource,
    meta: dict[str, Any],
    *,
    name: str,
    onnx: bool,
    opset: int,
) -> None:
    """Fill ``staging`` (the bundle's temporary folder) for an image or product model; ``meta`` gains the export notes."""
    encoder = model.encoder
    if not isinstance(encoder, (ImageEncoder, ProductEncoder)):
        raise ExportError(f"not an image or product encoder: {type(encoder).__name__}")
    meta["export"]["sentence_transformers_modules"] = None
    meta["export"]["sentence_transformers"] = SENTENCE_TRANSFORMERS_SKIPPED
    meta["export"]["preprocessing"] = PREPROCESSING_FILE
    logger.info("export: writing weights, %s and %s", CONFIG_FILE, PREPROCESSING_FILE)
    model.save(staging, extra=meta)
    preprocessing = preprocessing_document(encoder)
    write_json_atomic(staging / PREPROCESSING_FILE, preprocessing)
    if onnx:
        meta["export"]["onnx"] = write_image_onnx(encoder, staging, opset=opset)
    config = read_json(staging / CONFIG_FILE)
    config.update(meta)
    write_json_atomic(staging / CONFIG_FILE, config)
    card = render_image_card(source, model, name=name, meta=meta, preprocessing=preprocessing)
    (staging / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
