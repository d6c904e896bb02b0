"""Export of image and product (title + image) models: reload, preprocessing.json, ONNX parity, CLI.

Oracles: the PyTorch encoder that was exported (its ``encode`` and its ``pixels``), and an
independent PIL + NumPy reimplementation of the preprocessing that reads only
``preprocessing.json``. Tiny random networks, images generated in-process.
"""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from metric_sim import Calibrator, SimilarityModel
from metric_sim.cli import main
from metric_sim.encoders import load_encoder
from metric_sim.encoders.image import image_encoder_from_name
from metric_sim.export import ExportError, export_model, train_config_digest
from metric_sim.export.image import preprocessing_document
from metric_sim.export.image_onnx import graph_inputs, onnx_session, run_graph
from tests.test_image_encoders import (
    image_items,
    product_items,
    tiny_image_encoder,
    tiny_product_encoder,
)

pytest.importorskip("onnxruntime", reason="pip install 'metric-sim[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'metric-sim[onnx]'")

TRAIN_CONFIG = {"model": "small-cnn", "items": "image", "metric": "euclidean", "loss": "contrastive",
                "batch_size": 16, "seed": 3, "run": {"steps": 12, "epochs": 1.0}}
METRICS = {"metric": "euclidean", "test": {"average_precision": 0.75, "roc_auc": 0.8, "pairs": 40}}
CALIBRATOR = Calibrator(weight=-3.0, bias=1.5, metric="euclidean", n_fit=40, fitted_on="dev", feature="linear")
TITLES = ["how do i learn python", "why is the sky blue", "a", "how can i save money", "what is the best phone",
          "learn python quickly", "blue sky", "money"]
TOLERANCE = 1e-4


