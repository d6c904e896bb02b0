"""Encoder's optional linear projection (the frozen-mode head): applied, saved, loaded, validated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from metric_sim.encoder import CONFIG_FILE, PROJECTION_FILE, Encoder, EncoderLoadError

TEXTS = ["How do I learn Python?", "Why is the sky blue?", "cook rice", "a"]


def _projection(seed: int = 0, out_features: int = 8) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(32, out_features)


def test_projection_is_applied_before_normalisation(tiny_encoder):
    base = tiny_encoder.encode(TEXTS)
    head = _projection()
    tiny_encoder.projection = head
    tiny_encoder.normalize = True
    with torch.no_grad():
        expected = nn.functional.normalize(head(torch.from_numpy(base)), dim=-1).numpy()
    np.testing.assert_allclose(tiny_encoder.encode(TEXTS), expected, atol=1e-5)
    assert tiny_encoder.embedding_dim == 8


def test_projection_round_trips_through_save(tiny_encoder, tmp_path):
    tiny_encoder.projection = _projection()
    before = tiny_encoder.encode(TEXTS)
    folder = tiny_encoder.save(tmp_path / "m")
    assert (folder / PROJECTION_FILE).is_file()
    spec = json.loads((folder / CONFIG_FILE).read_text())["encoder"]["projection"]
    assert spec == {"in_features": 32, "out_features": 8, "bias": True}
    loaded = Encoder.from_pretrained(folder)
    np.testing.assert_array_equal(loaded.encode(TEXTS), before)
    assert loaded.fingerprint() == tiny_encoder.fingerprint()


def test_folders_without_projection_are_unchanged(tiny_encoder, tmp_path):
    fingerprint = tiny_encoder.fingerprint()
    folder = tiny_encoder.save(tmp_path / "m")
    assert not (folder / PROJECTION_FILE).exists()
    assert "projection" not in json.loads((folder / CONFIG_FILE).read_text())["encoder"]
    loaded = Encoder.from_pretrained(folder)
    assert loaded.projection is None and loaded.fingerprint() == fingerprint


def test_fingerprint_sees_the_projection_weights(tiny_encoder):
    tiny_encoder.projection = _projection(seed=0)
    first = tiny_encoder.fingerprint()
    tiny_encoder.projection = _projection(seed=1)
    assert tiny_encoder.fingerprint() != first


def test_bad_projection_is_refused(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="projection.in_features=16 must equal the model's hidden_size=32"):
        Encoder(tiny_encoder.model, tiny_encoder.tokenizer, projection=nn.Linear(16, 8))
    with pytest.raises(TypeError, match="projection must be a torch.nn.Linear or None, got Sequential"):
        Encoder(tiny_encoder.model, tiny_encoder.tokenizer, projection=nn.Sequential())
    tiny_encoder.projection = _projection()
    folder = tiny_encoder.save(tmp_path / "m")
    (folder / PROJECTION_FILE).unlink()
    with pytest.raises(EncoderLoadError, match="declares a projection head, but .*projection.safetensors is missing"):
        Encoder.from_pretrained(folder)
    folder = tiny_encoder.save(tmp_path / "m2")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["encoder"]["projection"]["out_features"] = 9
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(EncoderLoadError, match="does not match the declared projection"):
        Encoder.from_pretrained(folder)
