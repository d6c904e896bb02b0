"""The model card (``README.md``) of an image or product export, with runnable usage snippets.

Each snippet starts with a ``model_dir = ...`` line and an ``items = [...]`` line (so a test
can substitute both and run it as written). The ONNX Runtime snippet preprocesses with PIL
and NumPy only, following ``preprocessing.json``.
"""

from __future__ import annotations

from typing import Any

from metric_sim.encoders.image import ImageEncoder
from metric_sim.encoders.multimodal import IMAGE_DIR, TEXT_DIR, ProductEncoder
from metric_sim.export.card import calibrator_lines, format_value, run_sections
from metric_sim.export.source import ExportSource
from metric_sim.layout import CONFIG_FILE, ONNX_DIR, ONNX_FP32
from metric_sim.model import SimilarityModel

EXAMPLE_IMAGES = ("photo_a.jpg", "photo_b.jpg")
EXAMPLE_RECORDS = ({"title": "Golden Delicious apples, 1 kg", "image": "photo_a.jpg"}, {"title": "Red apples"})
_PIL_FILTERS = {"bilinear": "Image.BILINEAR", "bicubic": "Image.BICUBIC"}


def _load_function(pre: dict[str, Any]) -> list[str]:
    """``def load(path)``: one image as float32 C x H x W, the steps of ``preprocessing.json`` with PIL + NumPy."""
    height, width = pre["size"]
    interpolation = pre["interpolation"]
    lines = [
        "def load(path):  # the steps of preprocessing.json",
        "    im = ImageOps.exif_transpose(Image.open(path))",
        "    if 'A' in im.getbands() or (im.mode == 'P' and 'transparency' in im.info):  # alpha on white",
        "        im = Image.alpha_composite(Image.new('RGBA', im.size, (255, 255, 255, 255)), im.convert('RGBA'))",
        f"    im = im.convert('{pre['mode']}')",
    ]
    if interpolation in _PIL_FILTERS:
        resize = f"im.resize({{size}}, {_PIL_FILTERS[interpolation]})"
    else:  # PyTorch 'nearest' indexing: floor(i * in / out)
        resize = ("Image.fromarray(np.asarray(im)[np.arange({h}) * im.height // {h}][:, np.arange({w}) * im.width // {w}])")
    if pre["resize"] == "squash":
        lines.append(f"    im = {resize.format(size=(width, height), h=height, w=width)}")
    else:
        short = pre["shorter_side"]
        lines += [
            "    w, h = im.size",
            f"    size = ({short}, int({short} * h / w)) if w <= h else (int({short} * w / h), {short})",
            f"    im = im if size == im.size else {resize.format(size='size', h='size[1]', w='size[0]')}",
            f"    left, top = round((size[0] - {width}) / 2), round((size[1] - {height}) / 2)",
            f"    im = im.crop((left, top, left + {width}, top + {height}))",
        ]
    lines += [
        f"    x = (np.asarray(im, dtype=np.float32) / 255.0).reshape({height}, {width}, {pre['channels']}).transpose(2, 0, 1)",
        f"    return (x - np.float32({pre['mean']})[:, None, None]) / np.float32({pre['std']})[:, None, None]",
    ]
    return lines


def image_usage_snippets(encoder: ImageEncoder | ProductEncoder, model: SimilarityModel, name: str, *,
                         preprocessing: dict[str, Any], has_onnx: bool) -> dict[str, str]:
    """metric-sim (and with ``has_onnx`` ONNX Runtime + PIL) snippets for an image or product export."""
    product = isinstance(encoder, ProductEncoder)
    items = list(EXAMPLE_RECORDS) if product else list(EXAMPLE_IMAGES)
    head = [f'model_dir = "{name}"', f"items = {items!r}"]
    p = model.metric.p
    what = "records: {'title': str, 'image': path, bytes, PIL image or array}" if product else \
        "file paths, bytes, PIL images or numpy arrays"
    lines = ["from metric_sim import SimilarityModel", "", *head, f"# {what}",
             "model = SimilarityModel.from_pretrained(model_dir)",
             "embeddings = model.embed(items)",
             "distance = model.distance(items[:1], items[1:2])"]
    if model.calibrator is not None:
        lines += ["probability = model.predict_proba(items[:1], items[1:2])  # calibrated p(similar)",
                  "decision = model.predict(items[:1], items[1:2])  # 1 when distance <= threshold"]
    snippets = {"metric-sim": "\n".join(lines)}
    if not has_onnx:
        return snippets
    pre = preprocessing["image"] if product else preprocessing
    code = ["import numpy as np", "import onnxruntime as ort", "from PIL import Image, ImageOps",
            *(["from transformers import AutoTokenizer  # works without torch"] if product else []), "", *head,
            f"session = ort.InferenceSession(f'{{model_dir}}/{ONNX_DIR}/{ONNX_FP32}')", "", *_load_function(pre), ""]
    if product:
        fields = list(encoder.text_fields)
        channels, (height, width) = pre["channels"], pre["size"]
        code += [
            f"tokenizer = AutoTokenizer.from_pretrained(f'{{model_dir}}/{TEXT_DIR}')",
            f"texts = ['\\n'.join(r[f].strip() for f in {fields!r} if (r.get(f) or '').strip()) for r in items]",
            f"feeds = dict(tokenizer(texts, padding=True, truncation=True, max_length={preprocessing['text']['max_length']}, "
            "return_tensors='np'))",
            "feeds = {k: v.astype(np.int64) for k, v in feeds.items()}",
            f"feeds['pixels'] = np.stack([load(r['image']) if r.get('image') is not None else np.zeros(({channels}, "
            f"{height}, {width}), np.float32) for r in items])",
            "feeds['text_present'] = np.array([bool(t) for t in texts])",
            "feeds['image_present'] = np.array([r.get('image') is not None for r in items])",
        ]
    else:
        code.append("feeds = {'pixels': np.stack([load(path) for path in items])}")
    code += ["emb = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]",
             f"distances = np.linalg.norm(emb[:, None] - emb[None], ord={p}, axis=-1)  # {model.metric.value}"]
    snippets["onnxruntime"] = "\n".join(code)
    return snippets


