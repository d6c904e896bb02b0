"""encode in bfloat16 autocast: close to float32, never used in training, validated, and on the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metric_sim.encoders.precision import autocast, parse_precision
from metric_sim.errors import InvalidArgumentError
from tests.conftest import BASE_WORDS, build_tiny_encoder

TEXTS = [" ".join(BASE_WORDS[i % len(BASE_WORDS)] for i in range(start, start + 3 + start % 5)) for start in range(40)]


@pytest.fixture()
def encoder():
    return build_tiny_encoder()


def test_bfloat16_vectors_are_close_to_float32_but_not_equal(encoder):
    exact = encoder.encode(TEXTS, batch_size=8)
    encoder.set_inference_precision("bf16")
    assert encoder.inference_precision == "bfloat16"
    approx = encoder.encode(TEXTS, batch_size=8)
    assert approx.dtype == np.float32 and approx.shape == exact.shape
    cosine = np.sum(approx * exact, 1) / np.linalg.norm(approx, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.999
    assert not np.array_equal(approx, exact)  # the products did run in bfloat16
    encoder.set_inference_precision("float32")
    np.testing.assert_array_equal(encoder.encode(TEXTS, batch_size=8), exact)


def test_training_forward_stays_float32_whatever_the_inference_precision(encoder):
    encoder.set_inference_precision("bfloat16")
    encoder.train()
    batch = encoder.collate(TEXTS[:6])
    out = encoder(**batch)
    assert out.dtype == torch.float32 and out.requires_grad
    assert encoder.training  # encode() restores the mode it found
    encoder.encode(TEXTS[:4])
    assert encoder.training


def test_precision_is_not_part_of_the_fingerprint(encoder):
    before = encoder.fingerprint()
    encoder.set_inference_precision("bfloat16")
    assert encoder.fingerprint() == before


@pytest.mark.parametrize("value", ["float16", "", None, 16, "bf 16"])
def test_unknown_precisions_are_refused_by_name(encoder, value):
    with pytest.raises(InvalidArgumentError, match=r"precision must be one of \['float32', 'bfloat16'\].*got"):
        encoder.set_inference_precision(value)
    assert encoder.inference_precision == "float32"


def test_aliases_and_the_autocast_context():
    assert [parse_precision(v) for v in ("fp32", "FLOAT32", " bf16 ", "bfloat16")] == [
        "float32", "float32", "bfloat16", "bfloat16"]
    with autocast("float32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bfloat16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _corpus(tmp_path):
    from metric_sim import SimilarityModel

    model_dir = tmp_path / "model"
    SimilarityModel(build_tiny_encoder(), "euclidean").save(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return model_dir, corpus


def test_cli_index_build_encodes_in_the_precision_asked(tmp_path, capsys):
    from metric_sim import NeighborIndex, SimilarityModel
    from metric_sim.cli import main

    model_dir, corpus = _corpus(tmp_path)
    for precision in ("float32", "bf16"):
        out = tmp_path / precision
        assert main(["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(out),
                     "--precision", precision]) == 0
    capsys.readouterr()
    model = SimilarityModel.from_pretrained(model_dir)
    exact = model.encoder.encode(TEXTS)
    model.encoder.set_inference_precision("bfloat16")
    approx = model.encoder.encode(TEXTS)
    np.testing.assert_array_equal(NeighborIndex.load(tmp_path / "float32").embeddings(), exact)
    np.testing.assert_array_equal(NeighborIndex.load(tmp_path / "bf16").embeddings(), approx)


def test_cli_refuses_an_unknown_precision_before_any_work(tmp_path, capsys):
    from metric_sim.cli import main

    model_dir, corpus = _corpus(tmp_path)
    assert main(["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "x"),
                 "--precision", "float16"]) == 2
    assert "--precision: invalid choice: 'float16'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
