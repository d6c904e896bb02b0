"""The whole pipeline for an image model and a title+image product model, on tiny generated data:
train a few steps -> calibrate -> evaluate (report with the neighbour grid) -> index build ->
query -> dedupe -> export -> reload, through the same commands and APIs as text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metric_sim.cli import main
from metric_sim.data.image_presets import image_corpus, record_corpus
from metric_sim.encoders.starting import encoder_from_start, starting_kind
from metric_sim.errors import ConfigError, DataError, MissingFileError
from metric_sim.images import describe_record
from metric_sim.model import SimilarityModel
from metric_sim.training import TrainConfig, train
from tests.conftest import DEMO_FILE, pair_dataset

PEOPLE = ("ann", "bob", "cy", "dee", "eve", "fay")
TINY_CNN = {"widths": [4, 8], "in_channels": 1,
            "preprocess": {"size": 16, "resize": "squash", "interpolation": "bilinear", "mean": 0.5, "std": 0.5,
                           "mode": "L"}}


def _face(person: int, shot: int) -> np.ndarray:
    """A 20x20 grey 'face': a per-person pattern plus per-shot noise, so identities are learnable."""
    pattern = np.random.default_rng(person).integers(0, 256, (5, 5))
    image = np.kron(pattern, np.ones((4, 4)))
    noise = np.random.default_rng(1000 * person + shot).normal(0, 12, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    for p, name in enumerate(PEOPLE):
        for shot in range(5):
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(_face(p, shot)).save(root / name / f"{shot}.png")
    Image.fromarray(_face(0, 0)).save(root / "ann" / "copy_of_0.png")  # a duplicate photo for dedupe
    return root


def _pairs(root: Path):
    from metric_sim.data.collections import read_image_folder

    collection = read_image_folder(root)
    parts = collection.split_by_identity({"train": 4 / 6, "dev": 2 / 6}, seed=0)
    return parts["train"].to_pairs(seed=0), parts["dev"].to_pairs(seed=0)


def _config(**changes) -> TrainConfig:
    base = dict(train_file=str(DEMO_FILE), model="small-cnn", encoder_options=dict(TINY_CNN), metric="euclidean",
                normalize=True, loss="contrastive", loss_params={"pos_margin": 0.0, "neg_margin": 1.0},
                batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, max_steps=6, eval_steps=3, logging_steps=3,
                seed=0, save_total_limit=1)
    return TrainConfig(**{**base, **changes})


def test_image_model_end_to_end(faces, tmp_path):
    train_pairs, dev_pairs = _pairs(faces)
    result = train(_config(), tmp_path / "run", train_data=train_pairs, dev_data=dev_pairs, show_progress=False)
    model = result.model
    assert model.encoder.kind == "image" and model.calibrator is not None
    reloaded = SimilarityModel.from_pretrained(tmp_path / "run")
    a, b = train_pairs.texts_a[:5], train_pairs.texts_b[:5]
    np.testing.assert_array_equal(reloaded.predict_proba(a, b), reloaded.predict_proba(b, a))  # symmetric, exactly
    np.testing.assert_array_equal(reloaded.distance(a, b), model.distance(a, b))

    pair_file = _write_pair_file(dev_pairs, tmp_path)
    assert main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(pair_file), "--items", "image",
                 "--text-a", "image_a", "--text-b", "image_b", "--report", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "neighbours.png").is_file()
    index = tmp_path / "index"
    assert main(["index", "build", "--model", str(tmp_path / "run"), "--images", str(faces), "--out", str(index)]) == 0
    query = faces / "bob" / "1.png"
    assert main(["query", str(index), "--image", str(query), "-k", "3", "--json"]) == 0
    assert main(["dedupe", "--model", str(tmp_path / "run"), "--images", str(faces), "--max-distance", "1e-4",
                 "--out", str(tmp_path / "dupes.tsv")]) == 0
    rows = (tmp_path / "dupes.tsv").read_text().splitlines()
    members = {line.split("\t")[1] for line in rows[1:]}
    assert members == {"ann/0.png", "ann/copy_of_0.png"}  # the identical photo, and nothing else

    pytest.importorskip("onnxruntime")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export"), "--onnx"]) == 0
    exported = SimilarityModel.from_pretrained(tmp_path / "export")
    np.testing.assert_array_equal(exported.distance(a, b), model.distance(a, b))
    assert exported.threshold == model.threshold
    assert (tmp_path / "export" / "preprocessing.json").is_file() and (tmp_path / "export" / "onnx").is_dir()


def _write_pair_file(pairs, folder: Path) -> Path:
    path = folder / "dev_pairs.tsv"
    lines = ["image_a\timage_b\tlabel"] + [f"{a}\t{b}\t{y}" for a, b, y in
                                          zip(pairs.texts_a, pairs.texts_b, pairs.labels.tolist(), strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_has_a_neighbour_grid_for_images(faces, tmp_path):
    from metric_sim.evaluation.report import evaluate_and_report

    train_pairs, dev_pairs = _pairs(faces)
    model = SimilarityModel(encoder_from_start("small-cnn", dict(TINY_CNN), seed=0), "euclidean")
    payload = evaluate_and_report(model, dev_pairs, tmp_path / "report", calibration_pairs=train_pairs,
                                  calibration_split="train")
    assert payload["figures"]["neighbours"] == "neighbours.png"
    grid = Image.open(tmp_path / "report" / "neighbours.png")
    assert grid.size[0] > 5 * 96 and "neighbours.png" in (tmp_path / "report" / "report.md").read_text()
    assert payload["models"]["model"]["symmetry"]["max_abs_difference"] == 0.0


def test_product_model_end_to_end(faces, tmp_path):
    """Records with a title and a photo; photos alone and titles alone still get vectors."""
    from metric_sim.encoders.image import image_encoder_from_name
    from metric_sim.encoders.multimodal import ProductEncoder, identity_fusion
    from tests.conftest import build_tiny_encoder

    text = build_tiny_encoder()
    image = image_encoder_from_name("small-cnn", seed=0, **TINY_CNN)
    encoder = ProductEncoder(text, image, projection=identity_fusion(text.embedding_dim + image.embedding_dim, None))
    catalogue = tmp_path / "catalogue.jsonl"
    lines = [json.dumps({"id": name, "title": f"photo of {name}", "image": str(faces / name / "0.png")})
             for name in PEOPLE]
    catalogue.write_text("\n".join(lines) + "\n")
    ids, records, _ = record_corpus(catalogue)
    assert ids == list(PEOPLE) and json.loads(records[0])["title"] == "photo of ann"
    photos = [describe_record({"image": str(faces / name / "3.png")}) for name in PEOPLE]
    a, b, y = [], [], []
    for i, photo in enumerate(photos):
        for j, record in enumerate(records):
            a.append(photo)
            b.append(record)
            y.append(int(i == j))
    pairs = _pair_dataset(a, b, y)
    result = train(_config(model="multimodal", encoder_options={}, freeze_encoder=True, projection_dim=16),
                   tmp_path / "run", encoder=encoder, train_data=pairs, dev_data=pairs, show_progress=False)
    model = SimilarityModel.from_pretrained(tmp_path / "run")
    assert model.encoder.kind == "multimodal" and result.model.calibrator is not None
    title_only, image_only = describe_record({"title": "photo of ann"}), photos[0]
    p = model.predict_proba([title_only, image_only], [image_only, title_only])
    assert p[0] == p[1]
    index = tmp_path / "index"
    assert main(["index", "build", "--model", str(tmp_path / "run"), "--records", str(catalogue),
                 "--out", str(index)]) == 0
    assert main(["query", str(index), "--image", str(faces / "cy" / "4.png"), "--text", "photo of cy", "--json"]) == 0
    assert main(["query", str(index), "--text", "photo of cy", "--json"]) == 0
    pytest.importorskip("onnxruntime")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export"), "--onnx"]) == 0
    exported = SimilarityModel.from_pretrained(tmp_path / "export")
    np.testing.assert_array_equal(exported.predict_proba([title_only], [image_only]),
                                  model.predict_proba([title_only], [image_only]))


def _pair_dataset(a, b, y):
    """Pairs of canonical item records, ids as an items file gives them."""
    from metric_sim.images import record_id

    return pair_dataset([(x, z, label, record_id(json.loads(x)), record_id(json.loads(z)))
                         for x, z, label in zip(a, b, y, strict=True)])


def test_starting_points_and_their_errors(tmp_path):
    assert starting_kind("efficientnet-lite0") == "image" and starting_kind("timm:resnet10t") == "image"
    assert starting_kind("multimodal") == "multimodal" and starting_kind("x", {"kind": "image"}) == "image"
    with pytest.raises(ConfigError, match="encoder_options.kind"):
        starting_kind("small-cnn", {"kind": "audio"})
    with pytest.raises(ConfigError, match="do not apply to a text encoder"):
        encoder_from_start("default", {"augment": {"hflip": True}})
    with pytest.raises(ConfigError, match="encoder_options for 'small-cnn'"):
        encoder_from_start("small-cnn", {"no_such_option": 1})
    encoder = encoder_from_start("small-cnn", dict(TINY_CNN), seed=0)
    assert encoder.kind == "image" and encoder.preprocess["size"] == [16, 16]


def test_corpus_readers_name_what_is_wrong(faces, tmp_path):
    ids, locations, _ = image_corpus(faces)
    assert "bob/1.png" in ids and all(Path(p).is_absolute() for p in locations)
    with pytest.raises(MissingFileError, match="--images"):
        image_corpus(tmp_path / "missing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not a JSON object"):
        record_corpus(bad)
    bad.write_text('{"colour": "red"}\n')
    with pytest.raises(DataError, match="needs a 'title' or an 'image'"):
        record_corpus(bad)
    bad.write_text('{"title": "x", "image": "nowhere.png"}\n')
    with pytest.raises(MissingFileError, match=r"line 1, field image"):
        record_corpus(bad)


def test_data_check_on_an_image_collection(faces, tmp_path, capsys):
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(faces, root)
    (root / "bob" / "broken.png").write_bytes(b"not a png")
    assert main(["data", "check", "--images", str(root), "--on-bad-row", "skip", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 31 and summary["identities"] == 6 and summary["report"]["skipped"]["bad_image"] == 1
    assert main(["data", "check", "--images", str(root)]) == 2  # strict by default: the broken file is named
    assert "broken.png" in capsys.readouterr().err