def _images() -> list:
    """Shapes and kinds unlike the export's own check images: up- and down-scaling, RGBA, grey, float, EXIF JPEG."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (30, 45, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 256, (30, 45), dtype=np.uint8)
    jpeg = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG", exif=exif)
    return [*image_items(3, seed=5, size=50), rgba, rng.integers(0, 256, (17, 23), dtype=np.uint8),
            rng.random((64, 40, 3)).astype(np.float32), jpeg.getvalue()]


def _make_run(folder: Path, encoder) -> Path:
    folder.mkdir(parents=True)
    SimilarityModel(encoder, "euclidean", CALIBRATOR).save(folder / "model")
    (folder / "train_config.json").write_text(json.dumps(TRAIN_CONFIG))
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    return folder


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_export")
    encoder = tiny_image_encoder(normalize=True).eval()
    run = _make_run(root / "run", encoder)
    return {"encoder": encoder, "run": run, "out": export_model(run, root / "bundle", onnx=True)}


@pytest.fixture(scope="module")
def product_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("product_export")
    encoder = tiny_product_encoder().eval()
    folder = SimilarityModel(encoder, "manhattan", None).save(root / "model")
    return {"encoder": encoder, "model": folder, "out": export_model(folder, root / "bundle", onnx=True)}


def _records() -> list[dict]:
    records = product_items(TITLES, seed=3)  # title + image, title only, image only
    records[0]["description"] = "ignored unless text_fields asks for it"
    records.append({"title": "   ", "image": _images()[3]})  # a blank title counts as missing
    records.append({"title": "no image here", "image": None})
    return records


# ---------------------------------------------------------------------------- layout and reload
def test_image_export_reloads_exactly(image_export):
    out, encoder = image_export["out"], image_export["encoder"]
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"metric_sim.json", "image_weights.safetensors", "preprocessing.json", "README.md", "onnx/model.onnx"} <= names
    assert not {"modules.json", "config.json", "1_Pooling"} & names  # no sentence-transformers / transformers layout
    config = json.loads((out / "metric_sim.json").read_text())
    assert config["encoder"] == {**encoder.config_dict(), "kind": "image"}
    assert config["metric"] == "euclidean" and config["calibrator"] == CALIBRATOR.to_dict()
    assert config["train_config_sha256"] == train_config_digest(TRAIN_CONFIG)
    assert {"torch", "torchvision", "timm", "pillow", "onnxruntime", "metric_sim"} <= set(config["versions"])
    export = config["export"]
    assert export["source"] == "run" and export["source_kind"] == "run" and export["fingerprint"] == encoder.fingerprint()
    assert export["sentence_transformers_modules"] is None and "text models only" in export["sentence_transformers"]
    assert export["onnx"]["inputs"] == ["pixels"] and export["onnx"]["files"]["fp32"]["max_abs_diff_vs_torch"] <= TOLERANCE
    items = _images()
    model = SimilarityModel.from_pretrained(out)
    assert model.encoder.fingerprint() == encoder.fingerprint()
    np.testing.assert_array_equal(model.embed(items), encoder.encode(items))
    np.testing.assert_array_equal(load_encoder(out).encode(items), encoder.encode(items))
    assert model.calibrator.to_dict() == CALIBRATOR.to_dict()
    assert model.predict(items[:2], items[2:4]).shape == (2,)


def test_product_export_reloads_exactly(product_export):
    out, encoder = product_export["out"], product_export["encoder"]
    for name in ("metric_sim.json", "fusion.safetensors", "text/tokenizer.json", "text/model.safetensors",
                 "image/image_weights.safetensors", "preprocessing.json", "README.md", "onnx/model.onnx"):
        assert (out / name).is_file(), name
    config = json.loads((out / "metric_sim.json").read_text())
    assert config["encoder"]["kind"] == "multimodal" and config["metric"] == "manhattan" and config["calibrator"] is None
    assert config["train_config_sha256"] is None and config["export"]["source_kind"] == "model"
    records = _records()
    model = SimilarityModel.from_pretrained(out)
    assert model.encoder.fingerprint() == encoder.fingerprint() == config["export"]["fingerprint"]
    np.testing.assert_array_equal(model.embed(records), encoder.encode(records))


# ---------------------------------------------------------------------------- preprocessing.json
def _oracle_pixels(pre: dict, item) -> np.ndarray:
    """C x H x W from preprocessing.json alone, with PIL and NumPy (no torch, no metric-sim code)."""
    if isinstance(item, bytes):
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(item)))
    else:
        array = np.round(item * 255).astype(np.uint8) if item.dtype.kind == "f" else item
        image = Image.fromarray(array)
    steps = {step["op"]: step for step in pre["steps"]}
    assert list(steps) == ["decode", "alpha", "convert", "to_array", "resize", *(["center_crop"] if "center_crop" in steps
                                                                                else []), "scale", "normalize", "batch"]
    if "A" in image.getbands():
        background = Image.new("RGBA", image.size, tuple(steps["alpha"]["background"]) + (255,))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert(steps["convert"]["mode"])
    height, width = pre["size"]
    resize = steps["resize"]
    if "shorter_side" in resize:
        short, (w, h) = resize["shorter_side"], image.size
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    else:
        size = (resize["size"][1], resize["size"][0])
    if size != image.size:
        if resize["interpolation"] == "nearest":
            rows = np.floor(np.arange(size[1]) * (image.height / size[1])).astype(int)
            cols = np.floor(np.arange(size[0]) * (image.width / size[0])).astype(int)
            image = Image.fromarray(np.asarray(image)[rows][:, cols])
        else:
            image = image.resize(size, {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[resize["interpolation"]])
    if "center_crop" in steps:
        top, left = round((size[1] - height) / 2), round((size[0] - width) / 2)
        image = image.crop((left, top, left + width, top + height))
    x = np.asarray(image, dtype=np.float32).reshape(height, width, pre["channels"]).transpose(2, 0, 1)
    x = x / steps["scale"]["divide_by"]
    mean, std = (np.float32(steps["normalize"][k])[:, None, None] for k in ("mean", "std"))
    return (x - mean) / std


PREPROCESS_CASES = {
    "squash-bilinear-rgb": {"size": 32, "resize": "squash", "interpolation": "bilinear"},
    "crop-bicubic-rect": {"size": [24, 40], "resize": "shorter_side_then_center_crop", "crop_fraction": 0.8,
                          "interpolation": "bicubic", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
    "crop-bilinear-grey": {"size": 28, "resize": "shorter_side_then_center_crop", "crop_fraction": 0.875,
                           "interpolation": "bilinear", "mode": "L"},
    "squash-nearest-grey": {"size": [20, 36], "resize": "squash", "interpolation": "nearest", "mode": "L"},
}


@pytest.mark.parametrize("case", sorted(PREPROCESS_CASES))
def test_preprocessing_json_matches_spec_and_reproduces_pixels(case, tmp_path):
    options = PREPROCESS_CASES[case]
    encoder = image_encoder_from_name("small-cnn", in_channels=1 if options.get("mode") == "L" else 3, widths=(4,),
                                      seed=0, preprocess=options).eval()
    out = export_model(SimilarityModel(encoder).save(tmp_path / "model"), tmp_path / "bundle")
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre == json.loads(json.dumps(preprocessing_document(encoder)))
    spec = encoder.preprocess
    assert pre["spec"] == spec and pre["kind"] == "image" and pre["format_version"] == 1
    for key in ("size", "resize", "crop_fraction", "interpolation", "mean", "std", "mode"):
        assert pre[key] == spec[key], key
    channels = 1 if spec["mode"] == "L" else 3
    assert pre["input"] == {"name": "pixels", "dtype": "float32", "layout": "NCHW", "shape": ["batch", channels, *spec["size"]],
                            "channel_order": ["L"] if channels == 1 else ["R", "G", "B"]}
    assert pre["value_range"] == [0.0, 1.0] and pre["exif_transpose"] is True and pre["alpha"] == "composited on white"
    items = _images()
    expected = encoder.pixels(items).numpy()
    got = np.stack([_oracle_pixels(pre, item) for item in items])
    assert got.shape == expected.shape
    level = 1.0 / 255.0 / min(spec["std"])  # PIL's and torchvision's antialiased resizes agree within one grey level
    assert np.max(np.abs(got - expected)) <= level + 1e-5
    assert np.mean(np.abs(got - expected)) <= 0.1 * level


def test_product_preprocessing_documents_the_graph_inputs(product_export):
    pre = json.loads((product_export["out"] / "preprocessing.json").read_text())
    encoder = product_export["encoder"]
    assert pre["kind"] == "multimodal" and pre["image"]["spec"] == encoder.image.preprocess
    assert pre["text"]["tokenizer"] == "text/" and pre["text"]["fields"] == ["title"]
    assert pre["text"]["max_length"] == encoder.text.max_length
    assert [i["name"] for i in pre["onnx_inputs"]] == ["input_ids", "attention_mask", "pixels", "text_present",
                                                       "image_present"]
    assert pre["onnx_output"] == "final_embedding"


# ---------------------------------------------------------------------------- ONNX parity
def test_image_onnx_parity_and_dynamic_batch(image_export):
    encoder, out = image_export["encoder"], image_export["out"]
    session = onnx_session(out / "onnx" / "model.onnx")
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32] and isinstance(session.get_inputs()[0].shape[0], str)
    items = _images()
    reference = encoder.encode(items)
    for batch in (items, items[:1], items[2:5]):
        got = run_graph(session, graph_inputs(encoder, batch))
        assert np.max(np.abs(got - encoder.encode(batch))) <= TOLERANCE
    # fed with the oracle's pixels (PIL, no torch), the graph still gives the model's vectors closely
    pre = json.loads((out / "preprocessing.json").read_text())
    oracle = run_graph(session, {"pixels": np.stack([_oracle_pixels(pre, item) for item in items])})
    assert np.max(np.abs(oracle - reference)) <= 0.05


def test_product_onnx_parity_with_missing_parts(product_export):
    encoder, out = product_export["encoder"], product_export["out"]
    session = onnx_session(out / "onnx" / "model.onnx")
    records = _records()
    feeds = graph_inputs(encoder, records)
    assert not feeds["image_present"].all() and not feeds["text_present"].all()
    assert np.all(feeds["pixels"][~feeds["image_present"]] == 0)
    reference = encoder.encode(records)
    assert np.max(np.abs(run_graph(session, feeds) - reference)) <= TOLERANCE
    for i, record in enumerate(records):  # one at a time: other sequence lengths, a batch of one
        assert np.max(np.abs(run_graph(session, graph_inputs(encoder, [record]))[0] - reference[i])) <= TOLERANCE
    only_titles = [{"title": t} for t in TITLES[:3]]
    assert np.max(np.abs(run_graph(session, graph_inputs(encoder, only_titles)) - encoder.encode(only_titles))) <= TOLERANCE
    with torch.inference_mode():  # the collate/forward path agrees on the same records
        direct = encoder(**encoder.collate(records)).numpy()
    assert np.max(np.abs(direct - reference)) <= 1e-5


def test_timm_backbone_exports_with_parity(tmp_path):
    encoder = image_encoder_from_name("timm:mobilenetv3_small_050", seed=0, preprocess={"size": 32}).eval()
    out = export_model(SimilarityModel(encoder).save(tmp_path / "model"), tmp_path / "bundle", onnx=True)
    diff = json.loads((out / "metric_sim.json").read_text())["export"]["onnx"]["files"]["fp32"]["max_abs_diff_vs_torch"]
    assert diff <= TOLERANCE * max(1.0, float(np.abs(encoder.encode(_images())).max()))
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["resize"] == "shorter_side_then_center_crop" and pre["shorter_side"] == int(32 / encoder.preprocess["crop_fraction"])


# ---------------------------------------------------------------------------- model card snippets
def _run_card_snippet(out: Path, runtime: str, items) -> dict:
    card = (out / "README.md").read_text()
    block = card.split(f"### {runtime}\n", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    block = re.sub(r'^model_dir = ".*"$', f"model_dir = {str(out)!r}", block, count=1, flags=re.M)
    block = re.sub(r"^items = \[.*\]$", f"items = {items!r}", block, count=1, flags=re.M)
    namespace: dict = {}
    exec(compile(block, f"<{runtime} snippet>", "exec"), namespace)  # noqa: S102
    return namespace


def test_card_states_the_model_and_its_snippets_run(image_export, product_export, tmp_path):
    card = (image_export["out"] / "README.md").read_text()
    assert "decision threshold: similar when d <=" in card and "preprocessing.json" in card
    assert "resize to 32 x 32 ignoring the aspect ratio" in card and "sentence-transformers layout: not written" in card
    assert "| test |" in card and train_config_digest(TRAIN_CONFIG) in card
    paths = []
    for i, array in enumerate(_images()[:4]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(array).save(paths[-1])
    encoder = image_export["encoder"]
    reference = encoder.encode(paths)
    np.testing.assert_array_equal(_run_card_snippet(image_export["out"], "metric-sim", paths)["embeddings"], reference)
    assert np.max(np.abs(_run_card_snippet(image_export["out"], "onnxruntime", paths)["emb"] - reference)) <= 0.05
    records = [{"title": "how do i learn python", "image": paths[0]}, {"title": "why is the sky blue"}, {"image": paths[1]}]
    product = product_export["encoder"]
    got = _run_card_snippet(product_export["out"], "onnxruntime", records)["emb"]
    assert np.max(np.abs(got - product.encode(records))) <= 0.05
    assert "text_present" in (product_export["out"] / "README.md").read_text()


# ---------------------------------------------------------------------------- CLI, errors, atomicity
def test_cli_exports_an_image_run(image_export, tmp_path, capsys):
    out = tmp_path / "cli_bundle"
    assert main(["export", str(image_export["run"]), "--out", str(out), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "encoder: image; preprocessing: preprocessing.json" in printed
    assert f"threshold: {CALIBRATOR.threshold:.6g}" in printed and "onnx fp32: onnx/model.onnx" in printed
    assert (out / "onnx" / "model.onnx").is_file() and (out / "preprocessing.json").is_file()
    np.testing.assert_array_equal(SimilarityModel.from_pretrained(out).embed(_images()), image_export["encoder"].encode(_images()))
    assert main(["export", str(image_export["run"]), "--out", str(tmp_path / "q"), "--quantize", "int8"]) == 2
    assert "applies to text encoders only" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_refuses_existing_folder_and_overwrites_when_asked(image_export, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match=r"--out .*bundle' already exists and is not empty"):
        export_model(image_export["run"], out)
    assert (out / "keep.txt").is_file()
    export_model(image_export["run"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "preprocessing.json").is_file() and not (out / "onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    with pytest.raises(ExportError, match="must not be inside"):
        export_model(image_export["run"], image_export["run"] / "model" / "x")


def test_failure_and_onnx_mismatch_leave_nothing_behind(image_export, tmp_path, monkeypatch):
    import metric_sim.export.image_onnx as image_onnx

    real = image_onnx.export_image_onnx

    def export_other_weights(encoder, path, **kwargs):
        changed = copy.deepcopy(encoder)
        with torch.no_grad():
            next(changed.parameters()).add_(0.5)  # a shift (a scale would vanish in the normalisation)
        return real(changed, path, **kwargs)

    monkeypatch.setattr(image_onnx, "export_image_onnx", export_other_weights)
    with pytest.raises(ExportError, match="the ONNX graph differs from PyTorch"):
        export_model(image_export["run"], tmp_path / "bundle", onnx=True)
    assert list(tmp_path.iterdir()) == []

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(image_onnx, "export_image_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_model(image_export["run"], tmp_path / "bundle", onnx=True)
    assert list(tmp_path.iterdir()) == []


def test_quantize_is_refused_for_image_kinds(product_export, tmp_path):
    with pytest.raises(ExportError, match="quantize='int8' applies to text encoders only, not to an encoder of kind 'multimodal'"):
        export_model(product_export["model"], tmp_path / "bundle", quantize="int8")
    assert list(tmp_path.iterdir()) == []
