"""The ONNX part of an image or product export: one graph from preprocessed pixels (and token ids) to the vector.

Image encoder: input ``pixels`` float32 ``(batch, C, H, W)`` (preprocessed as
``preprocessing.json`` says), output ``final_embedding``: backbone, projection and
normalisation inside the graph.

Product encoder: ``ProductEncoder.collate`` gives pixels for the rows that *have* an image
only, and token ids for the rows that have a text only; a graph is easier to feed with one
row per record everywhere, so its inputs are (:func:`product_inputs` builds them):

* the text encoder's ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where its
  tokenizer makes them), ``(batch, sequence)`` int64, for **every** row; a row without text
  is tokenised as the empty string (its tokens do not matter: the mask below zeroes it);
* ``pixels`` ``(batch, C, H, W)`` float32 for every row, **zeros** where the record has no image;
* ``text_present`` and ``image_present``, ``(batch,)`` bool.

Each part's vector is L2-normalised, put to zero where the mask says absent, the two are
concatenated, fused and normalised: ``ProductEncoder.forward`` exactly (a missing part
contributes a zero vector). Every graph is run with ONNX Runtime on generated images
(and records with a missing image or a missing title) and compared with PyTorch before
the export is kept.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders.image import ImageEncoder
from metric_sim.encoders.multimodal import ProductEncoder
from metric_sim.encoders.text import Encoder
from metric_sim.errors import ExportError
from metric_sim.export.onnx import (
    CHECK_TEXTS,
    ONNX_TOLERANCE,
    check_opset,
    max_abs_diff,
    onnx_input_names,
)
from metric_sim.images import IMAGE_FIELD
from metric_sim.layout import ONNX_DIR, ONNX_FP32

logger = logging.getLogger(__name__)

PIXELS_INPUT = "pixels"
PRESENCE_INPUTS = ("text_present", "image_present")
IMAGE_ONNX_OUTPUT = "final_embedding"  # not "embedding": a BERT graph has a node of that name
EXPORTER = "torch.onnx.export(dynamo=True)"


def check_images() -> list[np.ndarray]:
    """Generated images of several shapes and kinds (RGB, grey, RGBA, float) the graphs are checked on."""
    rng = np.random.default_rng(1234)
    ramp = np.linspace(0, 255, 56, dtype=np.float64)
    gradient = np.stack([np.tile(ramp, (40, 1)), np.tile(ramp[::-1], (40, 1)), np.full((40, 56), 90.0)], axis=-1)
    checker = (np.indices((105, 105)).sum(axis=0) // 7 % 2 * 255).astype(np.uint8)
    rgba = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((48, 64)) < 0.3, 0, 255)
    return [
        gradient.astype(np.uint8),
        checker,  # grey
        rgba,  # alpha composited on white
        rng.integers(0, 256, (20, 90, 3), dtype=np.uint8),  # wide
        rng.random((77, 31)).astype(np.float32),  # float grey in [0, 1], tall
    ]


def check_records() -> list[dict[str, Any]]:
    """Records with both parts, with a title only and with an image only (and a description)."""
    images, texts = check_images(), list(CHECK_TEXTS)
    records: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        text = texts[i % len(texts)]
        records.append({"title": text, "image": image, "description": texts[(i + 1) % len(texts)]})
        records.append({"title": text} if i % 2 == 0 else {"title": text, "image": None})
        records.append({"image": image} if i % 2 == 0 else {"title": "  ", "image": image})
    return records


class ImageGraph(nn.Module):
    """Preprocessed pixels -> final vector (``ImageEncoder.forward``)."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)