def _architecture(encoder: ImageEncoder) -> str:
    spec = encoder.backbone_spec
    backbone = {"timm": f"timm {spec.get('name')}", "small-cnn": f"small CNN {spec.get('kwargs')}",
                "hf": "transformers vision model"}.get(spec.get("source"), str(spec.get("source")))
    return (f"{backbone}, {encoder.features_dim}-d pooled features; projection head: "
            f"{'yes' if encoder.projection is not None else 'no'}; normalised: {'yes' if encoder.normalize else 'no'}")


def _preprocessing_line(pre: dict[str, Any]) -> str:
    height, width = pre["size"]
    rule = (f"resize to {height} x {width} ignoring the aspect ratio" if pre["resize"] == "squash" else
            f"resize the shorter side to {pre['shorter_side']}, then crop the centre {height} x {width}")
    return (f"- preprocessing (`preprocessing.json`): EXIF orientation applied, transparency on white, {pre['mode']} "
            f"({pre['channels']} channel{'s' if pre['channels'] > 1 else ''}); {rule} ({pre['interpolation']}); "
            f"pixels / 255 in [0, 1], then (x - mean) / std with mean {pre['mean']}, std {pre['std']}; "
            f"float32 N x C x H x W")


def render_image_card(source: ExportSource, model: SimilarityModel, *, name: str, meta: dict[str, Any],
                      preprocessing: dict[str, Any]) -> str:
    encoder = model.encoder
    assert isinstance(encoder, (ImageEncoder, ProductEncoder))
    product = isinstance(encoder, ProductEncoder)
    metric = model.metric
    onnx_meta = meta.get("export", {}).get("onnx")
    what = "a product (a title and a photo)" if product else "an image"
    trained = source.train_config is not None
    base = (source.train_config or {}).get("model") or f"unknown (exported from a model folder named {source.model_dir.name!r})"
    card = [
        "---", "pipeline_tag: " + ("feature-extraction" if product else "image-feature-extraction"), "tags:",
        "- metric-sim", "- image-similarity", *(["- multimodal"] if product else []), f"- {metric.value}-distance", "---",
        "", f"# {name}", "",
        (f"An encoder that maps {what} to one vector, " + ("fine-tuned with" if trained else "exported by")
         + f" [metric-sim](https://pypi.org/project/metric-sim/), so that the raw **{metric.value}** distance between "
         "two vectors tells whether two items are similar"
         + (", plus a logistic calibrator on that distance." if model.calibrator is not None else ".")),
        "", "## Model", "",
        f"- starting point: {format_value(base)}",
    ]
    if product:
        card += [
            f"- text part (`{TEXT_DIR}/`): transformers encoder, {encoder.text.embedding_dim}-d; fields {encoder.text_fields}",
            f"- image part (`{IMAGE_DIR}/`): {_architecture(encoder.image)}",
            f"- fusion: each part L2-normalised (a missing title or image is a zero vector), concatenated, "
            f"linear fusion {'yes' if encoder.projection is not None else 'no'}, normalised: "
            f"{'yes' if encoder.normalize else 'no'}; embedding dimension {encoder.embedding_dim}",
            _preprocessing_line(preprocessing["image"]),
        ]
    else:
        card += [f"- architecture: {_architecture(encoder)}; embedding dimension {encoder.embedding_dim}",
                 _preprocessing_line(preprocessing)]
    card += [f"- metric: {metric.value} (L{metric.p}) on the raw embeddings", *calibrator_lines(model),
             "- sentence-transformers layout: not written (it describes text models only)"]
    card += run_sections(source, meta)
    if onnx_meta:
        info = onnx_meta["files"]["fp32"]
        card += ["", "## ONNX", "",
                 f"- `{info['path']}`: inputs {', '.join(onnx_meta['inputs'])} -> `{onnx_meta['output']}`; "
                 f"max abs difference from PyTorch on {onnx_meta['checked_on']}: {info['max_abs_diff_vs_torch']:.2e}",
                 f"- opset {onnx_meta['opset']}; dynamic batch axis"
                 + (" and sequence axis; a row without an image gets zero pixels and image_present false, a row "
                    "without a title the empty string and text_present false" if product else "")
                 + "; backbone, projection and normalisation are inside the graph"]
    card += ["", "## Usage", ""]
    snippets = image_usage_snippets(encoder, model, name, preprocessing=preprocessing, has_onnx=bool(onnx_meta))
    for runtime, code in snippets.items():
        card += [f"### {runtime}", "", "```python", code, "```", ""]
    versions = meta.get("versions", {})
    card += ["## Reproducibility", "",
             "Library versions at export: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
             f"`{CONFIG_FILE}` holds the encoder settings, the metric, the calibrator, these versions and the sha256 "
             "of the training config; `preprocessing.json` every preprocessing step.", ""]
    return "\n".join(card)