class ProductGraph(nn.Module):
    """Token ids for every row + pixels for every row + presence masks -> ``ProductEncoder.forward``'s vector."""

    def __init__(self, encoder: ProductEncoder, text_names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.text_names = tuple(text_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        count = len(self.text_names)
        text_inputs = dict(zip(self.text_names, inputs[:count], strict=True))
        pixels, text_present, image_present = inputs[count:]
        text = nn.functional.normalize(self.encoder.text(**text_inputs), p=2, dim=-1)
        image = nn.functional.normalize(self.encoder.image(pixels), p=2, dim=-1)
        # absent parts are zero vectors, as ProductEncoder.forward scatters them
        text = torch.where(text_present.unsqueeze(-1), text, torch.zeros_like(text))
        image = torch.where(image_present.unsqueeze(-1), image, torch.zeros_like(image))
        joined = torch.cat([text, image], dim=-1)
        if self.encoder.projection is not None:
            joined = self.encoder.projection(joined)
        return nn.functional.normalize(joined, p=2, dim=-1) if self.encoder.normalize else joined


def text_part(encoder: ProductEncoder) -> Encoder:
    """The product encoder's text part, which must be a transformers text encoder for a graph."""
    if not isinstance(encoder.text, Encoder):
        raise ExportError(f"the product encoder's text part is of kind {getattr(encoder.text, 'kind', None)!r}; "
                          "an ONNX graph needs a transformers text encoder (kind 'transformers')")
    return encoder.text


def input_names(encoder: ImageEncoder | ProductEncoder) -> list[str]:
    """The graph's inputs, in order."""
    if isinstance(encoder, ProductEncoder):
        return [*onnx_input_names(text_part(encoder)), PIXELS_INPUT, *PRESENCE_INPUTS]
    return [PIXELS_INPUT]


def product_inputs(encoder: ProductEncoder, records: Sequence[Any]) -> dict[str, np.ndarray]:
    """The product graph's inputs for ``records`` (the convention of the module docstring)."""
    checked = encoder.check_items(records, "records")
    text = text_part(encoder)
    texts = [encoder.record_text(r) for r in checked]
    has_image = [r.get(IMAGE_FIELD) is not None for r in checked]
    tokens = text.tokenize([t if t is not None else "" for t in texts])
    height, width = encoder.image.preprocess["size"]
    channels = 1 if encoder.image.mode == "L" else 3
    pixels = np.zeros((len(checked), channels, height, width), dtype=np.float32)
    rows = [i for i, present in enumerate(has_image) if present]
    if rows:
        pixels[rows] = encoder.image.pixels([checked[i][IMAGE_FIELD] for i in rows],
                                            labels=[f"records[{i}].{IMAGE_FIELD}" for i in rows]).numpy()
    feeds = {name: tokens[name].numpy().astype(np.int64) for name in onnx_input_names(text)}
    feeds[PIXELS_INPUT] = pixels
    feeds[PRESENCE_INPUTS[0]] = np.array([t is not None for t in texts], dtype=bool)
    feeds[PRESENCE_INPUTS[1]] = np.array(has_image, dtype=bool)
    return feeds


def graph_inputs(encoder: ImageEncoder | ProductEncoder, items: Sequence[Any]) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for ``items`` (images, or product records)."""
    if isinstance(encoder, ProductEncoder):
        return product_inputs(encoder, items)
    return {PIXELS_INPUT: encoder.pixels(encoder.check_items(items)).numpy()}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about optional torchvision ops and internal deprecations: noise here."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [one.level for one in loggers]
    for one in loggers:
        one.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for one, level in zip(loggers, levels, strict=True):
            one.setLevel(level)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401  (the export is checked against PyTorch with it)
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError as exc:
        raise ExportError(f"--onnx needs onnx, onnxscript and onnxruntime ({exc}). "
                          "Install them with: pip install 'metric-sim[onnx]'") from exc


def export_image_onnx(encoder: ImageEncoder | ProductEncoder, path: Path, *, opset: int) -> list[str]:
    """Export ``encoder`` as one ONNX graph (dynamic batch axis; dynamic sequence axis for token ids).

    Same exporter as the text export (``dynamo=True``, weights inside the one file).
    Returns the input names.
    """
    _require_onnx()
    check_opset(opset)
    model = copy.deepcopy(encoder).to("cpu").eval()
    names = input_names(model)
    batch = torch.export.Dim("batch")
    if isinstance(model, ProductEncoder):
        graph: nn.Module = ProductGraph(model, names[:-3])
        # two rows with different parts present, texts of several tokens: no size-0/1 specialisation
        sample = graph_inputs(model, [{"title": CHECK_TEXTS[1], "image": check_images()[0]}, {"title": CHECK_TEXTS[4]}])
        sequence = torch.export.Dim("sequence")
        dynamic: dict[str, Any] = {"inputs": (*({0: batch, 1: sequence} for _ in names[:-3]), {0: batch}, {0: batch},
                                              {0: batch})}
    else:
        graph = ImageGraph(model)
        sample = graph_inputs(model, check_images()[:2])
        dynamic = {"pixels": {0: batch}}
    args = tuple(torch.from_numpy(sample[name]) for name in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(graph.eval(), args, str(path), input_names=names, output_names=[IMAGE_ONNX_OUTPUT],
                          dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False, verbose=False)
    return names


def onnx_session(path: Path) -> Any:
    """An ONNX Runtime session on CPU."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_graph(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """One run of ``session``, feeding only the inputs the graph declares."""
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def parity_tolerance(reference: np.ndarray) -> float:
    """``ONNX_TOLERANCE`` for unit-scale vectors, relative for larger (unnormalised image features)."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return ONNX_TOLERANCE * max(1.0, scale)


def write_image_onnx(encoder: ImageEncoder | ProductEncoder, folder: Path, *, opset: int) -> dict[str, Any]:
    """Export, then check the graph against ``encoder.encode`` (the batch at once and row by row).

    Returns the ``export.onnx`` section of ``metric_sim.json``; refuses (``ExportError``)
    when the graph differs from PyTorch by more than :func:`parity_tolerance`.
    """
    fp32 = folder / ONNX_DIR / ONNX_FP32
    started = time.perf_counter()
    names = export_image_onnx(encoder, fp32, opset=opset)
    logger.info("export: ONNX graph written in %.1f s; checking it against PyTorch", time.perf_counter() - started)
    items: list[Any] = check_records() if isinstance(encoder, ProductEncoder) else list(check_images())
    reference = encoder.encode(items, batch_size=len(items))
    session = onnx_session(fp32)
    together = run_graph(session, graph_inputs(encoder, items))
    one_by_one = np.concatenate([run_graph(session, graph_inputs(encoder, [item])) for item in items])
    diff = max_abs_diff(np.concatenate([together, one_by_one]), np.concatenate([reference, reference]))
    tolerance = parity_tolerance(reference)
    if not diff <= tolerance:
        raise ExportError(f"the ONNX graph differs from PyTorch by {diff:.3g} (> {tolerance:.3g}) on generated "
                          f"{'records' if isinstance(encoder, ProductEncoder) else 'images'}; export refused")
    what = "records (with both parts, title only, image only)" if isinstance(encoder, ProductEncoder) else "images"
    return {
        "opset": opset,
        "inputs": names,
        "output": IMAGE_ONNX_OUTPUT,
        "files": {"fp32": {"path": f"{ONNX_DIR}/{fp32.name}", "max_abs_diff_vs_torch": diff, "bytes": fp32.stat().st_size}},
        "tolerance": tolerance,
        "checked_on": f"{len(items)} generated {what}, as one batch and one at a time",
        "exporter": EXPORTER,
    }
